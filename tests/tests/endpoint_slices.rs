//! `--member-service`: members' addresses and conditions from a Service's EndpointSlices,
//! watched by the real proxy through a kubeconfig pointing at the in-test API server
//! (`stickyroute_tests::kube_api`, the real list/watch wire protocol; no cluster runs here).
//! The members are test apps on their own loopback addresses, keyed by pod name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::kube_api::{ApiServer, SliceEndpoint};
use stickyroute_tests::proxy::Proxy;
use stickyroute_tests::{PATIENCE, eventually_async};

const NAMESPACE: &str = "shop";
const SERVICE: &str = "web";

/// Two pods, `web-0` (route www0) and `web-1` (www1), both on `port`; a map keyed by pod
/// name; a proxy following the Service's EndpointSlices.
struct Pods {
    api: ApiServer,
    apps: HashMap<&'static str, TestApp>,
    port: u16,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl Pods {
    async fn start(args: &[&str]) -> Self {
        let api = ApiServer::start().await;
        let web0 = TestApp::start("web-0", "127.0.0.12").await;
        let port = web0.addr().port();
        let web1 = TestApp::start_on(
            "web-1",
            SocketAddr::new("127.0.0.13".parse().unwrap(), port),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("routemap");
        std::fs::write(
            &map,
            format!("web-0 www0 port={port}\nweb-1 www1 port={port}\n"),
        )
        .unwrap();
        api.apply_endpoint_slice(
            NAMESPACE,
            "web-abcde",
            SERVICE,
            &[
                SliceEndpoint::ready("web-0", "127.0.0.12"),
                SliceEndpoint::ready("web-1", "127.0.0.13"),
            ],
        );
        let proxy = Proxy::builder(&map)
            .args(&["--member-service", &format!("{NAMESPACE}/{SERVICE}")])
            .args(args)
            .env("KUBECONFIG", &api.kubeconfig().display().to_string())
            .start_process();
        let pods = Self {
            api,
            apps: HashMap::from([("web-0", web0), ("web-1", web1)]),
            port,
            proxy,
            _dir: dir,
        };
        // Both members, each with an address: the start does not wait for the first list of
        // the slices, so the table may still be empty here (`all` of nothing is true).
        pods.wait_for("both pods routable", |m| {
            m.len() == 2 && m.iter().all(|m| m["address"].is_string())
        })
        .await;
        pods
    }

    /// The app that answered a request carrying `route`'s cookie (or none).
    async fn answer(&self, route: Option<&str>) -> (u16, String) {
        let mut call = get(self.proxy.addr, "/");
        if let Some(route) = route {
            call = call.header("cookie", &format!("balanceid=route.{route}"));
        }
        let reply = call.send().await;
        let app = if reply.status == 200 {
            reply.json()["app"].as_str().unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        (reply.status.as_u16(), app)
    }

    async fn members(&self) -> Vec<serde_json::Value> {
        let status = get(self.proxy.admin, "/status").send().await.json();
        status["members"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) {
        eventually_async(what, PATIENCE, || async {
            check(&self.members().await).then_some(())
        })
        .await;
    }

    fn slice(&self, endpoints: &[SliceEndpoint]) {
        self.api
            .apply_endpoint_slice(NAMESPACE, "web-abcde", SERVICE, endpoints);
    }
}

/// The member with `route`, or null while there is none (a wait then goes on waiting).
fn member<'a>(members: &'a [serde_json::Value], route: &str) -> &'a serde_json::Value {
    static NONE: serde_json::Value = serde_json::Value::Null;
    members
        .iter()
        .find(|m| m["route"] == route)
        .unwrap_or(&NONE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_that_still_serves_keeps_its_sessions_and_gets_no_new_ones() {
    let pods = Pods::start(&[]).await;
    assert_eq!(pods.answer(Some("www0")).await, (200, "web-0".to_owned()));
    let watched = pods.api.watches();
    assert!(
        watched.iter().any(|w| w
            .contains("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?")
            && w.contains("labelSelector=kubernetes.io%2Fservice-name%3Dweb")),
        "only the Service's slices, in its namespace: {watched:?}"
    );

    pods.slice(&[
        SliceEndpoint::terminating("web-0", "127.0.0.12"),
        SliceEndpoint::ready("web-1", "127.0.0.13"),
    ]);
    pods.wait_for("web-0 in drain", |m| {
        member(m, "www0")["terminating"] == true
    })
    .await;
    let www0 = member(&pods.members().await, "www0").clone();
    assert_eq!(www0["status"], "drain", "{www0}");
    let page = get(pods.proxy.admin, "/balancer-manager")
        .send()
        .await
        .text();
    assert!(page.contains("draining (terminating)"), "{page}");
    for i in 0..20 {
        assert_eq!(
            pods.answer(None).await,
            (200, "web-1".to_owned()),
            "new session {i}"
        );
        assert_eq!(
            pods.answer(Some("www0")).await,
            (200, "web-0".to_owned()),
            "session {i}"
        );
    }

    // No longer serving (its readiness fails): unusable, so its session fails over.
    pods.slice(&[
        SliceEndpoint::not_ready("web-0", "127.0.0.12"),
        SliceEndpoint::ready("web-1", "127.0.0.13"),
    ]);
    pods.wait_for("web-0 unusable", |m| member(m, "www0")["address"].is_null())
        .await;
    assert_eq!(pods.answer(Some("www0")).await, (200, "web-1".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_back_with_a_new_address_is_routed_within_a_second_of_its_slice() {
    let mut pods = Pods::start(&["--nofailover", "--retry", "100ms"]).await;
    // web-0 is rescheduled: the old pod goes, the new one comes up elsewhere.
    pods.apps.remove("web-0").unwrap().stop().await;
    pods.slice(&[SliceEndpoint::ready("web-1", "127.0.0.13")]);
    pods.wait_for("web-0 gone", |m| member(m, "www0")["address"].is_null())
        .await;
    assert_eq!(
        pods.answer(Some("www0")).await.0,
        503,
        "pinned, and its pod is gone"
    );
    let moved = TestApp::start_on(
        "web-0 (new)",
        SocketAddr::new("127.0.0.22".parse().unwrap(), pods.port),
    )
    .await;
    pods.slice(&[
        SliceEndpoint::ready("web-0", "127.0.0.22"),
        SliceEndpoint::ready("web-1", "127.0.0.13"),
    ]);
    let applied = Instant::now();
    let took = loop {
        if pods.answer(Some("www0")).await == (200, "web-0 (new)".to_owned()) {
            break applied.elapsed();
        }
        assert!(
            applied.elapsed() < PATIENCE,
            "never routed to the new address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("the new address was routed {took:?} after the EndpointSlice event");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_slice_or_an_api_error_keeps_the_last_good_view() {
    let pods = Pods::start(&[]).await;
    pods.api.delete_endpoint_slice(NAMESPACE, "web-abcde");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods.answer(Some("www0")).await, (200, "web-0".to_owned()));
    assert_eq!(pods.answer(Some("www1")).await, (200, "web-1".to_owned()));
    let members = pods.members().await;
    assert!(
        members.iter().all(|m| m["address"].is_string()),
        "{members:?}"
    );

    // The API refuses everything and the watch must re-list: still the same view.
    pods.api.forbid(true);
    pods.api.expire_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pods.answer(Some("www0")).await, (200, "web-0".to_owned()));
    let log = pods
        .proxy
        .process
        .log_lines_with("cannot follow the EndpointSlices");
    assert!(!log.is_empty(), "the API error is logged");

    // Back, with the slice recreated: followed again.
    pods.api.forbid(false);
    pods.slice(&[
        SliceEndpoint::terminating("web-0", "127.0.0.12"),
        SliceEndpoint::ready("web-1", "127.0.0.13"),
    ]);
    pods.wait_for("the recreated slice followed", |m| {
        member(m, "www0")["terminating"] == true
    })
    .await;
}
