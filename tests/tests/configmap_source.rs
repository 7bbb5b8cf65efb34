//! The route map as a ConfigMap watched through the Kubernetes API: the real proxy and
//! agents, pointed through a kubeconfig at an in-test API server that speaks the real
//! list/watch wire protocol (`stickyroute_tests::kube_api`). No cluster runs here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use stickyroute_tests::PATIENCE;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::kube_api::ApiServer;
use stickyroute_tests::proxy::Proxy;

const NAMESPACE: &str = "shop";
const NAME: &str = "routemap";
const OBJECT: &str = "shop/routemap";

/// Two apps, each behind its own agent, and a proxy; all three binaries follow the
/// ConfigMap `shop/routemap` through the API server, which does not have it yet.
struct Deployment {
    api: ApiServer,
    _apps: Vec<TestApp>,
    agents: Vec<Agent>,
    proxy: Proxy,
}

impl Deployment {
    async fn start() -> Self {
        Self::start_with(ApiServer::start().await).await
    }

    async fn start_with(api: ApiServer) -> Self {
        let kubeconfig = api.kubeconfig().display().to_string();
        let map_flags = ["--routemap-configmap", OBJECT];
        let mut apps = Vec::new();
        let mut agents = Vec::new();
        for (i, name) in ["app1", "app2"].iter().enumerate() {
            let app = TestApp::start(name, &format!("127.0.0.{}", 12 + i)).await;
            let ip = format!("127.0.0.{}", 2 + i);
            let agent = Agent::builder_with_map(
                &format!("{ip}:0"),
                &format!("{ip}:0"),
                app.addr(),
                &map_flags,
            )
            .args(&["--session-cookie", "SESSION"])
            .env("KUBECONFIG", &kubeconfig)
            .start_process();
            apps.push(app);
            agents.push(agent);
        }
        // Unknown routes get a 503 rather than a weighted pick, so that "the proxy routes
        // www7 to app1" cannot pass by chance before the map arrives.
        let proxy = Proxy::builder_with_map(&map_flags)
            .args(&["--unknown-route", "reject"])
            .env("KUBECONFIG", &kubeconfig)
            .start_process();
        Self {
            api,
            _apps: apps,
            agents,
            proxy,
        }
    }

    /// The map line of agent `i` (0 or 1) under `route`.
    fn line(&self, i: usize, route: &str) -> String {
        let addr = self.agents[i].addr;
        format!("{} {route} port={}\n", addr.ip(), addr.port())
    }

    /// `kubectl apply` of the ConfigMap with this map under the key `routemap`.
    fn apply(&self, map: &str) {
        self.api.apply(NAMESPACE, NAME, &[("routemap", map)]);
    }

    /// Applies the two-member map www1 (app1) / www2 (app2) and waits until every
    /// component serves it.
    async fn apply_first_map(&self) {
        self.apply(&(self.line(0, "www1") + &self.line(1, "www2")));
        for agent in &self.agents {
            agent.process.wait_ready(agent.admin).await;
        }
        self.proxy.process.wait_ready(self.proxy.admin).await;
    }

    /// Waits until each of the three clients (two agents, the proxy) has a watch open.
    async fn until_all_watch(&self) {
        self.until("all three watches open", || async {
            self.api.open_watches() >= 3
        })
        .await;
    }

    /// Which app answers through the proxy for this sticky cookie.
    async fn app_for(&self, balanceid: &str) -> String {
        let reply = get(self.proxy.addr, "/")
            .header("cookie", &format!("balanceid={balanceid}"))
            .send()
            .await;
        assert_eq!(reply.status, 200, "balanceid={balanceid}");
        reply.json()["app"].as_str().unwrap().to_owned()
    }

    /// Which app the proxy sends this route to, if it knows the route.
    async fn routes_to(&self, route: &str) -> Option<String> {
        let reply = get(self.proxy.addr, "/")
            .header("cookie", &format!("balanceid=route.{route}"))
            .send()
            .await;
        (reply.status == 200).then(|| reply.json()["app"].as_str().unwrap().to_owned())
    }

    /// The route agent `i` issues to a session that has none.
    async fn cookie_from_agent(&self, i: usize) -> String {
        let reply = get(self.agents[i].addr, "/")
            .header("cookie", "SESSION=abc")
            .send()
            .await;
        let cookie = reply.set_cookies_named("balanceid");
        cookie
            .first()
            .and_then(|c| c.split(';').next())
            .unwrap_or("")
            .to_owned()
    }

    async fn proxy_map_status(&self) -> serde_json::Value {
        get(self.proxy.admin, "/status").send().await.json()["map"].clone()
    }

    async fn agent_map_status(&self, i: usize) -> serde_json::Value {
        get(self.agents[i].admin, "/status").send().await.json()["map"].clone()
    }

    /// Polls until `check` holds, then returns how long it took.
    async fn until<F, Fut>(&self, what: &str, check: F) -> Duration
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; proxy log:\n{}",
                self.proxy.process.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_changes_the_proxys_members_and_the_agents_cookie_within_a_second() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    assert_eq!(d.app_for("route.www1").await, "app1");
    assert_eq!(d.app_for("route.www2").await, "app2");
    assert_eq!(d.cookie_from_agent(0).await, "balanceid=route.www1");
    // Both the list and the watch are filtered to the one ConfigMap, which is what lets a
    // Role limited by resourceNames work.
    let requests = d.api.requests();
    assert!(
        !d.api.lists().is_empty() && !d.api.watches().is_empty(),
        "{requests:#?}"
    );
    for request in &requests {
        assert!(
            request.starts_with("GET /api/v1/namespaces/shop/configmaps?")
                && request.contains("fieldSelector=metadata.name%3Droutemap"),
            "unfiltered request {request}"
        );
    }

    // Rename app1's route: the proxy routes the new route and the agent issues it.
    d.apply(&(d.line(0, "www7") + &d.line(1, "www2")));
    let proxy_took = d
        .until("the proxy to route www7", || async {
            d.routes_to("www7").await.as_deref() == Some("app1")
        })
        .await;
    let agent_took = d
        .until("the agent to issue www7", || async {
            d.cookie_from_agent(0).await == "balanceid=route.www7"
        })
        .await;
    assert!(
        proxy_took < Duration::from_secs(1) && agent_took < Duration::from_secs(1),
        "proxy {proxy_took:?}, agent {agent_took:?}"
    );
    // Sessions on the old route still land on the same member (kept as an alias).
    assert_eq!(d.app_for("route.www1").await, "app1");
    let status = d.proxy_map_status().await;
    assert_eq!(status["source"], "configmap:shop/routemap#routemap");
    assert_eq!(status["generation"], 2);
    assert_eq!(status["hash"], d.agent_map_status(0).await["hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_configmap_keeps_the_last_map_until_it_is_created_again() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    let served = d.proxy_map_status().await["hash"].clone();

    d.api.delete(NAMESPACE, NAME);
    d.until("the proxy to report the deletion", || async {
        d.proxy_map_status().await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("was deleted"))
    })
    .await;
    d.until("the agent to report the deletion", || async {
        !d.agent_map_status(1).await["last_error"].is_null()
    })
    .await;
    assert_eq!(d.proxy_map_status().await["hash"], served);
    assert_eq!(d.app_for("route.www2").await, "app2");
    assert_eq!(d.cookie_from_agent(1).await, "balanceid=route.www2");
    let ready = get(d.proxy.admin, "/readyz").send().await;
    assert_eq!(ready.status, 200, "the last map keeps the proxy ready");
    let metrics = get(d.proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.lines().any(|l| l == "stickyroute_map_last_error 1"),
        "{metrics}"
    );

    d.apply(&(d.line(0, "www1") + &d.line(1, "www5")));
    d.until("the re-created map", || async {
        d.cookie_from_agent(1).await == "balanceid=route.www5"
    })
    .await;
    d.until("the proxy to route www5", || async {
        d.routes_to("www5").await.as_deref() == Some("app2")
    })
    .await;
    assert!(d.proxy_map_status().await["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_is_relisted_and_no_change_is_lost() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    let lists_before = d.api.lists().len();

    // "410 Gone" inside the stream, and a change right after it: the change can only be
    // seen through the re-list (the history it would be replayed from is gone).
    d.api.expire_watches();
    d.apply(&(d.line(0, "www1") + &d.line(1, "www3")));
    d.until("the change made while the watch expired", || async {
        d.cookie_from_agent(1).await == "balanceid=route.www3"
    })
    .await;
    d.until("the proxy to route www3", || async {
        d.routes_to("www3").await.as_deref() == Some("app2")
    })
    .await;
    // Three clients (two agents, one proxy), each of which lists again (after the
    // watcher's backoff).
    d.until("every client to list again", || async {
        d.api.lists().len() >= lists_before + 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_stream_is_resumed_from_the_bookmarked_version_without_a_relist() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    d.until_all_watch().await;
    // Another ConfigMap changes (version 102): the watches, filtered to ours, never see it,
    // only the bookmark that carries the version forward.
    d.api.apply(NAMESPACE, "unrelated", &[("x", "y")]);
    d.api.bookmark();
    let lists_before = d.api.lists().len();
    let watches_before = d.api.watches().len();

    d.api.end_watches();
    d.until("all three watches open again", || async {
        d.api.watches().len() >= watches_before + 3 && d.api.open_watches() >= 3
    })
    .await;
    d.apply(&(d.line(0, "www4") + &d.line(1, "www2")));
    d.until("the change after the resume", || async {
        d.cookie_from_agent(0).await == "balanceid=route.www4"
    })
    .await;
    d.until("the proxy to route www4", || async {
        d.routes_to("www4").await.as_deref() == Some("app1")
    })
    .await;
    assert_eq!(
        d.api.lists().len(),
        lists_before,
        "a clean end needs no re-list"
    );
    // Resumed from the version the stream had reached through the bookmark, not from the
    // last event (101) or from scratch.
    let resumed: Vec<String> = d.api.watches()[watches_before..].to_vec();
    assert!(
        resumed.iter().all(|w| w.ends_with("resourceVersion=102")),
        "{resumed:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_map_or_a_missing_key_keeps_the_last_map_and_names_the_problem() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    let served = d.proxy_map_status().await["hash"].clone();

    d.apply(&(d.line(0, "www1") + &d.line(1, "www1")));
    d.until("the proxy to report the invalid map", || async {
        !d.proxy_map_status().await["last_error"].is_null()
    })
    .await;
    let status = d.proxy_map_status().await;
    let details = status["last_error"]["details"][0].as_str().unwrap();
    assert!(
        details.starts_with("configmap:shop/routemap#routemap:2: ") && details.contains("www1"),
        "{details}"
    );
    assert_eq!(status["hash"], served);
    assert_eq!(d.app_for("route.www2").await, "app2");

    d.api
        .apply(NAMESPACE, NAME, &[("routes", "127.0.0.2 www1\n")]);
    d.until("the agent to report the missing key", || async {
        d.agent_map_status(0).await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no key \"routemap\" (its keys: routes)"))
    })
    .await;
    assert_eq!(d.cookie_from_agent(0).await, "balanceid=route.www1");
    d.proxy
        .process
        .eventually_logs("the missing key in the log", |line| {
            line.contains("configmap:shop/routemap#routemap") && line.contains("no key")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_access_to_the_configmap_the_proxy_stays_unready_and_says_why() {
    // As with a missing RoleBinding: refused from the first request on.
    let api = ApiServer::start().await;
    api.forbid(true);
    let d = Deployment::start_with(api).await;
    d.apply(&(d.line(0, "www1") + &d.line(1, "www2")));
    d.until("the proxy to report the refusal", || async {
        d.proxy_map_status().await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("forbidden"))
    })
    .await;
    assert_eq!(get(d.proxy.admin, "/readyz").send().await.status, 503);
    assert_eq!(
        get(d.proxy.admin, "/healthz").send().await.status,
        200,
        "liveness never depends on the API server"
    );

    d.api.forbid(false);
    d.proxy.process.wait_ready(d.proxy.admin).await;
    assert_eq!(d.app_for("route.www1").await, "app1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_error_clears_from_the_status_once_the_api_answers_again() {
    let d = Deployment::start().await;
    d.apply_first_map().await;
    d.until_all_watch().await;
    // The watches end and their resumption is refused for a while.
    d.api.forbid(true);
    d.api.end_watches();
    d.until("the proxy to report the refusal", || async {
        d.proxy_map_status().await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("forbidden"))
    })
    .await;
    assert_eq!(get(d.proxy.admin, "/readyz").send().await.status, 200);
    // Access again, and no change to the ConfigMap: only the recovery itself can clear
    // the error (and the metric an alert would watch).
    d.api.forbid(false);
    d.until("the error to clear", || async {
        d.proxy_map_status().await["last_error"].is_null()
            && d.agent_map_status(0).await["last_error"].is_null()
    })
    .await;
    let metrics = get(d.proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.lines().any(|l| l == "stickyroute_map_last_error 0"),
        "{metrics}"
    );
    assert!(
        d.api
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/shop/configmaps/routemap")),
        "recovery confirmed by reading the one ConfigMap"
    );
    assert_eq!(
        d.proxy_map_status().await["generation"],
        1,
        "nothing new was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_configmap_reference_is_a_configuration_error() {
    let proxy = stickyroute_tests::process::Process::start(
        "stickyroute-proxy",
        &["--routemap-configmap".into(), "routemap".into()],
        &[],
    );
    assert_eq!(proxy.wait_exit(PATIENCE), Some(64));
    assert!(
        proxy.log().join("\n").contains("NAMESPACE/NAME"),
        "{:?}",
        proxy.log()
    );
}

/// A ConfigMap source with no way to reach the API (no kubeconfig, not in a cluster) is a
/// deployment mistake: both binaries exit 64 with the reason, as for a malformed reference,
/// so a supervisor that stops on 64 does not restart them in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_source_without_a_kubernetes_client_exits_64() {
    let missing = std::env::temp_dir().join("stickyroute-no-such-kubeconfig");
    let env = [("KUBECONFIG", missing.to_str().unwrap())];
    let map = [
        "--routemap-configmap".to_owned(),
        "shop/routemap".to_owned(),
    ];
    let agent_args = [
        &[
            "--upstream".to_owned(),
            "127.0.0.1:9".to_owned(),
            "--track-all".to_owned(),
        ][..],
        &map[..],
    ]
    .concat();
    for (binary, args) in [
        ("stickyroute-proxy", &map[..]),
        ("stickyroute-agent", &agent_args[..]),
    ] {
        let process = stickyroute_tests::process::Process::start(binary, args, &env);
        assert_eq!(process.wait_exit(PATIENCE), Some(64), "{binary}");
        let log = process.log().join("\n");
        assert!(
            log.contains("invalid configuration") && log.contains("Kubernetes client"),
            "{binary}: {log}"
        );
    }
}
