//! Trusted hops (`--trusted-proxy`): what a member receives in `X-Forwarded-*` from a
//! proxy in front that is trusted and from a client that is not, byte for byte; a reload
//! that changes the list; and `--https-redirect` behind a hop that terminated TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::RawBackend;
use stickyroute_tests::{PATIENCE, eventually_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The proxy in front, in these tests.
const TRUSTED: &str = "127.0.0.9";

/// One request from source address `from`; the whole answer.
async fn exchange_from(from: &str, to: SocketAddr, request: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const FORGED: &str = "GET /cart HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
                      X-Forwarded-Proto: https\r\nX-Forwarded-Host: www.shop.example\r\nConnection: close\r\n\r\n";

/// What the member received for the `i`-th connection: the head through the end of the
/// forwarded headers.
fn forwarded_of(backend: &RawBackend, i: usize) -> String {
    let received = String::from_utf8(backend.received(i)).unwrap();
    received
        .lines()
        .filter(|l| l.starts_with("x-forwarded-"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_hop_extends_the_chain_and_anyone_else_has_it_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let proxy = Proxy::builder(&map)
        .args(&["--trusted-proxy", &format!("{TRUSTED}/32,10.0.0.0/8")])
        .start();
    proxy.wait_members(1).await;

    let answer = exchange_from(TRUSTED, proxy.addr, FORGED).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(1, PATIENCE).await);
    assert_eq!(
        forwarded_of(&backend, 0),
        "x-forwarded-for: 203.0.113.7, 127.0.0.9\nx-forwarded-proto: https\nx-forwarded-host: www.shop.example"
    );

    let answer = exchange_from("127.0.0.1", proxy.addr, FORGED).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(2, PATIENCE).await);
    assert_eq!(
        forwarded_of(&backend, 1),
        "x-forwarded-for: 127.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: shop.example",
        "a client cannot forge the chain, the protocol or the host"
    );

    // A trusted hop that sets nothing: filled in from what this hop saw.
    let bare = "GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    exchange_from(TRUSTED, proxy.addr, bare).await;
    assert!(backend.wait_connections(3, PATIENCE).await);
    assert_eq!(
        forwarded_of(&backend, 2),
        "x-forwarded-for: 127.0.0.9\nx-forwarded-proto: http\nx-forwarded-host: shop.example"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_who_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let config = dir.path().join("proxy.json");
    let write = |trusted: &[&str]| {
        std::fs::write(
            &config,
            json!({"routemap": map, "trusted_proxy": trusted}).to_string(),
        )
        .unwrap()
    };
    write(&[]);
    let proxy = Proxy::builder_with_map(&["--config", config.to_str().unwrap()]).start();
    proxy.wait_members(1).await;
    exchange_from(TRUSTED, proxy.addr, FORGED).await;
    assert!(backend.wait_connections(1, PATIENCE).await);
    assert!(forwarded_of(&backend, 0).starts_with("x-forwarded-for: 127.0.0.9\n"));

    write(&[TRUSTED]);
    proxy.process.reload();
    let mut seen = 1;
    eventually_async("the new trusted proxy to be believed", PATIENCE, || {
        seen += 1;
        let n = seen;
        let (backend, addr) = (&backend, proxy.addr);
        async move {
            exchange_from(TRUSTED, addr, FORGED).await;
            backend.wait_connections(n, PATIENCE).await;
            forwarded_of(backend, n - 1)
                .starts_with("x-forwarded-for: 203.0.113.7, 127.0.0.9\n")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_believes_only_a_trusted_hop_that_says_https() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let made = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let proxy = Proxy::builder(&map)
        .args(&["--tls-listen", "127.0.0.1:0", "--https-redirect"])
        .args(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .args(&["--trusted-proxy", TRUSTED])
        .start();
    proxy.wait_members(1).await;

    let from_front = exchange_from(TRUSTED, proxy.addr, FORGED).await;
    assert!(from_front.starts_with("HTTP/1.1 200"), "{from_front}");
    let from_client = exchange_from("127.0.0.1", proxy.addr, FORGED).await;
    assert!(from_client.starts_with("HTTP/1.1 308"), "{from_client}");
    let plain_front = exchange_from(
        TRUSTED,
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(plain_front.starts_with("HTTP/1.1 308"), "{plain_front}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend.connections(),
        1,
        "only the trusted https request went through"
    );
}

#[test]
fn a_bad_trusted_proxy_is_refused_naming_the_setting() {
    let argv: Vec<std::ffi::OsString> = [
        "stickyroute-proxy",
        "--routemap",
        "/m",
        "--trusted-proxy",
        "10.0.0.0/40",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let error = stickyroute_proxy::config::read(&argv)
        .and_then(|layered| stickyroute_proxy::config::Settings::new(layered, None))
        .unwrap_err()
        .to_string();
    assert!(error.contains("--trusted-proxy"), "{error}");
    assert!(error.contains("10.0.0.0/40"), "{error}");
}
