//! The PROXY protocol (`--proxy-protocol`) as a cloud L4 load balancer speaks it: from a
//! trusted peer, v1 and v2 headers give the client address members see and the access
//! log names; a trusted peer that sends none is cut off; anyone else cannot claim an
//! address with one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use stickyroute_tests::PATIENCE;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::RawBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The load balancer in front, in these tests.
const BALANCER: &str = "127.0.0.9";
const REQUEST: &[u8] = b"GET /cart HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";

/// Sends `bytes` from source address `from`; the whole answer.
async fn send_from(from: &str, to: SocketAddr, bytes: &[u8]) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A v2 PROXY header for TCP over IPv6, with a TLV the proxy skips.
fn v2_ipv6(source: [u8; 16], source_port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x21]);
    let mut body = source.to_vec();
    body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    body.extend_from_slice(&source_port.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn x_forwarded_for(received: &[u8]) -> String {
    String::from_utf8_lossy(received)
        .lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: ").map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancers_header_names_the_client_and_nobody_else_can_claim_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let log = dir.path().join("access.log");
    let proxy = Proxy::builder(&map)
        .args(&[
            "--trusted-proxy",
            &format!("{BALANCER}/32"),
            "--proxy-protocol",
            "--access-log",
            log.to_str().unwrap(),
        ])
        .start();
    proxy.wait_members(1).await;

    // v1, then the request on the same connection.
    let v1 = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".as_slice(),
        REQUEST,
    ]
    .concat();
    let answer = send_from(BALANCER, proxy.addr, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(1, PATIENCE).await);
    assert_eq!(x_forwarded_for(&backend.received(0)), "192.0.2.7");

    // v2, binary, IPv6.
    let mut source = [0u8; 16];
    source[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    source[15] = 7;
    let v2 = [v2_ipv6(source, 40000), REQUEST.to_vec()].concat();
    let answer = send_from(BALANCER, proxy.addr, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(2, PATIENCE).await);
    assert_eq!(x_forwarded_for(&backend.received(1)), "2001:db8::7");

    // v2 LOCAL: the balancer's own health check; its address stands.
    let local = [b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".as_slice(), REQUEST].concat();
    let answer = send_from(BALANCER, proxy.addr, &local).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(3, PATIENCE).await);
    assert_eq!(x_forwarded_for(&backend.received(2)), BALANCER);

    // The balancer must send one: a bare request from it is closed unanswered.
    let answer = send_from(BALANCER, proxy.addr, REQUEST).await;
    assert_eq!(
        answer, "",
        "nothing is answered to a connection without its header"
    );

    // Anyone else: a PROXY header is not HTTP (400), and a plain request is served as theirs.
    let answer = send_from("127.0.0.1", proxy.addr, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = send_from("127.0.0.1", proxy.addr, REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.wait_connections(4, PATIENCE).await);
    assert_eq!(x_forwarded_for(&backend.received(3)), "127.0.0.1");
    assert_eq!(
        backend.connections(),
        4,
        "the refused ones reached no member"
    );

    let text = stickyroute_tests::eventually("four log lines", PATIENCE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() >= 4).then_some(text)
    })
    .await;
    // Workers write their own buffers: lines of different connections may come in any order.
    let mut clients: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    clients.sort_unstable();
    assert_eq!(clients, ["127.0.0.1", BALANCER, "192.0.2.7", "2001:db8::7"]);
    let metrics = stickyroute_tests::client::get(proxy.admin, "/metrics")
        .send()
        .await
        .text();
    assert!(
        metrics.contains(
            r#"stickyroute_client_faults_total{listener="traffic",kind="proxy_header"} 1"#
        ),
        "{metrics}"
    );
}
