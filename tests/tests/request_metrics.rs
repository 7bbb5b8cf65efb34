//! The request metrics an operator alerts on: responses by member and status class,
//! request duration and member time-to-first-byte histograms, member failures by kind and
//! client mistakes by kind, checked against what was actually sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of the sample written exactly as `series` (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// Sends raw bytes and reads whatever comes back until the proxy closes.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(stickyroute_tests::PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_latencies_and_failures_are_counted_where_they_happened() {
    let dir = tempfile::tempdir().unwrap();
    let www1 = TestApp::start("www1", "127.0.0.2").await;
    let dead = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let map = dir.path().join("routemap");
    std::fs::write(
        &map,
        format!(
            "127.0.0.2 www1 port={}\n127.0.0.3 www2 port={dead_port}\n",
            www1.addr().port()
        ),
    )
    .unwrap();
    let proxy = Proxy::builder(&map).start();
    proxy.wait_members(2).await;

    for _ in 0..3 {
        let ok = get(proxy.addr, "/")
            .header("cookie", "balanceid=route.www1")
            .send()
            .await;
        assert_eq!(ok.status, 200);
    }
    let error = get(proxy.addr, "/status/500")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(error.status, 500);
    // www2 refuses: the request is retried on www1, and www2 has a connect failure.
    let moved = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www2")
        .send()
        .await;
    assert_eq!(moved.status, 200);
    // Client mistakes: a head that is not HTTP, and one over the size limit.
    let garbage = raw(proxy.addr, b"\x16\x03\x01 not http\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(70 * 1024)
    );
    let refused = raw(proxy.addr, huge.as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");

    let metrics = stickyroute_tests::eventually_async(
        "the last request's duration to be recorded",
        stickyroute_tests::PATIENCE,
        || async {
            let text = get(proxy.admin, "/metrics").send().await.text();
            (sample(
                &text,
                r#"stickyroute_request_duration_seconds_count{listener="traffic"}"#,
            ) >= 5.0)
                .then_some(text)
        },
    )
    .await;
    let m = |series: &str| sample(&metrics, series);
    assert_eq!(
        m(r#"stickyroute_member_responses_total{route="www1",class="2xx"}"#),
        4.0
    );
    assert_eq!(
        m(r#"stickyroute_member_responses_total{route="www1",class="5xx"}"#),
        1.0
    );
    assert_eq!(
        m(r#"stickyroute_member_responses_total{route="www2",class="2xx"}"#),
        0.0
    );
    assert_eq!(
        m(r#"stickyroute_member_failures_total{route="www2",kind="connect"}"#),
        1.0
    );
    assert_eq!(
        m(r#"stickyroute_member_failures_total{route="www1",kind="connect"}"#),
        0.0
    );
    assert_eq!(
        m(r#"stickyroute_member_response_head_seconds_count{route="www1"}"#),
        5.0
    );
    assert_eq!(
        m(r#"stickyroute_member_response_head_seconds_bucket{route="www1",le="+Inf"}"#),
        5.0
    );
    assert!(m(r#"stickyroute_member_response_head_seconds_sum{route="www1"}"#) > 0.0);
    assert_eq!(
        m(r#"stickyroute_responses_total{listener="traffic",class="2xx"}"#),
        4.0
    );
    assert_eq!(
        m(r#"stickyroute_responses_total{listener="traffic",class="5xx"}"#),
        1.0
    );
    assert_eq!(
        m(r#"stickyroute_request_duration_seconds_count{listener="traffic"}"#),
        5.0,
        "the requests that reached the handler"
    );
    assert_eq!(
        m(r#"stickyroute_client_faults_total{listener="traffic",kind="head_invalid"}"#),
        1.0
    );
    assert_eq!(
        m(r#"stickyroute_client_faults_total{listener="traffic",kind="head_too_large"}"#),
        1.0
    );
    assert!(m(r#"stickyroute_connections_open{listener="traffic"}"#) >= 0.0);
}
