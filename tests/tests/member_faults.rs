//! What a member (or an agent's admin listener) can get wrong: a body that stops in the
//! middle, a `/status` that never ends, bytes after a complete response, a refused
//! connection. Each stays the member's problem: it is cut off, counted against that member
//! only, and never reaches another client. Scripted backends on their own 127.0.0.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{call, get};
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::{self, RawBackend};
use stickyroute_tests::{PATIENCE, eventually_async};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn proxy(dir: &tempfile::TempDir, members: &[(&str, SocketAddr)], args: &[&str]) -> Proxy {
    let map = write_map(dir.path(), members);
    Proxy::builder(&map).args(args).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stalls_in_the_middle_of_a_body_is_cut_off_after_the_idle_timeout() {
    let backend = RawBackend::start("127.0.0.2", |mut conn| async move {
        conn.read_head().await;
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&dir, &[("www1", backend.addr())], &["--idle-timeout", "1s"]);
    proxy.wait_members(1).await;
    let started = std::time::Instant::now();
    let answer = raw::exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        PATIENCE,
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("\r\n\r\n0123456789"),
        "the head and the bytes that came, then the close: {text:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let member = proxy.member("www1").await;
    assert_eq!(member["busy"], 0, "{member}");
    assert_eq!(member["errors"], 1, "the member's fault: {member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_agent_does_not_freeze_the_other_agents_reports() {
    let www1 = TestApp::start("www1", "127.0.0.2").await;
    let www2 = TestApp::start("www2", "127.0.0.3").await;
    // www1's agent answers /status with a head and then nothing; www2's reports a map
    // hash that the test changes.
    let stalled = RawBackend::start("127.0.0.2", |mut conn| async move {
        conn.read_head().await;
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"map\":")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let port = stalled.addr().port();
    let second = Arc::new(AtomicBool::new(false));
    let flag = second.clone();
    let _reporting =
        RawBackend::agent_status(SocketAddr::from(([127, 0, 0, 3], port)), move || {
            if flag.load(Ordering::SeqCst) {
                "b"
            } else {
                "a"
            }
            .repeat(64)
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = port.to_string();
    let proxy = proxy(
        &dir,
        &[("www1", www1.addr()), ("www2", www2.addr())],
        &[
            "--agent-admin-port",
            &port,
            "--agent-poll-interval",
            "200ms",
        ],
    );
    proxy.wait_members(2).await;
    let agent_hash = |route: &'static str| {
        let proxy = &proxy;
        async move {
            let view = get(proxy.admin, "/balancer-manager/api/")
                .send()
                .await
                .json();
            view["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["route"] == route)
                .map(|m| m["agent"].clone())
                .unwrap()
        }
    };
    eventually_async("www2's first report", PATIENCE, || async {
        (agent_hash("www2").await["map_hash"] == "a".repeat(64)).then_some(())
    })
    .await;
    second.store(true, Ordering::SeqCst);
    eventually_async(
        "www2's next report, although www1's agent never finishes its answer",
        Duration::from_secs(5),
        || async { (agent_hash("www2").await["map_hash"] == "b".repeat(64)).then_some(()) },
    )
    .await;
    let www1_report = agent_hash("www1").await;
    assert!(
        www1_report["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the stalled agent is reported as failing: {www1_report}"
    );
}

/// A member that sends bytes after a complete response, `gap` later: with a `HEAD`
/// request it sends a body anyway; with `GET /extra` it sends more than `Content-Length`.
async fn poisoning_member(gap: Duration) -> RawBackend {
    RawBackend::start("127.0.0.2", move |mut conn| async move {
        const POISON: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Poison: yes\r\n\r\npoisoned";
        while let Some(head) = conn.read_head().await {
            let late = if head.starts_with("HEAD ") {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
                    .await
            } else if head.starts_with("GET /extra") {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean")
                    .await
            } else {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean")
                    .await;
                false
            };
            if late {
                tokio::time::sleep(gap).await;
                if !conn.write(POISON).await {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_late_bytes_never_reach_another_client() {
    for gap in [Duration::ZERO, Duration::from_millis(50)] {
        let backend = poisoning_member(gap).await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = proxy(&dir, &[("www1", backend.addr())], &[]);
        proxy.wait_members(1).await;
        for round in 0..20 {
            let first = if round % 2 == 0 {
                call(proxy.addr, http::Method::HEAD, "/").send().await
            } else {
                get(proxy.addr, "/extra").send().await
            };
            assert_eq!(first.status, 200);
            // Another client, at once: its first request, then a second on the same
            // connection.
            let mut next = TcpStream::connect(proxy.addr).await.unwrap();
            for _ in 0..2 {
                next.write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
                    .await
                    .unwrap();
                let answer = raw::read_response(&mut next, PATIENCE).await;
                assert!(
                    !answer.contains("poison") && answer.ends_with("\r\n\r\nclean"),
                    "gap {gap:?}, round {round}: another client's response got {answer:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_fails_over_after_a_refused_connection_is_counted_once() {
    let www1 = TestApp::start("www1", "127.0.0.2").await;
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&dir, &[("www1", www1.addr()), ("www2", refused)], &[]);
    proxy.wait_members(2).await;
    let reply = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www2")
        .send()
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-app").as_deref(), Some("www1"));
    let metrics = get(proxy.admin, "/metrics").send().await.text();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("stickyroute_proxy_sticky_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 1, "one request, one outcome:\n{metrics}");
    assert!(
        metrics.contains("stickyroute_proxy_sticky_total{outcome=\"failover\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stickyroute_proxy_retries_total 1"),
        "{metrics}"
    );
}
