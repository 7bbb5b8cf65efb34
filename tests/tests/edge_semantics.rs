//! HTTP semantics at the edge (RFC 9110, 9112, 9113): what the proxy refuses before
//! anything reaches a member, and how it rewrites what it forwards. Each request is sent
//! byte for byte on a raw socket; a recording backend shows byte-exactly what arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use stickyroute_tests::PATIENCE;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::{self, RawBackend};
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async fn recording() -> (tempfile::TempDir, RawBackend, Proxy) {
    let backend = RawBackend::start("127.0.0.2", |mut conn| async move {
        while let Some(head) = conn.read_head().await {
            let lower = head.to_ascii_lowercase();
            if lower.contains("transfer-encoding: chunked")
                && !conn.read_through(b"0\r\n\r\n").await
            {
                return;
            }
            if let Some(length) = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                && !conn.read_body(length).await
            {
                return;
            }
            if !conn.write(OK).await {
                return;
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let proxy = Proxy::builder(&map).start();
    proxy.wait_members(1).await;
    (dir, backend, proxy)
}

/// Sends `request`, expects `status` back, and that nothing reached the member.
async fn refused(proxy: &Proxy, backend: &RawBackend, request: &[u8], status: u16) {
    let answer = raw::exchange(proxy.addr, request, PATIENCE).await;
    assert_eq!(
        raw::status(&answer),
        Some(status),
        "{:?} got {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&answer)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        backend.all_received().is_empty(),
        "{:?} reached the member: {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&backend.all_received())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_missing_duplicate_or_invalid_host_get_400_and_are_not_forwarded() {
    let (_dir, backend, proxy) = recording().await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: shop.example\r\nHost: evil.example\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nHost: shop.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@shop.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop.example:http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    ] {
        refused(&proxy, &backend, request, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_with_405() {
    let (_dir, backend, proxy) = recording().await;
    refused(
        &proxy,
        &backend,
        b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\n",
        405,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_are_refused_and_not_forwarded() {
    let (_dir, backend, proxy) = recording().await;
    refused(
        &proxy,
        &backend,
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        501,
    )
    .await;
    refused(
        &proxy,
        &backend,
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        501,
    )
    .await;
    // The final coding is not chunked: the body has no length (RFC 9112 §6.3).
    refused(
        &proxy,
        &backend,
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_and_the_member_never_sees_a_complete_request() {
    let (_dir, backend, proxy) = recording().await;
    let answer = raw::exchange(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnope\r\n0\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert_eq!(
        raw::status(&answer),
        Some(400),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let received = backend.all_received();
    assert!(
        raw::find(&received, b"0\r\n\r\n").is_none(),
        "the member got a complete chunked body: {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_replaces_the_host() {
    let (_dir, backend, proxy) = recording().await;
    let answer = raw::exchange(
        proxy.addr,
        b"GET http://shop.example:8443/cart?id=7 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert_eq!(raw::status(&answer), Some(200));
    let received = String::from_utf8_lossy(&backend.received(0)).into_owned();
    assert!(
        received.starts_with("GET /cart?id=7 HTTP/1.1\r\nhost: shop.example:8443\r\n"),
        "{received:?}"
    );
    assert!(!received.contains("other.example"), "{received:?}");
    assert!(
        received.contains("\r\nx-forwarded-host: shop.example:8443\r\n"),
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_http2_the_authority_wins_over_a_host_header() {
    let (_dir, backend, proxy) = recording().await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("http://shop.example/h2")
        .header("host", "other.example")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let received = String::from_utf8_lossy(&backend.received(0)).into_owned();
    assert!(
        received.starts_with("GET /h2 HTTP/1.1\r\n")
            && received.contains("\r\nhost: shop.example\r\n"),
        "{received:?}"
    );
    assert!(!received.contains("other.example"), "{received:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_request_reaches_the_member_byte_for_byte_as_documented() {
    let (_dir, backend, proxy) = recording().await;
    let answer = raw::exchange(
        proxy.addr,
        b"POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nCookie: a=1\r\n\r\nhello",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(raw::status(&answer), Some(200));
    let received = String::from_utf8_lossy(&backend.received(0)).into_owned();
    assert_eq!(
        received,
        "POST /form HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 5\r\ncookie: a=1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop.example\r\n\r\nhello"
    );
}
