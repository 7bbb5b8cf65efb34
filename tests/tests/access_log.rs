//! The access log (`--access-log`): the proxy's line for every sticky outcome (member,
//! outcome, route changed, client after trusted hops, bytes), the combined format as
//! Apache tools parse it, the agent's cookie decision, and rotation by rename and by
//! SIGUSR1 on the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{call, get};
use stickyroute_tests::proxy::Proxy;
use stickyroute_tests::{PATIENCE, eventually};

/// The log's lines once at least `count` are there.
async fn lines(path: &Path, count: usize) -> Vec<String> {
    eventually("the access log lines", PATIENCE, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= count).then_some(lines)
    })
    .await
}

/// The JSON line of the request for `target`.
async fn json_line(path: &Path, target: &str) -> serde_json::Value {
    eventually(&format!("the line for {target}"), PATIENCE, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|line| line["target"] == target)
    })
    .await
}

/// A port on `ip` where nothing listens.
fn dead_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sticky_outcome_is_in_the_proxys_line() {
    let dir = tempfile::tempdir().unwrap();
    let (www1, www2, www3) = (
        TestApp::start("www1", "127.0.0.2").await,
        TestApp::start("www2", "127.0.0.3").await,
        TestApp::start("www3", "127.0.0.4").await,
    );
    let dead = dead_port("127.0.0.5");
    let map = dir.path().join("routemap");
    std::fs::write(
        &map,
        format!(
            "127.0.0.2 www1 port={}\n127.0.0.3 www2 port={}\n127.0.0.4 www3 port={} status=drain\n127.0.0.5 www4 port={dead}\n",
            www1.addr().port(),
            www2.addr().port(),
            www3.addr().port()
        ),
    )
    .unwrap();
    let log = dir.path().join("access.log");
    let common = [
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        "json",
        "--trusted-proxy",
        "127.0.0.9/32",
    ];
    let proxy = Proxy::builder(&map).args(&common).start();
    proxy.wait_members(4).await;

    let send = |path: &'static str, cookie: Option<&'static str>| {
        let mut c = get(proxy.addr, path).header("user-agent", "test-agent/1.0");
        if let Some(cookie) = cookie {
            c = c.header("cookie", cookie);
        }
        c.send()
    };
    send("/new", None).await;
    send("/hit", Some("balanceid=route.www1")).await;
    send("/unknown", Some("balanceid=route.nosuch")).await;
    send("/drained", Some("balanceid=route.www3")).await;
    send("/malformed", Some("balanceid=noroute")).await;
    // www4 refuses the connection: the session fails over to a member that answers.
    let failover = send("/failover", Some("balanceid=route.www4")).await;
    assert_eq!(failover.status, 200);
    let upload = call(proxy.addr, http::Method::POST, "/upload")
        .header("cookie", "balanceid=route.www2")
        .body(vec![b'x'; 1000])
        .send()
        .await;
    assert_eq!(upload.text(), "1000");
    get(proxy.addr, "/behind")
        .from("127.0.0.9")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await;

    let new = json_line(&log, "/new").await;
    assert_eq!(new["sticky"], "new");
    assert_eq!(new["status"], 200);
    assert_eq!(new["client"], "127.0.0.1");
    assert_eq!(new["method"], "GET");
    assert_eq!(new["protocol"], "HTTP/1.1");
    assert_eq!(new["user_agent"], "test-agent/1.0");
    assert!(new["route_changed"].is_null(), "no session route: {new}");
    assert!(new["route"].as_str().is_some_and(|r| r.starts_with("www")));
    assert!(new["response_bytes"].as_u64().unwrap() > 0);
    assert!(
        new["duration_seconds"].as_f64().unwrap() >= new["member_head_seconds"].as_f64().unwrap()
    );
    assert!(new["tls_version"].is_null());

    let hit = json_line(&log, "/hit").await;
    assert_eq!(
        (&hit["sticky"], &hit["route"]),
        (&"hit".into(), &"www1".into())
    );
    assert_eq!(hit["member"], www1.addr().to_string());
    assert_eq!(hit["route_changed"], false);

    let unknown = json_line(&log, "/unknown").await;
    assert_eq!(unknown["sticky"], "unknown_route");
    assert_eq!(unknown["route_changed"], true);

    let drained = json_line(&log, "/drained").await;
    assert_eq!(
        (&drained["sticky"], &drained["route"]),
        (&"drained_hit".into(), &"www3".into())
    );
    assert_eq!(drained["route_changed"], false);

    let malformed = json_line(&log, "/malformed").await;
    assert_eq!(malformed["sticky"], "malformed");
    assert!(
        malformed["route_changed"].is_null(),
        "no route in the value: {malformed}"
    );

    let failover = json_line(&log, "/failover").await;
    assert_eq!(failover["sticky"], "failover");
    assert_eq!(failover["route_changed"], true);
    assert_ne!(
        failover["route"], "www4",
        "the member that answered: {failover}"
    );
    assert_eq!(failover["status"], 200);

    let upload = json_line(&log, "/upload").await;
    assert_eq!(upload["method"], "POST");
    assert_eq!(upload["request_bytes"], 1000);
    assert_eq!(upload["route"], "www2");

    let behind = json_line(&log, "/behind").await;
    assert_eq!(behind["client"], "203.0.113.7", "the first untrusted hop");

    // Under --nofailover, the session of a member that is down gets 503, logged so.
    let log2 = dir.path().join("nofailover.log");
    let pinned = Proxy::builder(&map)
        .args(&[
            "--nofailover",
            "--access-log",
            log2.to_str().unwrap(),
            "--access-log-format",
            "json",
        ])
        .start();
    pinned.wait_members(4).await;
    let refused = get(pinned.addr, "/pinned")
        .header("cookie", "balanceid=route.www4")
        .send()
        .await;
    assert_eq!(refused.status, 503);
    let line = json_line(&log2, "/pinned").await;
    assert_eq!(line["sticky"], "nofailover_503");
    assert_eq!(line["status"], 503);
    assert_eq!(line["route"], "www4");

    // A map whose only member is down: a new session has nowhere to go.
    let dead_map = dir.path().join("dead-routemap");
    std::fs::write(&dead_map, format!("127.0.0.5 www4 port={dead}\n")).unwrap();
    let log3 = dir.path().join("no-member.log");
    let stranded = Proxy::builder(&dead_map)
        .args(&[
            "--access-log",
            log3.to_str().unwrap(),
            "--access-log-format",
            "json",
        ])
        .start();
    stranded.wait_members(1).await;
    let refused = get(stranded.addr, "/nowhere").send().await;
    assert_eq!(refused.status, 503);
    let line = json_line(&log3, "/nowhere").await;
    assert_eq!(line["sticky"], "no_member_503");
    assert_eq!(line["status"], 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_parse_as_apaches_and_the_agent_logs_its_cookie_decision() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = dir.path().join("routemap");
    std::fs::write(&map, "127.0.0.3 www1\n").unwrap();
    let log = dir.path().join("agent.log");
    let agent = Agent::builder("127.0.0.3", app.addr(), &map)
        .args(&[
            "--session-cookie",
            "SESSION",
            "--access-log",
            log.to_str().unwrap(),
        ])
        .start();
    agent.process.wait_ready(agent.admin).await;
    // Logging in creates a session: the cookie is issued, because of the response.
    let login = get(agent.addr, "/login")
        .header("referer", "https://shop.example/")
        .header("x-forwarded-for", "198.51.100.4")
        .send()
        .await;
    assert_eq!(login.status, 200);
    // A client that carries the route already gets none.
    get(agent.addr, "/page")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    get(agent.addr, "/anonymous").send().await;

    let lines = lines(&log, 3).await;
    // The combined part, as Apache's own regular expression for it reads it.
    let combined = regex::Regex::new(
        r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"(.*)$"#,
    )
    .unwrap();
    // Each request went on its own connection, maybe to another worker: lines come in any order.
    let line_for = |path: &str| {
        lines
            .iter()
            .filter_map(|line| combined.captures(line))
            .find(|c| c[5].starts_with(&format!("GET {path} ")))
            .unwrap_or_else(|| panic!("no combined line for {path} in {lines:?}"))
    };
    let login = line_for("/login");
    assert_eq!(
        &login[1], "198.51.100.4",
        "the client the proxy in front names"
    );
    assert_eq!(&login[5], "GET /login HTTP/1.1");
    assert_eq!(&login[6], "200");
    assert_eq!(&login[8], "https://shop.example/");
    assert!(
        login[10].contains(" route=www1 ")
            && login[10].contains(" cookie=issued cookie_reason=response_session"),
        "{}",
        &login[10]
    );
    let page = line_for("/page");
    assert!(
        page[10].ends_with(" cookie=none cookie_reason=has_route"),
        "{}",
        &page[10]
    );
    let anonymous = line_for("/anonymous");
    assert!(
        anonymous[10].ends_with(" cookie=none cookie_reason=no_session"),
        "{}",
        &anonymous[10]
    );
    assert_eq!(&anonymous[1], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_reopens_its_log_after_a_rename_and_on_sigusr1() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = stickyroute_tests::proxy::write_map(dir.path(), &[("www1", app.addr())]);
    let log = dir.path().join("access.log");
    let proxy = Proxy::builder(&map)
        .args(&["--access-log", log.to_str().unwrap()])
        .start_process();
    proxy.wait_members(1).await;
    get(proxy.addr, "/before").send().await;
    assert!(lines(&log, 1).await[0].contains("GET /before "));

    // logrotate's `create` mode: rename, and the program writes to a new file by itself.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(proxy.addr, "/after-rename").send().await;
    assert!(lines(&log, 1).await[0].contains("GET /after-rename "));
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        1
    );

    // Renamed and recreated by logrotate itself, then SIGUSR1 (its `postrotate`).
    let second = dir.path().join("access.log.2");
    std::fs::rename(&log, &second).unwrap();
    std::fs::write(&log, b"").unwrap();
    proxy.process.as_process().signal("USR1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    get(proxy.addr, "/after-signal").send().await;
    assert!(lines(&log, 1).await[0].contains("GET /after-signal "));
    assert!(
        !std::fs::read_to_string(&second)
            .unwrap()
            .contains("after-signal")
    );
    let metrics = get(proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains("stickyroute_access_log_lines_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stickyroute_access_log_dropped_total 0"),
        "{metrics}"
    );
}
