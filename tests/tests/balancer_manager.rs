//! The balancer-manager of the real proxy: its JSON API, its access rules, what its changes
//! do to traffic, and its page in a real headless browser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use serde_json::{Value, json};
use std::time::Duration;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{call, get};
use stickyroute_tests::cluster::{Cluster, counts};
use stickyroute_tests::manager::{API, change, member, view};
use stickyroute_tests::proxy::Proxy;
use stickyroute_tests::webdriver::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_changes_resets_and_rejects_bad_input() {
    let c = Cluster::classic_process(&["--nofailover"]).await;
    let before = view(c.proxy.admin).await;
    assert_eq!(before["balancer"]["stickysession"], "balanceid");
    assert_eq!(before["balancer"]["nofailover"], true);
    assert_eq!(before["members"].as_array().unwrap().len(), 4);
    assert_eq!(before["map"]["generation"], 1);
    let nonce = before["nonce"].as_str().unwrap().to_owned();

    let changed = change(
        c.proxy.admin,
        "www1",
        json!({"nonce": nonce, "status": "drain", "loadfactor": 30}),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    let www1 = changed.json();
    assert_eq!(
        (www1["status"].clone(), www1["map_status"].clone()),
        (json!("drain"), json!("enabled"))
    );
    assert_eq!(
        (
            www1["status_override"].clone(),
            www1["loadfactor_override"].clone()
        ),
        (json!("drain"), json!(30))
    );
    assert_eq!(www1["loadfactor"], 30);
    c.proxy
        .process
        .eventually_logs("the audit line", |l| {
            l.contains("balancer-manager change")
                && l.contains("who=127.0.0.1")
                && l.contains("what=\"status\"")
                && l.contains("before=\"enabled\"")
                && l.contains("after=\"drain\"")
        })
        .await;

    for (route, body, expected) in [
        (
            "nosuch",
            json!({"nonce": nonce, "status": "drain"}),
            "no member has route",
        ),
        (
            "www2",
            json!({"nonce": nonce, "loadfactor": 0}),
            "loadfactor",
        ),
        (
            "www2",
            json!({"nonce": nonce, "loadfactor": 101}),
            "loadfactor",
        ),
        (
            "www2",
            json!({"nonce": nonce, "status": "sleeping"}),
            "status \"sleeping\"",
        ),
        (
            "www2",
            json!({"nonce": nonce, "weight": 5}),
            "unknown field",
        ),
        (
            "www2",
            json!({"nonce": nonce, "status": "drain", "loadfactor": "x"}),
            "loadfactor",
        ),
    ] {
        let reply = change(c.proxy.admin, route, body).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(
            reply.json()["error"].as_str().unwrap().contains(expected),
            "{}",
            reply.text()
        );
    }
    assert_eq!(
        member(&view(c.proxy.admin).await, "www2")["status"],
        "enabled",
        "bad input changed nothing"
    );

    let reset = change(
        c.proxy.admin,
        "www1",
        json!({"nonce": nonce, "reset": true}),
    )
    .await;
    assert_eq!(reset.status, 200);
    let www1 = reset.json();
    assert_eq!(
        (
            www1["status"].clone(),
            www1["status_override"].clone(),
            www1["loadfactor"].clone()
        ),
        (json!("enabled"), Value::Null, json!(60))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_nonce_and_a_token_when_tokens_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops:correct-horse-battery-staple\n").unwrap();
    let c = Cluster::classic_process(&["--admin-token-file", tokens.to_str().unwrap()]).await;
    let no_token = get(c.proxy.admin, API).send().await;
    assert_eq!(no_token.status, 401);
    assert!(
        no_token
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    let wrong = get(c.proxy.admin, API)
        .header("authorization", "Bearer nope")
        .send()
        .await;
    assert_eq!(wrong.status, 401);
    let view = get(c.proxy.admin, API)
        .header("authorization", "Bearer correct-horse-battery-staple")
        .send()
        .await
        .json();
    let nonce = view["nonce"].as_str().unwrap();

    let without_nonce = call(
        c.proxy.admin,
        Method::POST,
        "/balancer-manager/api/members/www1",
    )
    .header("authorization", "Bearer correct-horse-battery-staple")
    .header("content-type", "application/json")
    .body(json!({"status": "disabled"}).to_string())
    .send()
    .await;
    assert_eq!(without_nonce.status, 403);
    let wrong_nonce = call(
        c.proxy.admin,
        Method::POST,
        "/balancer-manager/api/members/www1",
    )
    .header("authorization", "Bearer correct-horse-battery-staple")
    .header("content-type", "application/json")
    .body(json!({"nonce": "0".repeat(32), "status": "disabled"}).to_string())
    .send()
    .await;
    assert_eq!(wrong_nonce.status, 403);
    let ok = call(
        c.proxy.admin,
        Method::POST,
        "/balancer-manager/api/members/www1",
    )
    .header("authorization", "Bearer correct-horse-battery-staple")
    .header("content-type", "application/json")
    .body(json!({"nonce": nonce, "status": "disabled"}).to_string())
    .send()
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    c.proxy
        .process
        .eventually_logs("an audit line naming the token", |l| {
            l.contains("balancer-manager change") && l.contains("token ops")
        })
        .await;
    // Health, readiness and metrics stay open to probes and scrapers.
    assert_eq!(get(c.proxy.admin, "/healthz").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_outside_the_allow_list_get_403() {
    let c = Cluster::classic_process(&["--admin-allow", "127.0.0.1/32"]).await;
    let outside = get(c.proxy.admin, API).from("127.0.0.2").send().await;
    assert_eq!(outside.status, 403);
    let page = get(c.proxy.admin, "/balancer-manager")
        .from("127.0.0.2")
        .send()
        .await;
    assert_eq!(page.status, 403);
    c.proxy
        .process
        .eventually_logs("the refusal", |l| {
            l.contains("address not in --admin-allow")
        })
        .await;
    assert_eq!(
        get(c.proxy.admin, API)
            .from("127.0.0.1")
            .send()
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_keeps_sessions_and_disabling_under_nofailover_gives_503() {
    let c = Cluster::classic(&["--nofailover"]).await;
    let nonce = view(c.proxy.admin).await["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    change(
        c.proxy.admin,
        "www1",
        json!({"nonce": nonce, "status": "drain"}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            c.answer(Some("balanceid=route.www1")).await,
            (200, Some("www1".into())),
            "sessions stay"
        );
    }
    let new = c.distribution(100).await;
    assert_eq!(
        new.get("www1"),
        None,
        "no new sessions on a draining member: {new:?}"
    );

    change(
        c.proxy.admin,
        "www2",
        json!({"nonce": nonce, "status": "disabled"}),
    )
    .await;
    let refused = get(c.proxy.addr, "/")
        .header("cookie", "balanceid=route.www2")
        .send()
        .await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reweighting_changes_the_distribution() {
    let c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    let nonce = view(c.proxy.admin).await["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    change(
        c.proxy.admin,
        "www1",
        json!({"nonce": nonce, "loadfactor": 3}),
    )
    .await;
    let after = c.distribution(40).await;
    assert!((29..=31).contains(&after["www1"]), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_a_map_reload_and_vanish_with_the_member() {
    let c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    let nonce = view(c.proxy.admin).await["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    change(
        c.proxy.admin,
        "www1",
        json!({"nonce": nonce, "status": "drain"}),
    )
    .await;
    c.write_map(&[("www1", "loadfactor=5"), ("www2", "loadfactor=2")]);
    c.wait_swaps(2).await;
    let reloaded = view(c.proxy.admin).await;
    assert_eq!(
        member(&reloaded, "www1")["status_override"],
        "drain",
        "kept across the reload"
    );
    assert_eq!(member(&reloaded, "www1")["map_loadfactor"], 5);
    assert_eq!(c.distribution(6).await, counts(&[("www2", 6)]));

    c.write_map(&[("www2", "")]);
    c.wait_swaps(3).await;
    c.write_map(&[("www1", ""), ("www2", "")]);
    c.wait_swaps(4).await;
    let back = view(c.proxy.admin).await;
    assert_eq!(
        member(&back, "www1")["status_override"],
        Value::Null,
        "a member that left the map comes back fresh"
    );
    assert_eq!(member(&back, "www1")["status"], "enabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_members_agent_map_hash_is_shown_and_a_different_one_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    // One admin port for every agent, free on both agent addresses.
    let port = loop {
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            break port;
        }
    };
    let app1 = TestApp::start("www1", "127.0.0.12").await;
    let app2 = TestApp::start("www2", "127.0.0.13").await;
    let agent_port = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let map = dir.path().join("routemap");
    let text = format!("127.0.0.2 www1 port={agent_port}\n127.0.0.3 www2 port={agent_port}\n");
    std::fs::write(&map, &text).unwrap();
    let stale = dir.path().join("stale-routemap");
    std::fs::write(&stale, format!("{text}127.0.0.9 www9\n")).unwrap();
    let start_agent = |ip: &str, app: &TestApp, map: &std::path::Path| {
        Agent::builder_at(
            &format!("{ip}:{agent_port}"),
            &format!("{ip}:{port}"),
            app.addr(),
            map,
        )
        .arg("--track-all")
        .start()
    };
    let _agent1 = start_agent("127.0.0.2", &app1, &map);
    let _agent2 = start_agent("127.0.0.3", &app2, &stale);
    let proxy = stickyroute_tests::proxy::Proxy::builder(&map)
        .args(&[
            "--agent-admin-port",
            &port.to_string(),
            "--agent-poll-interval",
            "100ms",
        ])
        .start();
    let deadline = std::time::Instant::now() + stickyroute_tests::PATIENCE;
    let shown = loop {
        let v = get(proxy.admin, API)
            .try_send()
            .await
            .ok()
            .map(|r| r.json());
        if let Some(v) = v.filter(|v| {
            v["members"].as_array().is_some_and(|m| {
                m.len() == 2 && m.iter().all(|m| !m["agent_map_matches"].is_null())
            })
        }) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "agents never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(member(&shown, "www1")["agent_map_matches"], true);
    assert_eq!(
        member(&shown, "www1")["agent"]["map_hash"],
        shown["map"]["hash"]
    );
    assert_eq!(member(&shown, "www2")["agent_map_matches"], false);
    let page = get(proxy.admin, "/balancer-manager").send().await.text();
    assert!(
        page.contains("agent-mismatch"),
        "the page marks the agent running another map"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_drains_a_member() {
    // With a second replica sharing the overrides file, as the page is used in production.
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("overrides.json").display().to_string();
    let c = Cluster::classic(&["--overrides-file", &store]).await;
    let other = Proxy::builder(&c.map)
        .args(&["--overrides-file", &store])
        .start_process();
    other.wait_members(4).await;
    let browser = Browser::start().await;
    let page = format!("http://{}/balancer-manager", c.proxy.admin);
    browser.open(&page).await;
    for route in ["www1", "www2", "www3", "www0"] {
        assert!(
            browser
                .text(&format!("#member-{route}"))
                .await
                .starts_with(route)
        );
    }
    assert_eq!(browser.text("#member-www2 .status").await, "enabled");
    browser.click("#drain-www2").await;
    let deadline = std::time::Instant::now() + stickyroute_tests::PATIENCE;
    loop {
        let url = browser.current_url().await;
        if url.ends_with("/balancer-manager?done=www2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the form post never came back to the page: {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(browser.text("#flash").await, "Changed www2.");
    let status = browser.text("#member-www2 .status").await;
    let (shown, origin) = status.split_once('\n').unwrap_or((&status, ""));
    assert_eq!(shown, "drain (override; map enabled)");
    // Who set it, and that it is not in the map.
    assert!(
        origin.starts_with("set by 127.0.0.1 at ")
            && origin.ends_with("not in the route map: commit it to the map, or reset"),
        "{status}"
    );
    // At 1280 px the actions are on screen, whole.
    browser.set_window(1280, 900).await;
    let (x, _, width, _) = browser.rect("#member-www2 td.forms").await;
    assert!(
        x >= 0.0 && x + width <= 1280.0,
        "the change column ends at {} px",
        x + width
    );
    // The auto-refresh box (JavaScript): ticked, the table follows a change made elsewhere.
    browser.click("#auto").await;
    let nonce = view(c.proxy.admin).await["nonce"].clone();
    let changed = change(
        c.proxy.admin,
        "www3",
        json!({"nonce": nonce, "status": "standby"}),
    )
    .await;
    assert_eq!(changed.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while !browser
        .text("#member-www3 .status")
        .await
        .starts_with("standby")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the page never refreshed itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both replicas listed, each applying the latest overrides (the drain and the standby).
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    loop {
        let replicas = browser.text("#replicas-table").await;
        if replicas.matches("version 2: latest").count() == 2 && replicas.contains("(this one)") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas never showed as current: {replicas}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("balancer-manager.png");
    browser.screenshot(&screenshot).await;
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a real screenshot"
    );
    // What the browser did, the balancer does.
    assert_eq!(
        member(&view(c.proxy.admin).await, "www2")["status"],
        "drain"
    );
    let spread = c.distribution(20).await;
    assert_eq!(spread.get("www2"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_the_balancer_manager() {
    let c = Cluster::classic(&["--admin-host", "admin.shop.svc"]).await;
    let admin = c.proxy.admin;
    let nonce = view(admin).await["nonce"].as_str().unwrap().to_owned();
    let body = json!({"nonce": nonce, "status": "drain"}).to_string();
    let post = |host: &str, content_type: &str| {
        call(admin, Method::POST, "/balancer-manager/api/members/www1")
            .host(host)
            .header("content-type", content_type)
            .body(body.clone())
    };
    // DNS rebinding: a name that resolves to the admin address, but is not its name.
    for path in ["/balancer-manager", API] {
        let page = get(admin, path).host("evil.example:9900").send().await;
        assert_eq!(page.status, 421, "{path}: {}", page.text());
        assert!(!page.text().contains(&nonce), "{path} leaked the nonce");
    }
    assert_eq!(
        post("evil.example", "application/json").send().await.status,
        421
    );
    // The listener's own address, localhost, loopback and --admin-host names are its names.
    for host in [
        admin.to_string(),
        format!("localhost:{}", admin.port()),
        "[::1]".to_owned(),
        "admin.shop.svc".to_owned(),
        "ADMIN.shop.svc.:9900".to_owned(),
    ] {
        assert_eq!(
            get(admin, API).host(&host).send().await.status,
            200,
            "{host}"
        );
    }
    // Never framed.
    let page = get(admin, "/balancer-manager").send().await;
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("frame-ancestors 'none'")),
        "{:?}",
        page.headers
    );
    // A cross-site "simple request" cannot carry JSON, and the form endpoint takes forms.
    let plain = post(&admin.to_string(), "text/plain").send().await;
    assert_eq!(plain.status, 415, "{}", plain.text());
    let json_to_form = call(admin, Method::POST, "/balancer-manager/members/www1")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(json_to_form.status, 415, "{}", json_to_form.text());
    // Another site's Origin or Referer is refused, even with the nonce.
    let cross = post(&admin.to_string(), "application/json")
        .header("origin", "http://evil.example")
        .send()
        .await;
    assert_eq!(cross.status, 403, "{}", cross.text());
    let referred = post(&admin.to_string(), "application/json")
        .header("referer", "http://evil.example/page")
        .send()
        .await;
    assert_eq!(referred.status, 403, "{}", referred.text());
    assert_eq!(member(&view(admin).await, "www1")["status"], "enabled");
    // The same origin is fine.
    let same = post(&admin.to_string(), "application/json")
        .header("origin", &format!("http://{admin}"))
        .send()
        .await;
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(member(&view(admin).await, "www1")["status"], "drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = stickyroute_tests::proxy::write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = stickyroute_tests::proxy::Proxy::builder(&map)
        .env("STICKYROUTE_ADMIN_TOKEN", "0123456789abcdef-token")
        .start();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reply = get(proxy.admin, API)
            .header("authorization", &format!("{scheme} 0123456789abcdef-token"))
            .send()
            .await;
        assert_eq!(reply.status, 200, "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_report_cannot_break_the_page() {
    let app = TestApp::start("www1", "127.0.0.2").await;
    let agent =
        stickyroute_tests::raw::RawBackend::agent_status("127.0.0.2:0".parse().unwrap(), || {
            "é".repeat(15)
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let map = stickyroute_tests::proxy::write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = stickyroute_tests::proxy::Proxy::builder(&map)
        .args(&[
            "--agent-admin-port",
            &agent.addr().port().to_string(),
            "--agent-poll-interval",
            "100ms",
        ])
        .start();
    proxy.wait_members(1).await;
    let report = stickyroute_tests::eventually_async(
        "the agent's report",
        stickyroute_tests::PATIENCE,
        || async {
            let view = get(proxy.admin, API).try_send().await.ok()?.json();
            let agent = member(&view, "www1")["agent"].clone();
            (!agent.is_null()).then_some(agent)
        },
    )
    .await;
    assert!(report["map_hash"].is_null(), "{report}");
    assert!(
        report["error"].as_str().is_some_and(|e| e.contains("hash")),
        "{report}"
    );
    let page = get(proxy.admin, "/balancer-manager").send().await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("www1"));
}

#[test]
fn the_browser_leaves_no_process_behind_even_when_a_test_fails() {
    use stickyroute_tests::process::{processes_in_group, processes_mentioning};
    for fails in [false, true] {
        let (sender, started) = std::sync::mpsc::channel();
        let run = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let browser = Browser::start().await;
                browser.open("about:blank").await;
                let profile = browser.profile().display().to_string();
                sender
                    .send((browser.process_group(), profile.clone()))
                    .unwrap();
                let running = processes_mentioning(&profile);
                assert!(running.len() > 1, "the browser's processes: {running:?}");
                assert!(!fails, "a failing test");
            });
        });
        let outcome = run.join();
        assert_eq!(outcome.is_err(), fails);
        let (group, profile) = started.recv().unwrap();
        // The crash handler notices its browser is gone a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<u32> = processes_in_group(group)
                .into_iter()
                .chain(processes_mentioning(&profile))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left running: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What HAProxy's stats page shows, here: per member rate, status classes, latency, in
/// flight, the last error with its kind and time, health since its last change, a totals
/// row, CSV; and "clear error" (Apache's force recovery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_show_traffic_errors_and_recover_with_clear_error() {
    let mut c = Cluster::classic(&[]).await;
    for _ in 0..30 {
        let (status, app) = c.answer(Some("balanceid=route.www1")).await;
        assert_eq!((status, app.as_deref()), (200, Some("www1")));
    }
    let shown = view(c.proxy.admin).await;
    let www1 = member(&shown, "www1");
    assert_eq!(www1["responses"]["2xx"], 30, "{www1}");
    assert_eq!(www1["responses"]["5xx"], 0);
    assert!(www1["head_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(www1["head_p99_ms"].as_f64().unwrap() >= www1["head_p50_ms"].as_f64().unwrap());
    assert_eq!(www1["busy"], 0);
    // The rate is the last whole second's requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        for _ in 0..20 {
            c.answer(Some("balanceid=route.www1")).await;
        }
        if member(&view(c.proxy.admin).await, "www1")["rate_per_s"]
            .as_u64()
            .unwrap()
            > 0
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rate shown");
    }

    // www3's app goes away: its error, with kind and time, and health since then.
    c.apps.remove("www3").unwrap().stop().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (status, _) = c.answer(Some("balanceid=route.www3")).await;
    assert_eq!(status, 200, "failed over to another member");
    let now = view(c.proxy.admin).await;
    let www3 = member(&now, "www3");
    assert_eq!(www3["healthy"], false);
    assert_eq!(www3["last_error"], "connect");
    assert!(www3["last_error_at_ms"].as_u64().unwrap() + 1000 >= before);
    assert!(
        www3["health_since_ms"].as_u64().unwrap() + 1000 >= before,
        "health since is the failure, not the start: {www3}"
    );
    let page = get(c.proxy.admin, "/balancer-manager").send().await.text();
    assert!(page.contains("in error (connect)"), "{page}");
    assert!(
        page.contains("id=\"clear-www3\""),
        "a clear-error button on the member in error"
    );
    assert!(page.contains("id=\"totals\""));

    let csv = get(c.proxy.admin, "/balancer-manager/api/members.csv")
        .send()
        .await;
    assert_eq!(
        csv.header("content-type").as_deref(),
        Some("text/csv; charset=utf-8")
    );
    let text = csv.text();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let www3_row = rows.iter().find(|r| r[0] == "www3").unwrap();
    assert_eq!(www3_row[col("healthy")], "false");
    assert_eq!(www3_row[col("last_error")], "connect");
    let www1_row = rows.iter().find(|r| r[0] == "www1").unwrap();
    assert!(www1_row[col("responses_2xx")].parse::<u64>().unwrap() >= 50);

    // Clear error: healthy again at once, logged.
    let cleared = change(
        c.proxy.admin,
        "www3",
        json!({"nonce": shown["nonce"], "clear_error": true}),
    )
    .await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    let now = view(c.proxy.admin).await;
    let www3 = member(&now, "www3");
    assert_eq!(www3["healthy"], true);
    assert_eq!(www3["status_override"], Value::Null, "not an override");
}
