//! An app that dies behind its live agent: the agent says so on its answer, the proxy takes
//! that member as failed (the request never reached an app), sends new sessions elsewhere
//! without an error, and the dead member's sessions follow the nofailover policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::proxy::Proxy;

/// A port on `ip` that was free a moment ago.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent on `ip:port` in front of `app`, with `args`, once it is ready.
async fn agent(ip: &str, port: u16, app: &TestApp, map: &std::path::Path, args: &[&str]) -> Agent {
    let agent = Agent::builder_at(&format!("{ip}:{port}"), &format!("{ip}:0"), app.addr(), map)
        .arg("--track-all")
        .args(args)
        .start();
    agent.process.wait_ready(agent.admin).await;
    agent
}

/// Two apps, www1's on 127.0.0.12 and www2's on 127.0.0.13, and a map naming their agents
/// on 127.0.0.2 and 127.0.0.3 (ports free a moment ago).
async fn two_members(dir: &tempfile::TempDir) -> (TestApp, TestApp, std::path::PathBuf, u16, u16) {
    let app1 = TestApp::start("app1", "127.0.0.12").await;
    let app2 = TestApp::start("app2", "127.0.0.13").await;
    let (p1, p2) = (free_port("127.0.0.2"), free_port("127.0.0.3"));
    let map = dir.path().join("routemap");
    std::fs::write(
        &map,
        format!("127.0.0.2 www1 port={p1}\n127.0.0.3 www2 port={p2}\n"),
    )
    .unwrap();
    (app1, app2, map, p1, p2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_avoid_a_dead_app_at_once_and_its_sessions_follow_nofailover() {
    let dir = tempfile::tempdir().unwrap();
    let (app1, app2, map, p1, p2) = two_members(&dir).await;
    let agent1 = agent("127.0.0.2", p1, &app1, &map, &[]).await;
    let _agent2 = agent("127.0.0.3", p2, &app2, &map, &[]).await;
    let proxy = Proxy::builder(&map)
        .args(&["--nofailover", "--retry", "30s"])
        .start();
    proxy.wait_members(2).await;
    let before = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(before.json()["app"], "app1");

    app1.stop().await;
    let killed = Instant::now();
    // New sessions: every one answered by app2, the first that went to www1 included
    // (its agent said the app was unreachable, so the proxy sent it on).
    for i in 0..30 {
        let reply = get(proxy.addr, "/").send().await;
        assert_eq!(reply.status, 200, "new session {i}");
        assert_eq!(reply.json()["app"], "app2", "new session {i}");
        assert_eq!(
            reply.header("stickyroute-member"),
            None,
            "the proxy consumes the header"
        );
        let cookies = reply.set_cookies_named("balanceid");
        assert!(
            cookies.len() == 1 && cookies[0].starts_with("balanceid=route.www2;"),
            "the new session is issued the route of the member that served it: {cookies:?}"
        );
    }
    assert!(killed.elapsed() < Duration::from_secs(1));
    let www1 = proxy.member("www1").await;
    assert_eq!(www1["healthy"], false, "{www1}");

    // A session of the dead member, under --nofailover: 503 with the time left in error.
    let pinned = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(pinned.status, 503);
    let retry_after: u64 = pinned.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry_after), "{retry_after}");

    let metrics = get(proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains(r#"stickyroute_member_failures_total{route="www1",kind="connect"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("stickyroute_proxy_retries_total 1"),
        "{metrics}"
    );
    // The agent's own report says so too.
    let status = get(agent1.admin, "/status").send().await.json();
    assert_eq!(status["app"]["reachable"], false, "{status}");
    assert!(status["app"]["unreachable_since"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_raise_the_agents_header() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("app1", "127.0.0.12").await;
    let port = free_port("127.0.0.2");
    let map = dir.path().join("routemap");
    std::fs::write(&map, format!("127.0.0.2 www1 port={port}\n")).unwrap();
    let agent = agent("127.0.0.2", port, &app, &map, &[]).await;
    // The test app echoes a header back when asked: the agent removes it.
    let reply = get(
        agent.addr,
        "/echo-header?name=stickyroute-member&value=unreachable",
    )
    .send()
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("stickyroute-member"), None);
    let status = get(agent.admin, "/status").send().await.json();
    assert_eq!(status["app"]["reachable"], true, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_failing_its_health_check_gets_no_requests_and_its_agent_is_unready() {
    let dir = tempfile::tempdir().unwrap();
    let (app1, app2, map, p1, p2) = two_members(&dir).await;
    // The app answers, but its health path says it is not well.
    // Not waited ready: it turns unready as soon as its check has failed twice.
    let agent1 = Agent::builder_at(&format!("127.0.0.2:{p1}"), "127.0.0.2:0", app1.addr(), &map)
        .args(&[
            "--track-all",
            "--app-health-path",
            "/status/503",
            "--app-health-interval",
            "50ms",
        ])
        .start();
    let _agent2 = agent("127.0.0.3", p2, &app2, &map, &[]).await;
    let proxy = Proxy::builder(&map).start();
    proxy.wait_members(2).await;
    stickyroute_tests::eventually_async(
        "the agent to report unready",
        stickyroute_tests::PATIENCE,
        || async {
            let reply = get(agent1.admin, "/readyz").try_send().await.ok()?;
            (reply.status == 503 && reply.text().contains("health check")).then_some(())
        },
    )
    .await;
    for i in 0..20 {
        let reply = get(proxy.addr, "/").send().await;
        assert_eq!(reply.status, 200, "new session {i}");
        assert_eq!(reply.json()["app"], "app2", "new session {i}");
    }
    let status = get(agent1.admin, "/status").send().await.json();
    assert_eq!(status["app"]["check_failing"], true, "{status}");
    assert_eq!(status["app"]["reachable"], false, "{status}");
}
