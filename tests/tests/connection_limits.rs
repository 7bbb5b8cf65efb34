//! Connections that send nothing, or too many of them: every listener (the proxy's and the
//! agent's, traffic and admin) closes a connection that has not completed a request within
//! the header read timeout, whatever it started to send (nothing, part of the HTTP/2
//! preface, the whole preface) and however many requests came before; the traffic listener
//! closes connections beyond `--max-connections` at once; the admin listener keeps
//! answering while traffic connections are exhausted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use stickyroute_tests::PATIENCE;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::process::{Process, binary};
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How long a listener with a 1 s header read timeout may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

async fn opened_with(target: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(target).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Every way of holding a connection without completing a request, on `target` (whose
/// `path` answers GET). All of them at once: each waits out the same timeout.
async fn assert_silent_connections_are_closed(name: &str, target: SocketAddr, path: &str) {
    tokio::join!(
        assert_raw_connections_are_closed(name, target, path),
        assert_idle_http2_connection_is_closed(name, target, path),
    );
}

async fn assert_raw_connections_are_closed(name: &str, target: SocketAddr, path: &str) {
    let keep_alive = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let cases: [(&str, &[u8]); 5] = [
        ("no bytes at all", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("the HTTP/2 preface and SETTINGS", H2_PREFACE),
        (
            "half an HTTP/1 request head",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ),
        ("HTTP/1 keep-alive after one request", keep_alive.as_bytes()),
    ];
    let mut streams = Vec::new();
    for (case, bytes) in cases {
        streams.push((case, opened_with(target, bytes).await));
    }
    for (case, mut stream) in streams {
        assert!(
            raw::closed_within(&mut stream, CLOSE_WITHIN).await,
            "{name}: a connection with {case} was not closed"
        );
    }
}

/// HTTP/2 after one complete request: the connection has no open stream, so it is idle.
async fn assert_idle_http2_connection_is_closed(name: &str, target: SocketAddr, path: &str) {
    let stream = TcpStream::connect(target).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{target}{path}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(
        response.status().is_success(),
        "{name}: {}",
        response.status()
    );
    drop(response);
    assert!(
        tokio::time::timeout(CLOSE_WITHIN, connection).await.is_ok(),
        "{name}: an idle HTTP/2 connection was not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_closes_connections_that_complete_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = Proxy::builder(&map)
        .args(&["--header-read-timeout", "1s"])
        .start();
    proxy.wait_members(1).await;
    let agent_map = dir.path().join("agent-map");
    std::fs::write(&agent_map, "127.0.0.3 www1\n").unwrap();
    let agent = Agent::builder("127.0.0.3", app.addr(), &agent_map)
        .args(&["--track-all", "--header-read-timeout", "1s"])
        .start();
    agent.process.wait_ready(agent.admin).await;
    tokio::join!(
        assert_silent_connections_are_closed("proxy traffic", proxy.addr, "/"),
        assert_silent_connections_are_closed("proxy admin", proxy.admin, "/healthz"),
        assert_silent_connections_are_closed("agent traffic", agent.addr, "/"),
        assert_silent_connections_are_closed("agent admin", agent.admin, "/healthz"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_at_once_and_admin_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = Proxy::builder(&map)
        .args(&["--max-connections", "20", "--header-read-timeout", "5s"])
        .start();
    proxy.wait_members(1).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        raw::closed_within(&mut extra, Duration::from_millis(500)).await,
        "the 21st connection is closed at once"
    );
    assert_eq!(get(proxy.admin, "/healthz").send().await.status, 200);
    let metrics = get(proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains("stickyroute_connections_refused_total{listener=\"traffic\"} 1"),
        "{metrics}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(proxy.addr, "/").send().await.status, 200);
}

/// The proxy started under `prlimit --nofile=SOFT:HARD`.
fn proxy_with_nofile(limit: &str, map: &std::path::Path, extra: &[&str]) -> Proxy {
    let mut args = vec![
        format!("--nofile={limit}"),
        binary("stickyroute-proxy").display().to_string(),
    ];
    for arg in [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--routemap",
        &map.display().to_string(),
    ]
    .iter()
    .chain(extra)
    {
        args.push((*arg).to_owned());
    }
    let process = Process::start_path(
        std::path::Path::new("prlimit"),
        &args,
        &[("STICKYROUTE_DRAIN_DELAY", "0s")],
    );
    let patience = Duration::from_secs(20);
    let addr = process.logged_addr("stickyroute-proxy started", "listen", patience);
    let admin = process.logged_addr("stickyroute-proxy started", "admin", patience);
    Proxy::from(stickyroute_tests::server::Server {
        process: stickyroute_tests::in_process::Runner::Process(process),
        addr,
        admin,
        tls: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = proxy_with_nofile("256:4096", &map, &[]);
    proxy.process.wait_ready(proxy.admin).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.process.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{files}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_take_the_descriptors_the_admin_listener_needs() {
    let _ = rlimit::increase_nofile_limit(8192);
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    // A hard limit of 1,024 descriptors, and more silent clients than that.
    let proxy = proxy_with_nofile("1024:1024", &map, &["--header-read-timeout", "30s"]);
    proxy.process.wait_ready(proxy.admin).await;
    let mut held = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect(proxy.addr).await {
            Ok(stream) => held.push(stream),
            Err(error) => panic!("connect: {error}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = tokio::time::timeout(PATIENCE, get(proxy.admin, "/healthz").try_send()).await;
    assert!(
        matches!(&health, Ok(Ok(reply)) if reply.status == 200),
        "/healthz must answer while traffic connections are exhausted: {health:?}"
    );
    drop(held);
}
