//! Exchanges with a scripted upstream on loopback: what the client gets and whether the
//! connection is reused, for each way a response can be framed or fail.

use super::*;
use crate::body::OutgoingBody;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, StatusCode, header};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted upstream does with the next request it reads.
enum Reply {
    /// Writes these bytes and keeps the connection.
    Send(&'static str),
    /// Writes these bytes and closes the connection.
    SendAndClose(&'static str),
    /// Closes the connection without answering.
    Hangup,
}

struct Upstream {
    authority: Authority,
    accepted: Arc<AtomicUsize>,
    /// Every request head it read, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

/// Answers the requests it reads, on whatever connection, with `replies` in order.
async fn scripted(replies: Vec<Reply>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
    let (count, seen) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let (replies, seen) = (replies.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head: Vec<u8> = buffer.drain(..end).collect();
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let reply = replies.lock().unwrap().pop_front();
                    match reply {
                        Some(Reply::Send(bytes)) => {
                            stream.write_all(bytes.as_bytes()).await.unwrap()
                        }
                        Some(Reply::SendAndClose(bytes)) => {
                            stream.write_all(bytes.as_bytes()).await.unwrap();
                            return;
                        }
                        Some(Reply::Hangup) | None => return,
                    }
                }
            });
        }
    });
    Upstream {
        authority,
        accepted,
        requests,
    }
}

fn pool() -> Pool {
    Pool::new(PoolTimeouts {
        connect: Duration::from_secs(2),
        idle: Duration::from_secs(60),
        body_silence: Duration::from_secs(60),
    })
}

async fn send(
    pool: &Pool,
    upstream: &Upstream,
    method: Method,
) -> Result<(ResponseHead, String), PoolError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, upstream.authority.as_str().parse().unwrap());
    let path = PathAndQuery::from_static("/");
    let request = RequestHead::encode(&method, &path, &headers, false);
    let (head, mut body) = pool
        .send(
            &upstream.authority,
            &request,
            OutgoingBody::empty(None),
            Requester {
                conn: 1,
                first: false,
            },
        )
        .await?;
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
        if let Ok(data) = frame.map_err(ExchangeError::Io)?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok((head, String::from_utf8(bytes).unwrap()))
}

#[tokio::test]
async fn a_chunked_body_is_decoded_and_its_connection_reused() {
    let upstream = scripted(vec![
        Reply::Send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n"),
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
    ])
    .await;
    let pool = pool();
    let (head, body) = send(&pool, &upstream, Method::GET).await.unwrap();
    assert_eq!(body, "hello, world");
    assert!(
        head.headers.contains_key(header::TRANSFER_ENCODING),
        "stripped later, by forward"
    );
    assert_eq!(
        send(&pool, &upstream, Method::GET).await.unwrap().1,
        "again"
    );
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_length_runs_until_close_and_the_connection_is_not_reused() {
    let upstream = scripted(vec![
        Reply::SendAndClose("HTTP/1.1 200 OK\r\n\r\nall of it"),
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let pool = pool();
    assert_eq!(
        send(&pool, &upstream, Method::GET).await.unwrap().1,
        "all of it"
    );
    assert_eq!(send(&pool, &upstream, Method::GET).await.unwrap().1, "next");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_not_reused() {
    let upstream = scripted(vec![
        Reply::Send("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        Reply::Send("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"),
        Reply::Send("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nc"),
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd"),
    ])
    .await;
    let pool = pool();
    for expected in ["a", "b", "c", "d"] {
        assert_eq!(
            send(&pool, &upstream, Method::GET).await.unwrap().1,
            expected
        );
    }
    // a, b on their own connections; c and d on one.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let upstream = scripted(vec![Reply::Send(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let (head, body) = send(&pool(), &upstream, Method::GET).await.unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert!(!head.headers.contains_key(header::LINK));
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length_says_and_its_connection_is_not_reused() {
    let upstream = scripted(vec![
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"),
    ])
    .await;
    let pool = pool();
    let (head, body) = send(&pool, &upstream, Method::HEAD).await.unwrap();
    assert_eq!(head.headers[header::CONTENT_LENGTH], "1000");
    assert_eq!(body, "");
    assert_eq!(send(&pool, &upstream, Method::GET).await.unwrap().1, "yes");
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        2,
        "a body it announced may still come: never reused"
    );
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_short_answer() {
    let upstream = scripted(vec![Reply::SendAndClose(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    )])
    .await;
    let error = send(&pool(), &upstream, Method::GET).await.unwrap_err();
    assert!(
        error.to_string().contains("before the end of the body"),
        "{error}"
    );
}

#[tokio::test]
async fn garbage_and_silence_are_errors_that_say_so() {
    let upstream = scripted(vec![
        Reply::SendAndClose("SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        Reply::SendAndClose("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"),
        Reply::Hangup,
    ])
    .await;
    let pool = pool();
    let garbage = send(&pool, &upstream, Method::GET).await.unwrap_err();
    assert!(
        garbage.to_string().contains("invalid response head"),
        "{garbage}"
    );
    let length = send(&pool, &upstream, Method::GET).await.unwrap_err();
    assert!(
        length.to_string().contains("invalid Content-Length"),
        "{length}"
    );
    let silence = send(&pool, &upstream, Method::GET).await.unwrap_err();
    assert!(
        silence.to_string().contains("closed before any response"),
        "{silence}"
    );
}

/// The keep-alive race: the upstream closes a pooled connection just as a request goes out
/// on it. A GET is sent again on a fresh connection; a POST is not (it may have been
/// processed), and fails.
#[tokio::test]
async fn only_a_request_that_may_be_repeated_is_repeated_after_a_silent_close() {
    let upstream = scripted(vec![
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
        Reply::Hangup,
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nretry"),
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthird"),
        Reply::Hangup,
    ])
    .await;
    let pool = pool();
    assert_eq!(
        send(&pool, &upstream, Method::GET).await.unwrap().1,
        "first"
    );
    assert_eq!(
        send(&pool, &upstream, Method::GET).await.unwrap().1,
        "retry"
    );
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        send(&pool, &upstream, Method::GET).await.unwrap().1,
        "third"
    );
    let post = send(&pool, &upstream, Method::POST).await.unwrap_err();
    assert!(
        post.to_string().contains("closed before any response"),
        "{post}"
    );
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    let requests = upstream.requests.lock().unwrap();
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert!(requests[4].starts_with("POST / HTTP/1.1\r\n"));
}

/// An upstream that stops listening drops the connections still in its accept queue: a
/// fresh connection that ends without an answer gets a GET sent once more (which then
/// finds the port closed, or, here, an answer), and never more than once.
#[tokio::test]
async fn a_fresh_connection_closed_before_any_answer_gets_a_get_once_more() {
    let upstream = scripted(vec![
        Reply::Hangup,
        Reply::Send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
    ])
    .await;
    let answer = send(&pool(), &upstream, Method::GET).await.unwrap();
    assert_eq!(answer.1, "again");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);

    let silent = scripted(vec![Reply::Hangup, Reply::Hangup, Reply::Hangup]).await;
    let error = send(&pool(), &silent, Method::GET).await.unwrap_err();
    assert!(
        error.to_string().contains("closed before any response"),
        "{error}"
    );
    assert_eq!(
        silent.accepted.load(Ordering::SeqCst),
        2,
        "one repeat, no more"
    );
}
