//! What a client can get wrong, on purpose or not, and what it must never cost anyone else:
//! broken, aborted and stalled uploads are the client's errors (400, 408), never held
//! against the member; a request the client abandons leaves no busy count behind; a
//! client that stops reading is cut off. Raw sockets in front of the real proxy and agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::get;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::{self, RawBackend};
use stickyroute_tests::{PATIENCE, eventually_async};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const STICKY: &str = "Cookie: balanceid=route.www1\r\n";

/// One member (www1, a test app on 127.0.0.2) behind a proxy started with `args`.
async fn one_member(args: &[&str]) -> (tempfile::TempDir, TestApp, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", app.addr())]);
    let proxy = Proxy::builder(&map).args(args).start();
    proxy.wait_members(1).await;
    (dir, app, proxy)
}

/// The session still reaches its member, and the member has no error against it.
async fn member_unharmed(proxy: &Proxy) {
    let reply = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(
        reply.status,
        200,
        "the session is still served: {}",
        reply.text()
    );
    assert_eq!(reply.header("x-app").as_deref(), Some("www1"));
    let member = proxy.member("www1").await;
    assert_eq!(member["errors"], 0, "{member}");
    assert_eq!(member["healthy"], true, "{member}");
}

async fn busy_returns_to_zero(proxy: &Proxy) {
    eventually_async(
        "the member's busy count to return to 0",
        PATIENCE,
        || async { (proxy.member("www1").await["busy"] == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_upload_is_the_clients_400_and_the_member_keeps_its_sessions() {
    let (_dir, _app, proxy) = one_member(&["--nofailover"]).await;
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\n{STICKY}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    );
    let answer = raw::exchange(proxy.addr, request.as_bytes(), PATIENCE).await;
    assert_eq!(
        raw::status(&answer),
        Some(400),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    member_unharmed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_is_not_held_against_the_member() {
    let (_dir, _app, proxy) = one_member(&["--nofailover"]).await;
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: shop.example\r\n{STICKY}Content-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    member_unharmed(&proxy).await;
    busy_returns_to_zero(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_the_member_stays_healthy() {
    let (_dir, _app, proxy) = one_member(&["--nofailover", "--idle-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\n{STICKY}Content-Length: 100\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let answer = raw::read_until_close(&mut stream, PATIENCE).await;
    assert_eq!(
        raw::status(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after the idle timeout, not later: {:?}",
        started.elapsed()
    );
    member_unharmed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_an_upload_is_the_members_504() {
    let backend = RawBackend::start("127.0.0.2", |mut conn| async move {
        // Reads the head, then never reads again: the upload backs up into the proxy.
        conn.read_head().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let proxy = Proxy::builder(&map)
        .args(&["--response-timeout", "1s", "--idle-timeout", "30s"])
        .start();
    proxy.wait_members(1).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let total: usize = 256 << 20;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {total}\r\n\r\n");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 1 << 20];
        for _ in 0..256 {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    while raw::find(&answer, b"\r\n\r\n").is_none() {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    assert_eq!(
        raw::status(&answer),
        Some(504),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let member = proxy.member("www1").await;
    assert_eq!(member["errors"], 1, "a member error: {member}");
    assert_eq!(member["healthy"], false, "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_a_broken_upload_with_400_and_counts_no_app_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("www1", "127.0.0.2").await;
    let map = dir.path().join("routemap");
    std::fs::write(&map, "127.0.0.3 www1\n").unwrap();
    let agent = Agent::builder("127.0.0.3", app.addr(), &map)
        .arg("--track-all")
        .start();
    agent.process.wait_ready(agent.admin).await;
    let request = b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot-a-size\r\n";
    let answer = raw::exchange(agent.addr, request, PATIENCE).await;
    assert_eq!(
        raw::status(&answer),
        Some(400),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let metrics = get(agent.admin, "/metrics").send().await.text();
    for kind in ["connect", "timeout", "other"] {
        let line = format!("stickyroute_agent_upstream_errors_total{{kind=\"{kind}\"}} 0");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_before_the_response_leaves_no_busy_count() {
    let (_dir, _app, proxy) = one_member(&[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /slow?ms=1500 HTTP/1.1\r\nHost: shop.example\r\n{STICKY}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    eventually_async("the request to be in flight", PATIENCE, || async {
        (proxy.member("www1").await["busy"] == 1).then_some(())
    })
    .await;
    drop(stream);
    // Polled rather than slept: a count that leaks never returns to 0, however long the
    // test would have slept.
    busy_returns_to_zero(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_cancelled_before_the_response_leaves_no_busy_count() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (_dir, _app, proxy) = one_member(&[]).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/slow?ms=3000", proxy.addr))
        .header("cookie", "balanceid=route.www1")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let pending = tokio::spawn(sender.send_request(request));
    eventually_async("the request to be in flight", PATIENCE, || async {
        (proxy.member("www1").await["busy"] == 1).then_some(())
    })
    .await;
    // Dropping the response future resets the stream; the connection stays open.
    pending.abort();
    eventually_async(
        "the cancelled stream to end its busy count",
        Duration::from_secs(2),
        || async { (proxy.member("www1").await["busy"] == 0).then_some(()) },
    )
    .await;
    assert!(!connection.is_finished(), "only the stream was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_download_is_cut_off_and_not_held_against_the_member() {
    let (_dir, _app, proxy) = one_member(&["--idle-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request =
        format!("GET /download?bytes=2000000000 HTTP/1.1\r\nHost: shop.example\r\n{STICKY}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    eventually_async("the download to be in flight", PATIENCE, || async {
        (proxy.member("www1").await["busy"] == 1).then_some(())
    })
    .await;
    // Never read: the proxy's writes to this client stall.
    busy_returns_to_zero(&proxy).await;
    let member = proxy.member("www1").await;
    assert_eq!(member["errors"], 0, "the client's fault: {member}");
    assert_eq!(member["healthy"], true);
    drop(stream);
}
