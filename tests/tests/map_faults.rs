//! What a bad map file costs the real binaries: a huge invalid map must not blow their
//! memory or their log, and a missing map directory is reported once, not every poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::{PATIENCE, eventually_async};

/// A ConfigMap's maximum (1 MiB) of lines that are each invalid.
fn megabyte_of_invalid_lines() -> String {
    let line = "10.0.0.1 not.a.route\n";
    line.repeat((1 << 20) / line.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_invalid_lines_costs_the_proxy_and_the_agent_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    // The proxy reaches the app directly; the agent finds its own entry by its address.
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = Proxy::builder(&map).start_process();
    let agent = Agent::builder("127.0.0.2", app.addr(), &map)
        .arg("--track-all")
        .start_process();
    agent.process.wait_ready(agent.admin).await;
    proxy.wait_members(1).await;
    let before = (proxy.process.rss_kib(), agent.process.rss_kib());
    let bad = dir.path().join("routemap.tmp");
    std::fs::write(&bad, megabyte_of_invalid_lines()).unwrap();
    std::fs::rename(&bad, &map).unwrap();
    for admin in [proxy.admin, agent.admin] {
        eventually_async("the invalid map to be reported", PATIENCE, || async {
            let status = get(admin, "/status").send().await.json();
            let error = status["map"]["last_error"].clone();
            (!error.is_null()).then_some(error)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (proxy.process.rss_kib(), agent.process.rss_kib());
    for (name, before, after) in [("proxy", before.0, after.0), ("agent", before.1, after.1)] {
        assert!(
            after < before + 40 * 1024,
            "{name} grew from {before} KiB to {after} KiB"
        );
    }
    let status = get(proxy.admin, "/status").send().await.json();
    let details = status["map"]["last_error"]["details"].as_array().unwrap();
    assert!(details.len() <= 21, "{} details", details.len());
    for process in [&proxy.process, &agent.process] {
        let longest = process.log().iter().map(String::len).max().unwrap_or(0);
        assert!(longest < 16 * 1024, "a log line of {longest} bytes");
    }
    // The last good map keeps serving.
    assert_eq!(
        get(proxy.addr, "/")
            .header("cookie", "balanceid=route.www1")
            .send()
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_map_directory_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("not-yet").join("routemap");
    let proxy = Proxy::builder(&map).start_process();
    // Without its directory the map is read every 2 s, and after every failed read the
    // watch is tried again. Waiting for the second failed read, rather than a fixed 5 s,
    // means the retry after the first read failed too, 2 s ago: time enough to have
    // logged a second warning if each retry warned.
    eventually_async("two failed reads of the missing map", PATIENCE, || async {
        let status = get(proxy.admin, "/status").try_send().await.ok()?.json();
        (status["map"]["reload_errors"].as_u64()? >= 2).then_some(())
    })
    .await;
    // And once it appears, the map is followed.
    std::fs::create_dir(dir.path().join("not-yet")).unwrap();
    std::fs::write(&map, "127.0.0.2 www1\n").unwrap();
    proxy.wait_members(1).await;
    // Counted at the end, so every retry that failed counts, the one after the second
    // read included.
    let warnings = proxy.process.log_lines_with("cannot watch");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}
