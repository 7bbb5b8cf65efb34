//! `stickyroute-agent`, the real binary, in front of a real stateful app, each on its own
//! loopback address, with a real route map file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stickyroute_tests::PATIENCE;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{Protocol, Reply, call, connect, get};
use stickyroute_tests::process::Process;
use tempfile::TempDir;

const COOKIE_WWW1: &str = "balanceid=route.www1; Path=/; Domain=shop.example";

fn write_map(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("routemap");
    std::fs::write(&path, text).unwrap();
    path
}

/// The app on 127.0.0.12 behind an agent on 127.0.0.2, which the map calls www1.
async fn setup(args: &[&str]) -> (TempDir, TestApp, Agent) {
    setup_with_map("127.0.0.2 www1\n127.0.0.3 www2\n", args).await
}

async fn setup_with_map(map: &str, args: &[&str]) -> (TempDir, TestApp, Agent) {
    launch(map, args, false).await
}

/// Like [`setup`], with the agent as a child process (for its log and its memory).
async fn setup_process(args: &[&str]) -> (TempDir, TestApp, Agent) {
    launch("127.0.0.2 www1\n127.0.0.3 www2\n", args, true).await
}

async fn launch(map: &str, args: &[&str], process: bool) -> (TempDir, TestApp, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_map(&dir, map);
    let app = TestApp::start("app1", "127.0.0.12").await;
    let builder = Agent::builder("127.0.0.2", app.addr(), &path).args(args);
    let agent = if process {
        builder.start_process()
    } else {
        builder.start()
    };
    wait_ready(&agent).await;
    (dir, app, agent)
}

async fn wait_ready(agent: &Agent) {
    agent.process.wait_ready(agent.admin).await;
}

/// `GET /` for host shop.example with this Cookie header, straight to the agent.
async fn with_cookie(agent: &Agent, cookie: &str) -> Reply {
    get(agent.addr, "/")
        .host("shop.example")
        .header("cookie", cookie)
        .send()
        .await
}

async fn metric(agent: &Agent, line_prefix: &str) -> String {
    let text = get(agent.admin, "/metrics").send().await.text();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_request_gets_exactly_one_cookie_for_the_host_without_its_port() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let reply = get(agent.addr, "/")
        .host("shop.example:8080")
        .header("cookie", "SESSION=abc")
        .send()
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.set_cookies_named("balanceid"), [COOKIE_WWW1]);
    assert_eq!(
        reply.header("cache-control").as_deref(),
        Some("private=\"Set-Cookie\"")
    );
    assert_eq!(reply.json()["app"], "app1");
    assert_eq!(
        metric(
            &agent,
            "stickyroute_agent_cookies_injected_total{reason=\"request_session\"}"
        )
        .await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_no_cookie_and_the_response_is_untouched() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let reply = with_cookie(&agent, "theme=dark").await;
    assert!(reply.set_cookies().is_empty());
    assert_eq!(reply.header("cache-control"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_cookie_already_present_is_not_set_again_but_a_stale_one_is_replaced() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let right = with_cookie(&agent, "SESSION=abc; balanceid=route.www1").await;
    assert!(right.set_cookies().is_empty());
    let stale = with_cookie(&agent, "SESSION=abc; balanceid=route.www7").await;
    assert_eq!(stale.set_cookies_named("balanceid"), [COOKIE_WWW1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_that_creates_the_session_carries_the_cookie_and_the_apps_own() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let reply = get(agent.addr, "/login").host("shop.example").send().await;
    let cookies = reply.set_cookies();
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    assert!(cookies[0].starts_with("SESSION=app1-0; Path=/; HttpOnly"));
    assert_eq!(cookies[1], "theme=dark; Path=/");
    assert_eq!(cookies[2], COOKIE_WWW1);
    assert_eq!(
        metric(
            &agent,
            "stickyroute_agent_cookies_injected_total{reason=\"response_session\"}"
        )
        .await,
        "1"
    );
    // A logout that deletes the session cookie does not start stickiness.
    let logout = get(agent.addr, "/logout").host("shop.example").send().await;
    assert!(logout.set_cookies_named("balanceid").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_all_sets_the_cookie_without_a_session() {
    let (_dir, _app, agent) = setup(&["--track-all"]).await;
    let reply = get(agent.addr, "/").host("shop.example").send().await;
    assert_eq!(reply.set_cookies_named("balanceid"), [COOKIE_WWW1]);
    assert_eq!(
        metric(
            &agent,
            "stickyroute_agent_cookies_injected_total{reason=\"track_all\"}"
        )
        .await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_paths_never_get_the_cookie() {
    let (_dir, _app, agent) = setup(&[
        "--track-all",
        "--skip-path",
        "/static/",
        "--skip-path",
        "/healthz",
    ])
    .await;
    for path in ["/static/app.css", "/healthz"] {
        let reply = get(agent.addr, path)
            .host("shop.example")
            .header("cookie", "SESSION=x")
            .send()
            .await;
        assert!(reply.set_cookies().is_empty(), "{path}");
        assert_eq!(reply.header("cache-control"), None);
    }
    let page = get(agent.addr, "/cart").host("shop.example").send().await;
    assert_eq!(page.set_cookies_named("balanceid"), [COOKIE_WWW1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_regex_matches_over_the_whole_cookie_header_like_rewritecond() {
    let (_dir, _app, agent) =
        setup(&["--session-cookie-regex", "(?i)(existing_session_cookie)"]).await;
    let hit = with_cookie(&agent, "a=1; EXISTING_session_cookie=7").await;
    assert_eq!(hit.set_cookies_named("balanceid"), [COOKIE_WWW1]);
    let miss = with_cookie(&agent, "a=1").await;
    assert!(miss.set_cookies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_names_match_case_insensitively() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "jsessionid"]).await;
    let reply = with_cookie(&agent, "JSESSIONID=1").await;
    assert_eq!(reply.set_cookies_named("balanceid"), [COOKIE_WWW1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_key_missing_means_no_cookie_one_warning_and_a_counter() {
    let (_dir, _app, agent) =
        launch("127.0.0.3 www2\n", &["--session-cookie", "SESSION"], true).await;
    for _ in 0..3 {
        let reply = with_cookie(&agent, "SESSION=x").await;
        assert_eq!(reply.status, 200);
        assert!(reply.set_cookies().is_empty());
    }
    agent
        .process
        .eventually_logs("the missing-key warning", |l| {
            l.contains("not in the route map")
        })
        .await;
    assert_eq!(
        agent.process.log_lines_with("not in the route map").len(),
        1,
        "warned once, not per request"
    );
    assert_eq!(
        metric(&agent, "stickyroute_agent_route_lookup_misses_total").await,
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_route_is_used_when_the_key_is_missing() {
    let (_dir, _app, agent) = setup_with_map(
        "127.0.0.3 www2\n",
        &["--session-cookie", "SESSION", "--default-route", "spare"],
    )
    .await;
    let reply = with_cookie(&agent, "SESSION=x").await;
    assert_eq!(
        reply.set_cookies_named("balanceid"),
        ["balanceid=route.spare; Path=/; Domain=shop.example"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_domain_and_attributes_are_configurable() {
    let (_dir, _app, agent) = setup(&[
        "--track-all",
        "--cookie-domain",
        ".example.com",
        "--cookie-name",
        "ROUTEID",
        "--cookie-prefix",
        "node",
        "--cookie-secure",
        "--cookie-httponly",
        "--cookie-samesite",
        "lax",
        "--cookie-max-age",
        "600",
    ])
    .await;
    let reply = get(agent.addr, "/").host("shop.example.com").send().await;
    assert_eq!(
        reply.set_cookies(),
        [
            "ROUTEID=node.www1; Path=/; Domain=.example.com; Max-Age=600; Secure; HttpOnly; SameSite=Lax"
        ]
    );
    let host_only = {
        let (_d, _a, agent) = setup(&["--track-all", "--cookie-domain", "none"]).await;
        get(agent.addr, "/")
            .host("shop.example")
            .send()
            .await
            .set_cookies()
    };
    assert_eq!(host_only, ["balanceid=route.www1; Path=/"]);
}

/// The cookie the agent sets for `GET /` on host shop.example, with this
/// `X-Forwarded-Proto` (what the proxy writes: `https` for a request that came over TLS).
async fn cookie_over(agent: &Agent, proto: Option<&str>) -> Vec<String> {
    let mut request = get(agent.addr, "/").host("shop.example");
    if let Some(proto) = proto {
        request = request.header("x-forwarded-proto", proto);
    }
    request.send().await.set_cookies_named("balanceid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_is_added_when_the_proxy_says_the_request_came_over_https() {
    let (_dir, _app, agent) = setup(&["--track-all"]).await;
    assert_eq!(cookie_over(&agent, None).await, [COOKIE_WWW1]);
    assert_eq!(cookie_over(&agent, Some("http")).await, [COOKIE_WWW1]);
    assert_eq!(
        cookie_over(&agent, Some("https")).await,
        [format!("{COOKIE_WWW1}; Secure")]
    );
    assert_eq!(
        cookie_over(&agent, Some("https, http")).await,
        [format!("{COOKIE_WWW1}; Secure")],
        "the first hop's protocol is the client's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_always_and_never_ignore_the_protocol() {
    let (_d1, _a1, always) = setup(&["--track-all", "--cookie-secure", "always"]).await;
    let (_d2, _a2, never) = setup(&["--track-all", "--cookie-secure=never"]).await;
    let secure = format!("{COOKIE_WWW1}; Secure");
    assert_eq!(cookie_over(&always, None).await, [secure.as_str()]);
    assert_eq!(cookie_over(&always, Some("https")).await, [secure.as_str()]);
    assert_eq!(cookie_over(&never, None).await, [COOKIE_WWW1]);
    assert_eq!(cookie_over(&never, Some("https")).await, [COOKIE_WWW1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samesite_httponly_and_max_age_are_written_exactly() {
    let (_d1, _a1, strict) = setup(&[
        "--track-all",
        "--cookie-samesite",
        "strict",
        "--cookie-httponly",
        "--cookie-max-age",
        "86400",
    ])
    .await;
    assert_eq!(
        cookie_over(&strict, None).await,
        [format!(
            "{COOKIE_WWW1}; Max-Age=86400; HttpOnly; SameSite=Strict"
        )]
    );
    assert_eq!(
        cookie_over(&strict, Some("https")).await,
        [format!(
            "{COOKIE_WWW1}; Max-Age=86400; Secure; HttpOnly; SameSite=Strict"
        )]
    );
    // A browser drops a SameSite=None cookie that lacks Secure: over plain HTTP the
    // cookie goes out without SameSite (the browser's default) rather than not at all.
    let (_d2, _a2, none) = setup(&["--track-all", "--cookie-samesite", "none"]).await;
    assert_eq!(
        cookie_over(&none, Some("https")).await,
        [format!("{COOKIE_WWW1}; Secure; SameSite=None")]
    );
    assert_eq!(cookie_over(&none, None).await, [COOKIE_WWW1]);
}

#[test]
fn samesite_none_with_secure_never_is_refused_naming_both_settings() {
    let process = Process::start(
        "stickyroute-agent",
        &[
            "--upstream".into(),
            "127.0.0.1:9".into(),
            "--routemap".into(),
            "/nonexistent".into(),
            "--track-all".into(),
            "--cookie-samesite".into(),
            "none".into(),
        ],
        &[("STICKYROUTE_COOKIE_SECURE", "false")],
    );
    assert_eq!(process.wait_exit(PATIENCE), Some(64));
    let log = process.log().join("\n");
    assert!(
        log.contains(
            "--cookie-samesite: none needs Secure, which environment variable STICKYROUTE_COOKIE_SECURE never turns on"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_set_cookie_headers_pass_exactly() {
    let (_dir, app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let direct = get(app.addr(), "/cookies").send().await.set_cookies();
    let through = get(agent.addr, "/cookies")
        .host("shop.example")
        .header("cookie", "SESSION=1")
        .send()
        .await;
    let cookies = through.set_cookies();
    assert_eq!(cookies[..3], direct[..]);
    assert_eq!(cookies[3..], [COOKIE_WWW1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_is_merged_and_stronger_directives_are_respected() {
    let (_dir, _app, agent) = setup(&["--track-all"]).await;
    let merged = get(agent.addr, "/cache?cc=public,%20max-age=600")
        .host("shop.example")
        .send()
        .await;
    assert_eq!(
        merged.header("cache-control").as_deref(),
        Some("public, max-age=600, private=\"Set-Cookie\"")
    );
    let no_store = get(agent.addr, "/cache?cc=no-store")
        .host("shop.example")
        .send()
        .await;
    assert_eq!(
        no_store.header("cache-control").as_deref(),
        Some("no-store")
    );
    assert_eq!(no_store.set_cookies_named("balanceid").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_the_same_arguments_find_their_own_routes_and_follow_map_edits() {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(&dir, "127.0.0.2 www1\n127.0.0.3 www2\n");
    let app1 = TestApp::start("app1", "127.0.0.12").await;
    let app2 = TestApp::start("app2", "127.0.0.13").await;
    let same = ["--session-cookie", "SESSION", "--cookie-domain", "none"];
    let agent1 = Agent::builder("127.0.0.2", app1.addr(), &map)
        .args(&same)
        .start_process();
    let agent2 = Agent::builder("127.0.0.3", app2.addr(), &map)
        .args(&same)
        .start_process();
    wait_ready(&agent1).await;
    wait_ready(&agent2).await;
    let cookie = |agent: &Agent| {
        let addr = agent.addr;
        async move {
            get(addr, "/")
                .header("cookie", "SESSION=s")
                .send()
                .await
                .set_cookies_named("balanceid")
        }
    };
    assert_eq!(cookie(&agent1).await, ["balanceid=route.www1; Path=/"]);
    assert_eq!(cookie(&agent2).await, ["balanceid=route.www2; Path=/"]);

    let pid = agent1.process.pid();
    let tmp = dir.path().join("routemap.new");
    std::fs::write(&tmp, "127.0.0.2 shop-a\n127.0.0.3 www2\n").unwrap();
    std::fs::rename(&tmp, &map).unwrap();
    let edited = Instant::now();
    loop {
        if cookie(&agent1).await == ["balanceid=route.shop-a; Path=/"] {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(1),
            "the renamed route was not issued within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent1.process.pid(), pid, "no restart");
    assert_eq!(cookie(&agent2).await, ["balanceid=route.www2; Path=/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_added_and_hop_by_hop_headers_dropped() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let seen = get(agent.addr, "/")
        .host("shop.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "192.0.2.1")
        .header("x-forwarded-proto", "https")
        .from("127.0.0.21")
        .send()
        .await
        .json();
    assert_eq!(
        seen["x_hop"],
        serde_json::Value::Null,
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(seen["host"], "shop.example", "Host is preserved");
    assert_eq!(seen["x_forwarded_for"], "192.0.2.1, 127.0.0.21");
    assert_eq!(
        seen["x_forwarded_proto"], "https",
        "the proxy in front is trusted for the scheme"
    );
    assert_eq!(seen["x_forwarded_host"], "shop.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_and_the_app_gets_http1_with_the_host() {
    let (_dir, _app, agent) = setup(&["--session-cookie", "SESSION"]).await;
    let reply = get(agent.addr, "/")
        .header("cookie", "SESSION=1")
        .protocol(Protocol::Http2)
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], agent.addr.to_string());
    assert_eq!(
        reply.set_cookies_named("balanceid"),
        ["balanceid=route.www1; Path=/; Domain=127.0.0.2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_works_through_the_agent() {
    let (_dir, _app, agent) = setup(&["--track-all"]).await;
    let url = format!("ws://{}/ws", agent.addr);
    let (mut ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    stickyroute_tests::client::assert_echoes(&mut ws, &["hello", "sticky", "world"]).await;
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let (_dir, _app, agent) = setup_process(&["--session-cookie", "SESSION"]).await;
    let baseline = agent.process.rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let pid_watch = {
        let peak = peak.clone();
        let pid = agent.process.pid();
        tokio::spawn(async move {
            loop {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Download: stream the body and count it without keeping it.
    let stream = connect(agent.addr, None).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("/download?bytes={SIZE}"))
        .header("host", "shop.example")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    // Upload: a streamed request body the app counts.
    let chunk = bytes::Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let stream_body = http_body_util::StreamBody::new(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    ));
    let stream = connect(agent.addr, None).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/upload")
        .header("host", "shop.example")
        .header("content-length", SIZE.to_string())
        .body(stream_body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let counted = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&counted), SIZE.to_string());

    pid_watch.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak < baseline + 48 * 1024,
        "agent RSS grew from {baseline} KiB to {peak} KiB while streaming 2 x 200 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_slow_request_then_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(&dir, "127.0.0.2 www1\n");
    let app = TestApp::start("app1", "127.0.0.12").await;
    let agent = Agent::builder("127.0.0.2", app.addr(), &map)
        .args(&[
            "--track-all",
            "--drain-delay",
            "700ms",
            "--grace-period",
            "10s",
        ])
        .start_process();
    wait_ready(&agent).await;
    let addr = agent.addr;
    // The request is still in flight about 800 ms after the 700 ms drain delay has ended
    // and the listener has closed.
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=1500").send().await });
    stickyroute_tests::eventually("the slow request to reach the app", PATIENCE, || {
        (app.requests() == 1).then_some(())
    })
    .await;
    agent.process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: still ready (its sessions must still reach it), and saying so.
    let status = get(agent.admin, "/readyz").send().await;
    assert_eq!(
        status.status,
        200,
        "ready while draining: {}",
        status.text()
    );
    let status = get(agent.admin, "/status").send().await.json();
    assert_eq!(status["draining"], true, "{status}");
    assert_eq!(status["drain"]["reason"], "SIGTERM", "{status}");
    // During the drain delay new requests are still served, and say the agent drains.
    let during = get(addr, "/").send().await;
    assert_eq!(during.status, 200);
    assert_eq!(
        during.header("stickyroute-member").as_deref(),
        Some("draining")
    );
    // After it, the listener is closed.
    let refused_at = Instant::now();
    loop {
        if connect(addr, None).await.is_err() {
            break;
        }
        assert!(
            refused_at.elapsed() < PATIENCE,
            "new connections still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unready = get(agent.admin, "/readyz").send().await;
    assert_eq!(unready.status, 503, "unready once it stopped accepting");
    assert!(
        unready.text().contains("shutting down"),
        "{}",
        unready.text()
    );
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    assert_eq!(reply.text(), "slow done by app1\n");
    assert_eq!(agent.process.wait_exit(PATIENCE), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_readiness_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    let app = TestApp::start("app1", "127.0.0.12").await;
    let agent = Agent::builder("127.0.0.2", app.addr(), &map)
        .args(&["--session-cookie", "SESSION"])
        .env("POD_NAME", "web-0")
        .start();
    assert_eq!(get(agent.admin, "/healthz").send().await.status, 200);
    let unready = get(agent.admin, "/readyz").send().await;
    assert_eq!(unready.status, 503);
    assert!(unready.text().contains("no route map loaded yet"));
    // Requests still pass through while no map is loaded; they just get no cookie.
    let early = get(agent.addr, "/")
        .header("cookie", "SESSION=1")
        .send()
        .await;
    assert_eq!(early.status, 200);
    assert!(early.set_cookies().is_empty());

    std::fs::write(&map, "web-0 www0\n").unwrap();
    wait_ready(&agent).await;
    let status = get(agent.admin, "/status").send().await.json();
    assert_eq!(status["keys"]["name"], "web-0");
    assert_eq!(status["keys"]["addresses"][0], "127.0.0.2");
    assert_eq!(status["routes"][0]["route"], "www0");
    assert_eq!(status["routes"][0]["matched_by"], "name");
    assert_eq!(status["map"]["generation"], 1);
    assert_eq!(status["map"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(status["draining"], false);

    std::fs::write(&map, "web-0 www0 loadfactor=0\n").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let last_error = loop {
        let status = get(agent.admin, "/status").send().await.json();
        if !status["map"]["last_error"].is_null() {
            break status["map"]["last_error"].clone();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        last_error["details"][0]
            .as_str()
            .unwrap()
            .ends_with(":1: loadfactor=\"0\" is not valid: a whole number from 1 to 100")
    );
    let failed: u64 = metric(&agent, "stickyroute_map_reload_errors_total")
        .await
        .parse()
        .unwrap();
    assert!(failed >= 1, "the failed reload is counted");
    assert_eq!(metric(&agent, "stickyroute_map_generation").await, "1");
    let still = get(agent.addr, "/")
        .header("cookie", "SESSION=1")
        .send()
        .await;
    assert_eq!(
        still.set_cookies_named("balanceid").len(),
        1,
        "the last good map keeps serving"
    );
    assert_eq!(
        call(agent.admin, Method::POST, "/status")
            .send()
            .await
            .status,
        405
    );
}

#[test]
fn a_configuration_that_cannot_work_exits_64_with_the_reason() {
    let process = Process::start(
        "stickyroute-agent",
        &[
            "--upstream".into(),
            "127.0.0.1:9".into(),
            "--routemap".into(),
            "/nonexistent".into(),
        ],
        &[],
    );
    assert_eq!(process.wait_exit(PATIENCE), Some(64));
    assert!(
        process
            .log()
            .join("\n")
            .contains("nothing would ever set the cookie")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_cookie_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(&dir, "127.0.0.2 www1\n");
    let app = TestApp::start("app1", "127.0.0.12").await;
    let config = dir.path().join("agent.json");
    std::fs::write(&config, r#"{"session_cookie": ["SESSION"]}"#).unwrap();
    let agent = Agent::builder("127.0.0.2", app.addr(), &map)
        .args(&["--config", config.to_str().unwrap()])
        .start();
    wait_ready(&agent).await;
    let cookie = || async {
        get(agent.addr, "/")
            .host("shop.example")
            .header("cookie", "SESSION=abc")
            .send()
            .await
            .set_cookies_named("balanceid")
    };
    assert_eq!(cookie().await, [COOKIE_WWW1]);
    std::fs::write(
        &config,
        r#"{"session_cookie": ["SESSION"], "cookie_max_age": 600, "cookie_httponly": true,
            "cookie_samesite": "lax", "cookie_secure": "always"}"#,
    )
    .unwrap();
    agent.process.reload();
    let expected = format!("{COOKIE_WWW1}; Max-Age=600; Secure; HttpOnly; SameSite=Lax");
    stickyroute_tests::eventually_async("the new cookie attributes", PATIENCE, || async {
        (cookie().await == [expected.as_str()]).then_some(())
    })
    .await;
}
