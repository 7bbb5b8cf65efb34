//! What a reload (SIGHUP, `systemctl reload`) changes in a running proxy or agent besides
//! the routing and cookie settings: who may use the balancer-manager (addresses, names,
//! tokens, the token file's contents) and the log level. Open balancer-manager pages keep
//! working across a reload, and what a reload cannot change is named as needing a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use stickyroute_tests::PATIENCE;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{Call, call, get};
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::server::Server;
use tempfile::TempDir;

const API: &str = "/balancer-manager/api/";
const OPS: &str = "ops:correct-horse-battery-staple";
const OPS_SECRET: &str = "Bearer correct-horse-battery-staple";
const DEV: &str = "dev:tr0ub4dor-and-three-more";
const DEV_SECRET: &str = "Bearer tr0ub4dor-and-three-more";

/// A proxy in front of one app (member www1), its settings in a config file that a test
/// rewrites before asking for a reload.
struct Setup {
    dir: TempDir,
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
            dir,
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn proxy(&self) -> stickyroute_tests::proxy::ProxyBuilder {
        Proxy::builder_with_map(&["--config", self.config.to_str().unwrap()])
    }
}

/// A balancer-manager change of www1's status, with `nonce`.
fn change(admin: SocketAddr, nonce: &str, status: &str) -> Call {
    call(admin, Method::POST, "/balancer-manager/api/members/www1")
        .header("content-type", "application/json")
        .body(json!({"nonce": nonce, "status": status}).to_string())
}

async fn status_of(call: Call) -> http::StatusCode {
    call.send().await.status
}

/// Waits until `call()` is answered with `status`: a reload of an in-process server is
/// asynchronous, and shows only in what it answers.
async fn eventually_answers(what: &str, status: u16, call: impl Fn() -> Call) {
    stickyroute_tests::eventually_async(what, PATIENCE, || async {
        (call().send().await.status == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_a_newly_allowed_address_in_and_open_pages_keep_their_nonce() {
    let setup = Setup::new(json!({"admin_allow": ["127.0.0.1"]})).await;
    let proxy = setup.proxy().start();
    proxy.wait_members(1).await;
    let admin = proxy.admin;
    let page = get(admin, API).send().await;
    assert_eq!(page.status, 200, "{}", page.text());
    let nonce = page.json()["nonce"].as_str().unwrap().to_owned();
    assert_eq!(status_of(get(admin, API).from("127.0.0.2")).await, 403);

    setup.write_config(json!({"admin_allow": ["127.0.0.1", "10.8.2.0/24", "127.0.0.2/32"]}));
    proxy.process.reload();
    eventually_answers("127.0.0.2 to be let in", 200, || {
        get(admin, API).from("127.0.0.2")
    })
    .await;
    let after = get(admin, API).from("127.0.0.2").send().await.json();
    assert_eq!(
        after["nonce"], nonce,
        "the nonce is the process's, not a setting"
    );
    let changed = change(admin, &nonce, "drain")
        .from("127.0.0.2")
        .send()
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["status"], "drain");

    // The list is replaced, not added to: 127.0.0.1 is out once the file drops it.
    setup.write_config(json!({"admin_allow": ["127.0.0.2"]}));
    proxy.process.reload();
    eventually_answers("127.0.0.1 to be shut out", 403, || get(admin, API)).await;
    let changed = change(admin, &nonce, "enabled")
        .from("127.0.0.2")
        .send()
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_name_the_balancer_manager_answers_to() {
    let setup = Setup::new(json!({})).await;
    let proxy = setup.proxy().start();
    proxy.wait_members(1).await;
    let admin = proxy.admin;
    let nonce = get(admin, API).send().await.json()["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_name = || get(admin, API).host("admin.shop.svc:9900");
    let refused = by_name().send().await;
    assert_eq!(refused.status, 421, "{}", refused.text());
    assert!(!refused.text().contains(&nonce));

    setup.write_config(json!({"admin_host": ["admin.shop.svc"]}));
    proxy.process.reload();
    eventually_answers("the new name to be answered", 200, by_name).await;
    // A page opened before the reload, now used through the new name, still works.
    let changed = change(admin, &nonce, "drain")
        .host("admin.shop.svc:9900")
        .header("origin", "http://admin.shop.svc:9900")
        .send()
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    // Still only the listener's own names and the ones given: DNS rebinding stays out.
    assert_eq!(
        status_of(get(admin, API).host("evil.example:9900")).await,
        421
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_variable_still_holds_after_a_reload() {
    let setup = Setup::new(json!({"admin_allow": ["127.0.0.1"]})).await;
    let token = "0123456789abcdef-token";
    let proxy = setup.proxy().env("STICKYROUTE_ADMIN_TOKEN", token).start();
    proxy.wait_members(1).await;
    let admin = proxy.admin;
    let bearer = format!("Bearer {token}");
    assert_eq!(
        status_of(get(admin, API).header("authorization", &bearer)).await,
        200
    );

    setup.write_config(json!({"admin_allow": ["127.0.0.1", "127.0.0.2"]}));
    proxy.process.reload();
    eventually_answers("127.0.0.2 to be let in", 200, || {
        get(admin, API)
            .from("127.0.0.2")
            .header("authorization", &bearer)
    })
    .await;
    assert_eq!(
        status_of(get(admin, API).from("127.0.0.2")).await,
        401,
        "the variable's token is still required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_token_file_and_says_what_it_applied() {
    let setup = Setup::new(json!({})).await;
    let tokens = setup.path("tokens");
    std::fs::write(&tokens, format!("{OPS}\n")).unwrap();
    setup.write_config(json!({"admin_token_file": tokens}));
    let proxy = setup.proxy().start_process();
    proxy.wait_members(1).await;
    let admin = proxy.admin;
    let as_ops = || get(admin, API).header("authorization", OPS_SECRET);
    let as_dev = || get(admin, API).header("authorization", DEV_SECRET);
    let page = as_ops().send().await;
    assert_eq!(page.status, 200, "{}", page.text());
    let nonce = page.json()["nonce"].as_str().unwrap().to_owned();
    assert_eq!(status_of(as_dev()).await, 401);

    // Only the file's contents change: the setting itself (its path) stays the same.
    std::fs::write(&tokens, format!("{OPS}\n{DEV}\n")).unwrap();
    proxy.process.signal("HUP");
    let applied = proxy
        .process
        .eventually_logs("the applied token file", |l| {
            l.contains("reload: applied") && l.contains("admin_token_file=")
        })
        .await;
    assert!(
        !applied.contains("tr0ub4dor"),
        "no secret in the log: {applied}"
    );
    assert_eq!(status_of(as_dev()).await, 200);
    assert_eq!(status_of(as_ops()).await, 200);
    let changed = change(admin, &nonce, "drain")
        .header("authorization", DEV_SECRET)
        .send()
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    proxy
        .process
        .eventually_logs("the audit line naming the new token", |l| {
            l.contains("balancer-manager change") && l.contains("token dev")
        })
        .await;

    // An access setting and a restart-only balancer-manager setting, in one edit.
    setup.write_config(json!({
        "admin_token_file": tokens,
        "admin_allow": ["127.0.0.0/8"],
        "agent_poll_interval": "3s",
    }));
    proxy.process.signal("HUP");
    proxy
        .process
        .eventually_logs("the applied allow-list", |l| {
            l.contains("reload: applied") && l.contains("admin_allow=127.0.0.0/8")
        })
        .await;
    let restart = proxy
        .process
        .eventually_logs("the restart warning", |l| l.contains("need a restart"))
        .await;
    assert!(restart.contains("agent_poll_interval=3s"), "{restart}");
    assert!(!restart.contains("admin_allow"), "{restart}");

    // A broken token file changes nothing: both tokens still work, no one else gets in.
    std::fs::write(&tokens, "short\n").unwrap();
    proxy.process.signal("HUP");
    proxy
        .process
        .eventually_logs("the refusal", |l| {
            l.contains("nothing changed") && l.contains("at least 16 characters")
        })
        .await;
    assert_eq!(status_of(as_dev()).await, 200);
    assert_eq!(status_of(get(admin, API)).await, 401);
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
