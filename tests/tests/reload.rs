//! What a reload (SIGHUP, `systemctl reload`) changes in a running proxy or agent besides
//! the routing and cookie settings: the log level. What a reload cannot change is named as
//! needing a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::server::Server;
use tempfile::TempDir;

/// A proxy in front of one app (member www1), its settings in a config file that a test
/// rewrites before asking for a reload.
struct Setup {
    _dir: TempDir,
    _app: TestApp,
    map: PathBuf,
    config: PathBuf,
}

impl Setup {
    async fn new(settings: Value) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let app = TestApp::start("www1", "127.0.0.2").await;
        let map = write_map(dir.path(), &[("www1", app.addr())]);
        let config = dir.path().join("proxy.json");
        let setup = Setup {
            _dir: dir,
            _app: app,
            map,
            config,
        };
        setup.write_config(settings);
        setup
    }

    /// The config file: the map, and `settings`.
    fn write_config(&self, mut settings: Value) {
        settings["routemap"] = json!(self.map);
        std::fs::write(&self.config, settings.to_string()).unwrap();
    }

    fn proxy(&self) -> stickyroute_tests::proxy::ProxyBuilder {
        Proxy::builder_with_map(&["--config", self.config.to_str().unwrap()])
    }
}

/// A request every server refuses at the edge, with a debug line saying so.
async fn refused_request(server: &Server) {
    let answer = stickyroute_tests::raw::exchange(
        server.addr,
        b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(stickyroute_tests::raw::status(&answer), Some(405));
}

/// Turns `server`'s level to debug and back with SIGHUP, `write_level` rewriting its config
/// file: debug lines appear only in between, and the format stays what it started with.
async fn debug_lines_follow_the_level(server: &Server, write_level: impl Fn(&str, &str)) {
    let debug_lines = || server.process.log_lines_with("request refused").len();
    refused_request(server).await;

    write_level("debug", "json");
    server.process.signal("HUP");
    let applied = server
        .process
        .eventually_logs("the applied level", |l| {
            l.contains("reload: applied") && l.contains("log_level=debug")
        })
        .await;
    assert!(!applied.starts_with('{'), "still text: {applied}");
    let restart = server
        .process
        .eventually_logs("the restart warning", |l| l.contains("need a restart"))
        .await;
    assert!(restart.contains("log_format=json"), "{restart}");
    assert_eq!(debug_lines(), 0, "no debug line at info");
    refused_request(server).await;
    server
        .process
        .eventually_logs("a debug line", |l| l.contains("request refused"))
        .await;

    write_level("info", "text");
    server.process.signal("HUP");
    server
        .process
        .eventually_logs("the level back at info", |l| {
            l.contains("reload: applied") && l.contains("log_level=info")
        })
        .await;
    let seen = debug_lines();
    refused_request(server).await;
    // Another reload, as a marker in the log after the refused request.
    server.process.signal("HUP");
    server
        .process
        .eventually_logs("the reload after it", |l| {
            l.contains("reload: no setting changed")
        })
        .await;
    assert_eq!(debug_lines(), seen, "debug lines stop at info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_proxys_log_level() {
    let setup = Setup::new(json!({})).await;
    let proxy = setup.proxy().start_process();
    proxy.wait_members(1).await;
    debug_lines_follow_the_level(&proxy, |level, format| {
        setup.write_config(json!({"log_level": level, "log_format": format}));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_agents_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    std::fs::write(&map, "127.0.0.2 www1\n").unwrap();
    let app = TestApp::start("app1", "127.0.0.12").await;
    let config = dir.path().join("agent.json");
    let write_level = |level: &str, format: &str| {
        let settings =
            json!({"session_cookie": ["SESSION"], "log_level": level, "log_format": format});
        std::fs::write(&config, settings.to_string()).unwrap();
    };
    write_level("info", "text");
    let agent = Agent::builder("127.0.0.2", app.addr(), &map)
        .args(&["--config", config.to_str().unwrap()])
        .start_process();
    agent.process.wait_ready(agent.admin).await;
    debug_lines_follow_the_level(&agent, write_level).await;
}
