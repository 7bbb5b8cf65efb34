//! `--overrides-file`: balancer-manager changes shared by every proxy given the same file,
//! surviving restarts, refused when they cannot be stored. Two real proxy processes on one
//! map, as two replicas on one host (or a shared volume) would run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stickyroute_tests::client::{Reply, call, get};
use stickyroute_tests::cluster::Cluster;
use stickyroute_tests::kube_api::{ApiServer, SliceEndpoint};
use stickyroute_tests::manager::{self, member, view};
use stickyroute_tests::proxy::{Proxy, ProxyBuilder};

/// POSTs a change to the member with `route`, with the proxy's nonce.
async fn change(admin: SocketAddr, route: &str, mut body: Value) -> Reply {
    body["nonce"] = view(admin).await["nonce"].clone();
    manager::change(admin, route, body).await
}

/// Waits until `route` shows `status` on `admin`, and says how long that took.
async fn until_status(admin: SocketAddr, route: &str, status: &str) -> Duration {
    let start = Instant::now();
    loop {
        let shown = view(admin).await;
        let now = member(&shown, route);
        if now["status"] == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{route} never became {status}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn replica(map: &Path, store: &Path) -> Proxy {
    Proxy::builder(map)
        .args(&["--overrides-file", &store.display().to_string()])
        .start_process()
}

/// The classic cluster's proxy and a second one, both given the same `--overrides-file`
/// (the directory is kept as long as the first value lives).
async fn two_replicas_sharing_a_file() -> (tempfile::TempDir, PathBuf, Cluster, Proxy) {
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("overrides.json");
    let store_flag = store.display().to_string();
    let c = Cluster::classic_process(&["--overrides-file", &store_flag]).await;
    let b = replica(&c.map, &store);
    b.wait_members(4).await;
    (shared, store, c, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_proxy_is_applied_by_the_other_and_survives_restarts() {
    let (_shared, store, c, b) = two_replicas_sharing_a_file().await;
    let a = c.proxy.admin;

    let drained = change(a, "www1", json!({"status": "drain"})).await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    let took = until_status(b.admin, "www1", "drain").await;
    println!("drain through one proxy applied by the other after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The other replica routes by it: www1's sessions stay, new sessions go elsewhere.
    for _ in 0..40 {
        let reply = get(b.addr, "/").send().await;
        assert_eq!(reply.status, 200);
        assert_ne!(reply.header("x-app").as_deref(), Some("www1"));
    }
    let sticky = get(b.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(sticky.header("x-app").as_deref(), Some("www1"));

    // Who set it and when, and that it is not in the map, on the replica that did not take it.
    let seen = view(b.admin).await;
    let www1 = member(&seen, "www1");
    assert_eq!(www1["override_by"], "127.0.0.1");
    assert!(www1["override_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(seen["overrides"]["store"], "file");
    assert_eq!(seen["overrides"]["version"], 1);
    let page = get(b.admin, "/balancer-manager").send().await.text();
    assert!(
        page.contains("set by 127.0.0.1 at ") && page.contains("commit it to the map, or reset"),
        "{page}"
    );

    // Both restarted: the change is still there.
    drop(b);
    let map = c.map.clone();
    let Cluster {
        dir, apps, proxy, ..
    } = c;
    drop(proxy);
    let a = replica(&map, &store);
    let b = replica(&map, &store);
    a.wait_members(4).await;
    b.wait_members(4).await;
    for p in [&a, &b] {
        assert_eq!(member(&view(p.admin).await, "www1")["status"], "drain");
    }

    // Reset through either clears it everywhere.
    let reset = change(b.admin, "www1", json!({"reset": true})).await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    let took = until_status(a.admin, "www1", "enabled").await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        member(&view(a.admin).await, "www1")["override_by"],
        Value::Null
    );
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(stored["overrides"], json!([]));
    drop((dir, apps));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_through_two_proxies_are_all_kept() {
    let (_shared, store, c, b) = two_replicas_sharing_a_file().await;
    let (na, nb) = (
        view(c.proxy.admin).await["nonce"].clone(),
        view(b.admin).await["nonce"].clone(),
    );
    // Twenty changes at once, alternating proxies, each to its own loadfactor of a member.
    let routes = ["www1", "www2", "www3", "www0"];
    let sends = (0..20).map(|i| {
        let (admin, nonce) = if i % 2 == 0 {
            (c.proxy.admin, na.clone())
        } else {
            (b.admin, nb.clone())
        };
        let route = routes[i % 4];
        async move {
            let reply = call(
                admin,
                Method::POST,
                &format!("/balancer-manager/api/members/{route}"),
            )
            .header("content-type", "application/json")
            .body(json!({"nonce": nonce, "loadfactor": 10 + i}).to_string())
            .send()
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    });
    futures_util::future::join_all(sends).await;
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(stored["version"], 20, "every change was written: {stored}");
    assert_eq!(stored["overrides"].as_array().unwrap().len(), 4);
    // Both proxies converge on the file's set.
    let expected: Vec<(String, u64)> = {
        let mut e: Vec<_> = stored["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["route"].as_str().unwrap().to_owned(),
                    o["loadfactor"].as_u64().unwrap(),
                )
            })
            .collect();
        e.sort();
        e
    };
    for admin in [c.proxy.admin, b.admin] {
        stickyroute_tests::eventually_async(
            "both proxies apply the file",
            Duration::from_secs(2),
            || async {
                let v = view(admin).await;
                let mut seen: Vec<(String, u64)> = v["members"]
                    .as_array()?
                    .iter()
                    .map(|m| {
                        (
                            m["route"].as_str().unwrap_or("").to_owned(),
                            m["loadfactor"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect();
                seen.sort();
                (seen == expected).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_refuses_the_change_and_a_bad_file_keeps_the_last_set() {
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("overrides.json");
    let store_flag = store.display().to_string();
    let c = Cluster::classic_process(&["--overrides-file", &store_flag]).await;
    let a = c.proxy.admin;
    assert_eq!(
        change(a, "www2", json!({"status": "drain"})).await.status,
        200
    );

    // A broken file: the drain stays, the error names the file and the line.
    std::fs::write(&store, "{\"version\": 9,\n  \"overrides\": [oops]\n}\n").unwrap();
    let error = stickyroute_tests::eventually_async(
        "the bad file reported",
        Duration::from_secs(5),
        || async {
            let v = view(a).await;
            v["overrides"]["last_error"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(error.contains("overrides.json: line 2 column"), "{error}");
    assert_eq!(member(&view(a).await, "www2")["status"], "drain");
    let page = get(a, "/balancer-manager").send().await.text();
    assert!(
        page.contains("the last good overrides stay applied"),
        "{page}"
    );
    // A change on top of a file it cannot read is refused, and the file left alone.
    let refused = change(a, "www3", json!({"status": "disabled"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("overrides.json"),
        "{}",
        refused.text()
    );
    assert_eq!(member(&view(a).await, "www3")["status"], "enabled");

    // The store's directory gone: the change fails visibly and changes nothing here.
    drop(shared);
    let refused = change(a, "www3", json!({"status": "disabled"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("the change was not made"),
        "{}",
        refused.text()
    );
    assert_eq!(member(&view(a).await, "www3")["status"], "enabled");
    assert_eq!(member(&view(a).await, "www2")["status"], "drain");
}

/// Two replicas keeping their overrides in a ConfigMap of the in-test API server (it speaks
/// the real list/watch protocol and the optimistic concurrency of `PUT`; no cluster runs
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_overrides_through_a_configmap_and_retry_conflicts() {
    let api = ApiServer::start().await;
    api.apply("shop", "routes-overrides", &[]);
    let c = Cluster::classic(&[]).await;
    let kubeconfig = api.kubeconfig().display().to_string();
    let replica = |object: &str| {
        Proxy::builder(&c.map)
            .args(&["--overrides-configmap", object])
            .env("KUBECONFIG", &kubeconfig)
            .start_process()
    };
    let a = replica("shop/routes-overrides");
    let b = replica("shop/routes-overrides");
    a.wait_members(4).await;
    b.wait_members(4).await;

    assert_eq!(
        change(a.admin, "www1", json!({"status": "drain"}))
            .await
            .status,
        200
    );
    let took = until_status(b.admin, "www1", "drain").await;
    println!("drain through one replica applied by the other after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        member(&view(b.admin).await, "www1")["override_by"],
        "127.0.0.1"
    );

    // Another writer gets in first twice: the change is made again on the fresh object,
    // and the earlier drain is not lost.
    api.conflict_next_puts(2);
    let reweighted = change(b.admin, "www2", json!({"loadfactor": 30})).await;
    assert_eq!(reweighted.status, 200, "{}", reweighted.text());
    assert_eq!(api.conflicts(), 2);
    let stored: Value = serde_json::from_str(
        &api.data("shop", "routes-overrides", "overrides.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored["version"], 2, "{stored}");
    assert_eq!(stored["overrides"].as_array().unwrap().len(), 2, "{stored}");
    let seen = view(b.admin).await;
    assert_eq!(seen["overrides"]["store"], "configmap");
    assert_eq!(seen["overrides"]["conflicts_retried"], 2);
    stickyroute_tests::eventually_async(
        "the reweight on the other replica",
        Duration::from_secs(2),
        || async { (member(&view(a.admin).await, "www2")["loadfactor"] == 30).then_some(()) },
    )
    .await;

    // Both restarted: still there.
    drop((a, b));
    let a = replica("shop/routes-overrides");
    let b = replica("shop/routes-overrides");
    a.wait_members(4).await;
    b.wait_members(4).await;
    for p in [&a, &b] {
        stickyroute_tests::eventually_async(
            "the drain after a restart",
            Duration::from_secs(5),
            || async { (member(&view(p.admin).await, "www1")["status"] == "drain").then_some(()) },
        )
        .await;
    }

    // A ConfigMap edited into something invalid: reported, the last set stays.
    api.apply(
        "shop",
        "routes-overrides",
        &[("overrides.json", "{\"version\": 3, \"overrides\": 7}")],
    );
    let error = stickyroute_tests::eventually_async(
        "the bad ConfigMap reported",
        Duration::from_secs(5),
        || async {
            view(a.admin).await["overrides"]["last_error"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    assert!(
        error.contains("configmap:shop/routes-overrides#overrides.json: line 1"),
        "{error}"
    );
    assert_eq!(member(&view(a.admin).await, "www1")["status"], "drain");
    // Reset (after fixing the ConfigMap, here by emptying it) clears it everywhere.
    api.apply("shop", "routes-overrides", &[]);
    until_status(a.admin, "www1", "enabled").await;
    until_status(b.admin, "www1", "enabled").await;

    // A ConfigMap that does not exist: the change is refused and says what to do.
    let lost = replica("shop/no-such-overrides");
    lost.wait_members(4).await;
    let refused = change(lost.admin, "www3", json!({"status": "disabled"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("does not exist; create it"),
        "{}",
        refused.text()
    );
    assert_eq!(member(&view(lost.admin).await, "www3")["status"], "enabled");
}

/// The replicas as `admin` lists them, once there are `count` and every one answers and
/// applies overrides version `version`.
async fn until_replicas_current(admin: SocketAddr, count: usize, version: u64) -> Value {
    stickyroute_tests::eventually_async(
        "every replica listed and current",
        Duration::from_secs(8),
        || async {
            let replicas = view(admin).await["replicas"].clone();
            let list = replicas["replicas"].as_array()?;
            (list.len() == count
                && list.iter().all(|r| {
                    r["error"].is_null()
                        && r["map_current"] == true
                        && r["overrides_current"] == true
                        && r["overrides_version"] == version
                }))
            .then_some(replicas)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_proxies_sharing_the_file_and_whether_each_applied_the_latest() {
    let (_shared, store, c, b) = two_replicas_sharing_a_file().await;
    let a = c.proxy.admin;

    let replicas = until_replicas_current(a, 2, 0).await;
    assert_eq!(
        replicas["source"],
        format!("file:{}.replicas", store.display())
    );
    let list = replicas["replicas"].as_array().unwrap();
    let this: Vec<_> = list.iter().filter(|r| r["this"] == true).collect();
    assert_eq!(this.len(), 1, "{replicas}");
    assert_eq!(this[0]["admin"], a.to_string());
    assert!(list.iter().any(|r| r["admin"] == b.admin.to_string()));
    let hash = view(a).await["map"]["hash"].clone();
    assert_eq!(replicas["latest_map_hash"], hash);

    // A change: both report its version.
    assert_eq!(
        change(a, "www1", json!({"status": "drain"})).await.status,
        200
    );
    until_replicas_current(a, 2, 1).await;
    until_replicas_current(b.admin, 2, 1).await;

    // A replica that stops answering (stopped, as a hung process would be) shows as
    // unreachable, with the reason; the rest stay current.
    b.process.as_process().signal("STOP");
    assert_eq!(
        change(a, "www2", json!({"loadfactor": 40})).await.status,
        200
    );
    let replicas = stickyroute_tests::eventually_async(
        "the stopped replica unreachable",
        Duration::from_secs(8),
        || async {
            let replicas = view(a).await["replicas"].clone();
            let stopped = replicas["replicas"]
                .as_array()?
                .iter()
                .find(|r| r["admin"] == b.admin.to_string())?
                .clone();
            stopped["error"].is_string().then_some(replicas)
        },
    )
    .await;
    let stopped = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["admin"] == b.admin.to_string())
        .unwrap();
    assert!(
        stopped["error"]
            .as_str()
            .unwrap()
            .contains(&b.admin.to_string()),
        "{stopped}"
    );
    assert!(stopped["unreachable_since_ms"].as_u64().is_some());
    assert_eq!(stopped["overrides_current"], Value::Null);
    assert_eq!(replicas["latest_overrides_version"], 2);
    let page = get(a, "/balancer-manager").send().await.text();
    assert!(page.contains("<h2>Replicas</h2>"), "{page}");
    assert!(page.contains("(this one)"), "{page}");
    assert!(page.contains("unreachable since"), "{page}");
    assert!(page.contains("version 2: latest"), "{page}");
    // Resumed, it catches up.
    b.process.as_process().signal("CONT");
    until_replicas_current(a, 2, 2).await;

    // Stopped cleanly, it takes itself off the list.
    b.process.as_process().signal("TERM");
    stickyroute_tests::eventually_async("the replica to exit", Duration::from_secs(10), || async {
        b.process.as_process().try_status().ok().flatten()
    })
    .await;
    let replicas = until_replicas_current(a, 1, 2).await;
    assert_eq!(replicas["replicas"][0]["admin"], a.to_string());
    let registry: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.replicas", store.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        registry["replicas"].as_object().unwrap().len(),
        1,
        "{registry}"
    );
    // A registry removed by hand is written again by the next heartbeat.
    std::fs::remove_file(format!("{}.replicas", store.display())).unwrap();
    stickyroute_tests::eventually_async(
        "the registry written again",
        Duration::from_secs(8),
        || async { std::fs::metadata(format!("{}.replicas", store.display())).ok() },
    )
    .await;
    until_replicas_current(a, 1, 2).await;
}

/// A free port on 127.0.0.1, for listeners that must share one port on several addresses
/// (the replicas of a Service all have their admin listener on the same port).
fn shared_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--proxy-service`: the replicas are the proxies' Service's endpoints (EndpointSlices of
/// the in-test API server), each read on the same admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_the_proxy_services_endpoints() {
    let api = ApiServer::start().await;
    api.apply("shop", "routes-overrides", &[]);
    let port = shared_port();
    api.apply_endpoint_slice(
        "shop",
        "proxy-x1",
        "proxy",
        &[
            SliceEndpoint::ready("proxy-a", "127.0.0.41"),
            SliceEndpoint::ready("proxy-b", "127.0.0.42"),
        ],
    );
    let c = Cluster::classic(&[]).await;
    let kubeconfig = api.kubeconfig().display().to_string();
    let replica = |ip: &str| {
        ProxyBuilder::new(
            "stickyroute-proxy",
            &[
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                &format!("{ip}:{port}"),
                "--routemap",
                &c.map.display().to_string(),
                "--overrides-configmap",
                "shop/routes-overrides",
                "--proxy-service",
                "shop/proxy",
            ],
        )
        .env("KUBECONFIG", &kubeconfig)
        .start_process()
    };
    let a = replica("127.0.0.41");
    let b = replica("127.0.0.42");
    a.wait_members(4).await;
    b.wait_members(4).await;
    let replicas = until_replicas_current(a.admin, 2, 0).await;
    assert_eq!(replicas["source"], "service:shop/proxy");
    let names: Vec<_> = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["this"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("proxy-a", true), ("proxy-b", false)]);

    assert_eq!(
        change(b.admin, "www3", json!({"status": "disabled"}))
            .await
            .status,
        200
    );
    until_replicas_current(a.admin, 2, 1).await;

    // A third pod whose proxy does not answer: listed as unreachable.
    api.apply_endpoint_slice(
        "shop",
        "proxy-x1",
        "proxy",
        &[
            SliceEndpoint::ready("proxy-a", "127.0.0.41"),
            SliceEndpoint::ready("proxy-b", "127.0.0.42"),
            SliceEndpoint::ready("proxy-c", "127.0.0.43"),
        ],
    );
    let gone = stickyroute_tests::eventually_async(
        "the third replica listed",
        Duration::from_secs(8),
        || async {
            let replicas = view(b.admin).await["replicas"].clone();
            replicas["replicas"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "proxy-c" && r["error"].is_string())
                .cloned()
        },
    )
    .await;
    assert_eq!(gone["admin"], format!("127.0.0.43:{port}"));
    assert_eq!(gone["map_current"], Value::Null);
}
