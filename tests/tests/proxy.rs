//! `stickyroute-proxy`, the real binary, in front of real backends on 127.0.0.2 … 127.0.0.5,
//! following a real route map file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stickyroute_tests::PATIENCE;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{Protocol, connect, get};
use stickyroute_tests::cluster::{Cluster, counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_cookie_routes_to_its_member_every_time() {
    let c = Cluster::classic(&["--nofailover"]).await;
    for _ in 0..10 {
        assert_eq!(
            c.answer(Some("balanceid=route.www1")).await,
            (200, Some("www1".into()))
        );
    }
    assert_eq!(
        c.answer(Some("SESSION=abc; balanceid=route.www3; theme=dark"))
            .await
            .1
            .as_deref(),
        Some("www3")
    );
    assert_eq!(
        c.answer(Some("balanceid=anything.with.dots.www0"))
            .await
            .1
            .as_deref(),
        Some("www0"),
        "the last dot counts"
    );
    // One cookie per header line, as HTTP/2 clients send them.
    let split = get(c.proxy.addr, "/")
        .header("cookie", "SESSION=abc")
        .header("cookie", "balanceid=route.www2")
        .send()
        .await;
    assert_eq!(split.header("x-app").as_deref(), Some("www2"));
    let h2 = get(c.proxy.addr, "/")
        .header("cookie", "SESSION=abc")
        .header("cookie", "balanceid=route.www2")
        .protocol(Protocol::Http2)
        .send()
        .await;
    assert_eq!(h2.header("x-app").as_deref(), Some("www2"));
    assert_eq!(h2.json()["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_follow_the_seed_weights_exactly() {
    let c = Cluster::classic(&[]).await;
    assert_eq!(
        c.distribution(200).await,
        counts(&[("www1", 60), ("www2", 60), ("www3", 60), ("www0", 20)])
    );
    // Malformed values and unknown routes are balanced like new sessions (as Apache).
    for cookie in [
        "balanceid=www1",
        "balanceid=route.",
        "balanceid=route.nosuch",
    ] {
        assert_eq!(c.answer(Some(cookie)).await.0, 200);
    }
    let metrics = get(c.proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains("stickyroute_proxy_sticky_total{outcome=\"new\"} 200"),
        "{metrics}"
    );
    assert!(metrics.contains("stickyroute_proxy_sticky_total{outcome=\"malformed\"} 2"));
    assert!(metrics.contains("stickyroute_proxy_sticky_total{outcome=\"unknown_route\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_can_be_refused() {
    let c = Cluster::classic(&["--unknown-route", "reject"]).await;
    assert_eq!(c.answer(Some("balanceid=route.nosuch")).await.0, 503);
    assert_eq!(c.answer(Some("balanceid=route.www1")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_parameters_win_over_the_cookie_and_the_affinity_header_works() {
    let c = Cluster::classic(&[
        "--stickysession",
        "balanceid|jsessionid",
        "--affinity-header",
        "X-Sticky",
    ])
    .await;
    let via = |path: &'static str| {
        let addr = c.proxy.addr;
        async move {
            get(addr, path)
                .header("cookie", "balanceid=route.www1")
                .send()
                .await
                .header("x-app")
        }
    };
    assert_eq!(
        via("/cart;jsessionid=ABC123.www2").await.as_deref(),
        Some("www2")
    );
    assert_eq!(
        via("/cart?x=1&jsessionid=ABC123.www3").await.as_deref(),
        Some("www3")
    );
    assert_eq!(via("/cart").await.as_deref(), Some("www1"));
    let header = get(c.proxy.addr, "/")
        .header("x-sticky", "route.www0")
        .send()
        .await;
    assert_eq!(header.header("x-app").as_deref(), Some("www0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nofailover_gives_503_to_the_dead_members_sessions_only_and_recovers_after_retry() {
    let mut c = Cluster::classic(&["--nofailover", "--retry", "1s"]).await;
    let www2 = c.apps.remove("www2").unwrap();
    let addr = www2.addr();
    www2.stop().await;
    let failed = Instant::now();
    let dead = get(c.proxy.addr, "/")
        .header("cookie", "balanceid=route.www2")
        .send()
        .await;
    assert_eq!(dead.status, 503);
    assert!(dead.header("retry-after").is_some());
    assert!(dead.text().contains("www2"));
    assert_eq!(
        c.answer(Some("balanceid=route.www2")).await.0,
        503,
        "still in error: refused without trying"
    );
    assert_eq!(
        c.answer(Some("balanceid=route.www1")).await,
        (200, Some("www1".into())),
        "others unaffected"
    );
    for _ in 0..20 {
        let (status, app) = c.answer(None).await;
        assert_eq!(status, 200);
        assert_ne!(
            app.as_deref(),
            Some("www2"),
            "new sessions avoid the dead member"
        );
    }
    c.apps.insert("www2", TestApp::start_on("www2", addr).await);
    // Asked until it answers, instead of sleeping past the retry time: each request
    // before then is refused without trying, and the first 200 must not come before it.
    let back = stickyroute_tests::eventually_async("www2 back after --retry", PATIENCE, || {
        let c = &c;
        async move {
            let answer = c.answer(Some("balanceid=route.www2")).await;
            (answer.0 == 200).then_some(answer)
        }
    })
    .await;
    assert_eq!(back, (200, Some("www2".into())), "back after --retry");
    assert!(
        failed.elapsed() >= Duration::from_millis(950),
        "back {:?} after the failure, before the 1 s --retry",
        failed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nofailover_a_dead_members_session_fails_over() {
    let mut c = Cluster::classic(&[]).await;
    c.apps.remove("www2").unwrap().stop().await;
    for _ in 0..5 {
        let (status, app) = c.answer(Some("balanceid=route.www2")).await;
        assert_eq!(status, 200);
        assert_ne!(app.as_deref(), Some("www2"));
    }
    let metrics = get(c.proxy.admin, "/metrics").send().await.text();
    assert!(metrics.contains("stickyroute_proxy_sticky_total{outcome=\"failover\"}"));
    assert!(
        !metrics.contains("stickyroute_proxy_sticky_total{outcome=\"failover\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_elsewhere_only_when_the_connection_failed() {
    let mut c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    c.apps.remove("www1").unwrap().stop().await;
    for _ in 0..4 {
        let reply = stickyroute_tests::client::call(c.proxy.addr, http::Method::POST, "/upload")
            .body("0123456789")
            .send()
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.text(),
            "10",
            "the whole body reached the other member"
        );
    }
    let metrics = get(c.proxy.admin, "/metrics").send().await.text();
    assert!(
        !metrics.contains("stickyroute_proxy_retries_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_disabled_and_standby_members() {
    let c = Cluster::classic(&["--nofailover"]).await;
    c.write_map(&[
        ("www1", "loadfactor=60 status=drain"),
        ("www2", "loadfactor=60 status=disabled"),
        ("www3", "loadfactor=60 status=standby"),
        ("www0", "loadfactor=20"),
    ]);
    c.wait_swaps(2).await;
    assert_eq!(
        c.answer(Some("balanceid=route.www1")).await,
        (200, Some("www1".into())),
        "drain keeps its sessions"
    );
    assert_eq!(
        c.answer(Some("balanceid=route.www2")).await.0,
        503,
        "disabled + nofailover"
    );
    assert_eq!(
        c.distribution(20).await,
        counts(&[("www0", 20)]),
        "only the enabled member takes new sessions"
    );
    c.write_map(&[
        ("www1", "status=drain"),
        ("www2", "status=disabled"),
        ("www3", "status=standby"),
        ("www0", "status=disabled"),
    ]);
    c.wait_swaps(3).await;
    assert_eq!(
        c.distribution(5).await,
        counts(&[("www3", 5)]),
        "standby when no regular member is usable"
    );
    let status = c.status().await;
    let www1 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["route"] == "www1")
        .unwrap();
    assert_eq!(www1["status"], "drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_down_gives_503_and_readyz_says_so() {
    let mut c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    assert_eq!(get(c.proxy.admin, "/readyz").send().await.status, 200);
    c.apps.clear();
    let reply = get(c.proxy.addr, "/").send().await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    let readyz = get(c.proxy.admin, "/readyz").send().await;
    assert_eq!(readyz.status, 503);
    assert!(readyz.text().contains("no member is usable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failonstatus_puts_a_member_in_error() {
    let c = Cluster::start(
        &[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)],
        &["--failonstatus", "503", "--nofailover"],
    )
    .await;
    let reply = get(c.proxy.addr, "/status/503")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "status from www1\n",
        "the member's response is passed on"
    );
    let refused = get(c.proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert!(
        refused.text().contains("unavailable"),
        "now in error: {}",
        refused.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_takes_new_sessions_within_a_second_without_restart() {
    let mut c =
        Cluster::start_process(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    let pid = c.proxy.process.pid();
    let www5 = TestApp::start("www5", "127.0.0.6").await;
    c.apps.insert("www5", www5);
    let added = Instant::now();
    c.write_map(&[("www1", ""), ("www2", ""), ("www5", "loadfactor=2")]);
    loop {
        if c.answer(None).await.1.as_deref() == Some("www5") {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "the new member got no session within a second"
        );
    }
    assert_eq!(c.proxy.process.pid(), pid);
    c.proxy
        .process
        .eventually_logs("the swap with its diff", |l| {
            l.contains("member table swapped: added [www5]")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_finishes_its_request_and_gets_no_new_ones() {
    let c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    let addr = c.proxy.addr;
    // 1.2 s: the map change below is in place within about a quarter of that, so the
    // request is still in flight when its member leaves the map.
    let slow = tokio::spawn(async move {
        get(addr, "/slow?ms=1200")
            .header("cookie", "balanceid=route.www2")
            .send()
            .await
    });
    stickyroute_tests::eventually("the slow request to reach www2", PATIENCE, || {
        (c.apps["www2"].requests() == 1).then_some(())
    })
    .await;
    c.write_map(&[("www1", "")]);
    c.wait_swaps(2).await;
    let before = c.apps["www2"].requests();
    assert_eq!(c.distribution(10).await, counts(&[("www1", 10)]));
    assert_eq!(
        c.answer(Some("balanceid=route.www2")).await.1.as_deref(),
        Some("www1"),
        "unknown route now: balanced"
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status.as_u16(), slow.text()),
        (200, "slow done by www2\n".to_owned())
    );
    assert_eq!(
        c.apps["www2"].requests(),
        before,
        "nothing new reached the removed member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_loadfactor_changes_the_distribution() {
    let c = Cluster::start(&[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)], &[]).await;
    assert_eq!(
        c.distribution(20).await,
        counts(&[("www1", 10), ("www2", 10)])
    );
    c.write_map(&[("www1", "loadfactor=3"), ("www2", "loadfactor=1")]);
    c.wait_swaps(2).await;
    let after = c.distribution(40).await;
    assert!((29..=31).contains(&after["www1"]), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_map_changes_under_load_lose_no_request() {
    let c = Arc::new(
        Cluster::start(
            &[
                ("www1", "127.0.0.2", 1),
                ("www2", "127.0.0.3", 1),
                ("www3", "127.0.0.4", 1),
            ],
            // What is under test is the table swap, not the debounce: each write is one
            // rename, so no quiet time is needed before reading it, and a shorter one
            // takes 200 swaps in less time (the read itself still settles for 30 ms).
            &["--routemap-debounce", "1ms"],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (addr, stop, ok, failed) = (c.proxy.addr, stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let cookie = ["balanceid=route.www1", "balanceid=route.www2", ""][i % 3];
            while !stop.load(Ordering::Relaxed) {
                let mut call = get(addr, "/");
                if !cookie.is_empty() {
                    call = call.header("cookie", cookie);
                }
                match call.try_send().await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for change in 0..200u64 {
        // Every write differs from the one before it, so each is a real swap.
        let weight = change % 5 + 2;
        if change % 2 == 0 {
            c.write_map(&[
                ("www1", &format!("loadfactor={weight}")),
                ("www2", ""),
                ("www3", ""),
            ]);
        } else {
            c.write_map(&[("www1", ""), ("www2", &format!("loadfactor={weight}"))]);
        }
        c.wait_swaps(change + 2).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 1000, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during 200 table swaps",
        ok + failed
    );
    assert!(
        c.status().await["balancer"]["table_swaps"]
            .as_u64()
            .unwrap()
            >= 201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_sets_forwarded_headers_at_the_edge_and_keeps_host() {
    let c = Cluster::classic(&[]).await;
    let seen = get(c.proxy.addr, "/")
        .host("shop.example")
        .header("cookie", "balanceid=route.www1")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .from("127.0.0.21")
        .send()
        .await
        .json();
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["x_forwarded_for"], "127.0.0.21");
    assert_eq!(
        seen["x_forwarded_proto"], "http",
        "clients cannot claim https at the edge"
    );
    assert_eq!(seen["x_forwarded_host"], "shop.example");
    assert_eq!(seen["x_hop"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_on_its_member() {
    let c = Cluster::classic(&[]).await;
    let before = c.apps["www3"].requests();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            c.proxy.addr
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", "balanceid=route.www3".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        c.apps["www3"].requests(),
        before + 1,
        "the handshake went to the sticky member"
    );
    stickyroute_tests::client::assert_echoes(&mut ws, &["one", "two"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_the_proxy_in_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let c = Cluster::start_process(&[("www1", "127.0.0.2", 1)], &[]).await;
    let baseline = c.proxy.process.rss_kib();
    let download = get(c.proxy.addr, &format!("/download?bytes={SIZE}")).send();
    let reply = download.await;
    assert_eq!(reply.body.len() as u64, SIZE);
    drop(reply);
    let upload = stickyroute_tests::client::call(c.proxy.addr, http::Method::POST, "/upload")
        .body(vec![b'u'; SIZE as usize])
        .send()
        .await;
    assert_eq!(upload.text(), SIZE.to_string());
    let grown = c.proxy.process.rss_kib().saturating_sub(baseline);
    assert!(
        grown < 48 * 1024,
        "proxy RSS grew by {grown} KiB moving 2 x 100 MiB"
    );
    let status = c.status().await;
    assert!(status["members"][0]["bytes_out"].as_u64().unwrap() >= SIZE);
    assert!(status["members"][0]["bytes_in"].as_u64().unwrap() >= SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_pass_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(&[("www1", "127.0.0.2", 1)], &[]).await;
    let download = get(c.proxy.addr, "/download?bytes=300000&chunked=1")
        .send()
        .await;
    assert_eq!(download.status, 200);
    assert_eq!(download.body.len(), 300_000);

    let mut upload = connect(c.proxy.addr, None).await.unwrap();
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    upload.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n11"),
        "the app counted 11 bytes: {answer}"
    );
}

/// An upstream that refuses an upload with 413 at once and never reads it (nor closes):
/// the client gets the 413 while it is still sending, instead of a 504 once the upload
/// is stuck in full socket buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_was_read_reaches_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let refusal = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 10\r\n\r\ntoo large\n";
        stream.write_all(refusal.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    std::fs::write(&map, format!("127.0.0.3 www1 port={port}\n")).unwrap();
    let proxy = stickyroute_tests::proxy::Proxy::builder(&map)
        .args(&["--response-timeout", "30s"])
        .start();
    proxy.process.wait_ready(proxy.admin).await;

    let (mut read, mut write) = connect(proxy.addr, None).await.unwrap().into_split();
    let sender = tokio::spawn(async move {
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n";
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 1024 * 1024];
        for _ in 0..100 {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut head = [0u8; 12];
    tokio::time::timeout(PATIENCE, read.read_exact(&mut head))
        .await
        .expect("an answer while the upload was still going")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(
        &[("www1", "127.0.0.2", 1)],
        &["--header-read-timeout", "500ms"],
    )
    .await;
    let mut stream = connect(c.proxy.addr, None).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the proxy closed the connection");
    assert!(matches!(read, Ok(_) | Err(_)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish() {
    let c = Cluster::start_process(&[("www1", "127.0.0.2", 1)], &["--drain-delay", "300ms"]).await;
    let addr = c.proxy.addr;
    // The request is still in flight 700 ms after the 300 ms drain delay has ended.
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=1000").send().await });
    stickyroute_tests::eventually("the slow request to reach the member", PATIENCE, || {
        (c.apps["www1"].requests() == 1).then_some(())
    })
    .await;
    c.proxy.process.signal("TERM");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(c.proxy.process.wait_exit(PATIENCE), Some(0));
    assert!(connect(addr, None).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_members_and_the_map() {
    let c = Cluster::classic(&["--nofailover"]).await;
    c.answer(Some("balanceid=route.www1")).await;
    let status = c.status().await;
    assert_eq!(status["balancer"]["stickysession"], "balanceid");
    assert_eq!(status["balancer"]["nofailover"], true);
    assert_eq!(status["balancer"]["lbmethod"], "byrequests");
    assert_eq!(status["map"]["generation"], 1);
    let members = status["members"].as_array().unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m["route"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["www1", "www2", "www3", "www0"]
    );
    assert_eq!(members[0]["sticky_hits"], 1);
    assert_eq!(members[0]["loadfactor"], 60);
    assert_eq!(members[0]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_member_out_and_back() {
    let mut c = Cluster::start(
        &[("www1", "127.0.0.2", 1), ("www2", "127.0.0.3", 1)],
        &[
            "--health-path",
            "/",
            "--health-interval",
            "100ms",
            "--health-fall",
            "2",
            "--health-rise",
            "2",
            "--nofailover",
        ],
    )
    .await;
    let addr = c.apps["www2"].addr();
    c.apps.remove("www2").unwrap().stop().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = c.status().await;
        if status["members"][1]["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.distribution(6).await, counts(&[("www1", 6)]));
    c.apps.insert("www2", TestApp::start_on("www2", addr).await);
    let deadline = Instant::now() + PATIENCE;
    while c.answer(Some("balanceid=route.www2")).await.0 != 200 {
        assert!(Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn check_config_validates_flags_file_and_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    std::fs::write(&map, "127.0.0.2 www1 loadfactor=60\n").unwrap();
    let config = dir.path().join("proxy.json");
    std::fs::write(
        &config,
        format!(r#"{{"routemap": "{}", "nofailover": true}}"#, map.display()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(stickyroute_tests::process::binary("stickyroute-proxy"))
                .args(args)
                .output()
                .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 members"), "{text}");
    std::fs::write(&config, r#"{"routemap": "/m", "stickysesion": "x"}"#).unwrap();
    let (code, text) = run(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, Some(64));
    assert!(
        text.contains("unknown key \"stickysesion\" (did you mean \"stickysession\"?)"),
        "{text}"
    );
    std::fs::write(&map, "127.0.0.2 www.1\n").unwrap();
    let (code, text) = run(&["--routemap", map.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, Some(64));
    assert!(text.contains(":1: route \"www.1\""), "{text}");
    // A typo in the map's path fails the check, although a running proxy waits for it.
    let missing = dir.path().join("routemapp");
    let (code, text) = run(&["--routemap", missing.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("routemapp"), "{text}");
}

#[test]
fn an_invalid_value_is_reported_where_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.json");
    std::fs::write(&config, r#"{"routemap": "/m", "retry": "soon"}"#).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out =
            std::process::Command::new(stickyroute_tests::process::binary("stickyroute-proxy"))
                .args(args)
                .env_clear()
                .envs(env.iter().copied())
                .output()
                .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = config.to_str().unwrap();
    let (code, text) = run(&["--config", file, "--check-config"], &[]);
    assert_eq!(code, Some(64));
    assert!(
        text.contains(&format!("{file} key \"retry\": \"soon\"")),
        "{text}"
    );
    let (code, text) = run(
        &["--routemap", "/m", "--check-config"],
        &[("STICKYROUTE_RETRY", "soon")],
    );
    assert_eq!(code, Some(64));
    assert!(
        text.contains("environment variable STICKYROUTE_RETRY: \"soon\""),
        "{text}"
    );
    // The environment wins over the file, and a flag over both.
    std::fs::write(&config, r#"{"routemap": "/m", "retry": "soon"}"#).unwrap();
    let (code, text) = run(
        &["--config", file, "--check-config", "--retry", "5s"],
        &[("STICKYROUTE_RETRY", "also soon")],
    );
    assert_eq!(code, Some(64), "the file's value is still checked: {text}");
    let (code, text) = run(
        &["--routemap", "/m", "--check-config", "--retry", "soon"],
        &[],
    );
    assert_eq!(code, Some(2), "a bad flag is a usage error: {text}");
    assert!(text.contains("--retry"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_the_same_port_fails_instead_of_sharing_traffic() {
    let c = Cluster::start(&[("www1", "127.0.0.2", 1)], &[]).await;
    let port = c.proxy.addr.port().to_string();
    let second = stickyroute_tests::process::Process::start(
        "stickyroute-proxy",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--routemap".into(),
            c.map.display().to_string(),
        ],
        &[],
    );
    assert_eq!(second.wait_exit(PATIENCE), Some(1));
    assert!(
        second
            .log()
            .join("\n")
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{:?}",
        second.log()
    );
    assert_eq!(
        c.answer(None).await.0,
        200,
        "the first proxy keeps all its traffic"
    );
}

/// `--response-timeout` counts from the last upload bytes that moved, as Apache's and
/// nginx's inactivity timeouts do: an upload that takes longer than the timeout but keeps
/// moving reaches the app whole, and one that stalls ends with the client's 408 after the
/// `--idle-timeout`. The two uploads run side by side on their own connections, so the
/// test takes as long as the slow one, not as long as both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_outlives_the_response_timeout_and_a_stalled_one_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(
        &[("www1", "127.0.0.2", 1)],
        &["--response-timeout", "1s", "--idle-timeout", "1s"],
    )
    .await;
    let addr = c.proxy.addr;

    // Six bytes, 300 ms apart: 1.8 s in all, well past the 1 s timeout, while no gap
    // comes near it.
    let slow = async move {
        let head =
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n";
        let mut slow = connect(addr, None).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            slow.write_all(b"u").await.unwrap();
        }
        let mut answer = String::new();
        slow.read_to_string(&mut answer).await.unwrap();
        assert!(
            started.elapsed() > Duration::from_millis(1500),
            "the upload took 1.8 s"
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n6"),
            "the app counted 6 bytes: {answer}"
        );
    };

    let stalled = async move {
        let head =
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
        let mut stalled = connect(addr, None).await.unwrap();
        stalled.write_all(head.as_bytes()).await.unwrap();
        stalled.write_all(b"uuu").await.unwrap();
        let started = Instant::now();
        let mut answer = vec![0u8; 12];
        tokio::time::timeout(PATIENCE, stalled.read_exact(&mut answer))
            .await
            .expect("an answer while the upload is stalled")
            .unwrap();
        assert_eq!(
            &answer, b"HTTP/1.1 408",
            "the client's stall, not the member's"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "408 after the 1 s idle timeout, not {waited:?}"
        );
    };

    tokio::join!(slow, stalled);
    let status = c.status().await;
    assert_eq!(status["members"][0]["errors"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_routing_settings_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = stickyroute_tests::app::TestApp::start("www1", "127.0.0.2").await;
    let map = stickyroute_tests::proxy::write_map(dir.path(), &[("www1", app.addr())]);
    let config = dir.path().join("proxy.json");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(r#"{{"routemap": "{}"{extra}}}"#, map.display()),
        )
        .unwrap()
    };
    write_config("");
    let proxy =
        stickyroute_tests::proxy::Proxy::builder_with_map(&["--config", config.to_str().unwrap()])
            .start_process();
    proxy.wait_members(1).await;
    let balancer = |status: serde_json::Value| status["balancer"].clone();
    let before = balancer(get(proxy.admin, "/status").send().await.json());
    assert_eq!(before["nofailover"], false);
    write_config(r#", "nofailover": true, "retry": "7s", "max_headers": 50"#);
    proxy.process.signal("HUP");
    proxy
        .process
        .eventually_logs("the restart warning", |l| {
            l.contains("need a restart") && l.contains("max_headers=50")
        })
        .await;
    let after = balancer(get(proxy.admin, "/status").send().await.json());
    assert_eq!(after["nofailover"], true, "{after}");
    assert_eq!(after["retry_seconds"], 7, "{after}");
    let applied = proxy.process.log_lines_with("reload: applied");
    assert!(
        applied
            .iter()
            .any(|l| l.contains("nofailover=true") && l.contains("retry=7s")),
        "{applied:?}"
    );
    // A broken file changes nothing, and the proxy keeps serving.
    write_config(r#", "retry": "soon""#);
    proxy.process.signal("HUP");
    proxy
        .process
        .eventually_logs("the refusal", |l| {
            l.contains("nothing changed") && l.contains("\"soon\"")
        })
        .await;
    assert_eq!(
        balancer(get(proxy.admin, "/status").send().await.json())["retry_seconds"],
        7
    );
    assert_eq!(get(proxy.addr, "/").send().await.status, 200);
}
