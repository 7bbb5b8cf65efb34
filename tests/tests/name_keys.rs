//! A route map keyed by host names, as for a StatefulSet (`web-0 www0`): the agent finds
//! its entry through its pod name, the proxy reaches the member through DNS.
//!
//! No cluster DNS runs here, so `localhost` (the one name every test machine resolves)
//! stands in for a pod's DNS name, and the suffix test checks the name the proxy looks up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_keyed_by_names_routes_sessions_and_sets_their_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    let app = TestApp::start("app0", "127.0.0.12").await;
    // The agent's address (127.0.0.1) is not in the map: only its name can match.
    let agent = Agent::builder_at("127.0.0.1:0", "127.0.0.1:0", app.addr(), &map)
        .args(&["--session-cookie", "SESSION"])
        .env("POD_NAME", "localhost")
        .start();
    std::fs::write(&map, format!("localhost www0 port={}\n", agent.addr.port())).unwrap();
    let proxy = Proxy::builder(&map).start();
    agent.process.wait_ready(agent.admin).await;
    proxy.process.wait_ready(proxy.admin).await;

    let login = get(proxy.addr, "/login").send().await;
    assert_eq!(login.status, 200);
    assert_eq!(login.json()["app"], "app0");
    let balanceid = login.set_cookies_named("balanceid");
    assert_eq!(balanceid.len(), 1);
    assert!(
        balanceid[0].starts_with("balanceid=route.www0;"),
        "{balanceid:?}"
    );

    let status = get(proxy.admin, "/status").send().await.json();
    let member = &status["members"][0];
    assert_eq!(member["key"], "localhost");
    assert_eq!(
        member["address"],
        format!("127.0.0.1:{}", agent.addr.port()),
        "the name resolved"
    );
    let agent_status = get(agent.admin, "/status").send().await.json();
    assert_eq!(agent_status["routes"][0]["matched_by"], "name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_keys_are_looked_up_with_the_member_domain_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    std::fs::write(&map, "web-0 www0 port=8080\n").unwrap();
    let proxy = Proxy::builder(&map)
        .args(&["--member-domain-suffix", ".web.shop.svc.cluster.local"])
        .start_process();
    // What a pod's resolver would be asked for the StatefulSet pod web-0 behind the
    // headless Service web in namespace shop.
    proxy
        .process
        .eventually_logs("the suffixed name being looked up", |line| {
            line.contains("does not resolve") && line.contains("web-0.web.shop.svc.cluster.local")
        })
        .await;
    let status = get(proxy.admin, "/status").send().await.json();
    assert_eq!(status["members"][0]["key"], "web-0");
    assert!(status["members"][0]["address"].is_null());
    let reply = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www0")
        .send()
        .await;
    assert_eq!(reply.status, 503, "an unresolved member is unusable");
}
