//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker.
//!
//! A connection goes back to the pool from the response body itself, the moment its last
//! byte has been read (see [`super::body`]): no task watches it. It is reused only after its
//! previous exchange ended cleanly; a body dropped half-read takes its connection with it
//! (HTTP/1 cannot resynchronise). A pooled connection is checked before use (see
//! [`Connection::is_reusable`]); one that the upstream closed just as the request went out
//! fails without any answer, and a request that may be repeated (idempotent, no body) is
//! then sent once more, on a fresh connection, as browsers and other proxies do.

use super::body::BodyReader;
use super::connection::{Connection, ExchangeError};
use super::head::{RequestHead, ResponseHead};
use crate::body::OutgoingBody;
use http::StatusCode;
use http::uri::Authority;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most idle connections kept per upstream and worker; more are closed when returned.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: nothing was sent.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The exchange failed after the request was (at least partly) written.
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
}

#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Mutex<Idles>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

struct Idles {
    by_upstream: HashMap<Authority, Vec<Idle>, BuildHasherDefault<Fnv>>,
    /// When expired connections were last closed (see [`Home::give`]).
    swept: Instant,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Idles {
                    by_upstream: HashMap::default(),
                    swept: Instant::now(),
                }),
                connect_timeout,
                idle_timeout,
            }),
        }
    }

    /// Sends `request` with `body` to `upstream` and returns the response head and its
    /// body, which hands the connection back when it has been read to the end.
    pub async fn send(
        &self,
        upstream: &Authority,
        request: &RequestHead,
        body: OutgoingBody,
    ) -> Result<(ResponseHead, BodyReader), PoolError> {
        // A pooled connection closed under us before even the head went out leaves the
        // body untouched: a fresh connection gets the request.
        let pooled = match self.checkout(upstream) {
            Some(mut conn) => conn.write_head(request).await.is_ok().then_some(conn),
            None => None,
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_with(upstream, request).await?,
        };
        let (head, sent_whole) = match conn.finish(request, body).await {
            Ok(answer) => answer,
            Err(error) if reused && request.replayable && error.nothing_received() => {
                conn = self.open_with(upstream, request).await?;
                conn.finish(request, OutgoingBody::empty(None)).await?
            }
            Err(error) => return Err(error.into()),
        };
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((head, BodyReader::upgraded(conn)));
        }
        let home = (head.keep_alive && sent_whole).then(|| Home {
            pool: self.shared.clone(),
            upstream: upstream.clone(),
        });
        let body = BodyReader::new(conn, head.framing, home);
        Ok((head, body))
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self, upstream: &Authority) -> Option<Connection> {
        let mut idles = self.shared.lock();
        let list = idles.by_upstream.get_mut(upstream)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < self.shared.idle_timeout && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new connection with the request head written on it.
    async fn open_with(
        &self,
        upstream: &Authority,
        request: &RequestHead,
    ) -> Result<Connection, PoolError> {
        // Boxed: rare once the pool is warm, and its state (name resolution, timer) would
        // otherwise be part of every request's future (see `Connection::finish`).
        let connecting = Connection::connect(upstream.as_str(), self.shared.connect_timeout);
        let mut conn = Box::pin(connecting).await.map_err(PoolError::Connect)?;
        conn.write_head(request).await.map_err(ExchangeError::Io)?;
        Ok(conn)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Idles> {
        // Every holder only pushes or pops: the map is consistent even after a panic.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// FNV-1a. The keys are upstream names from our own route map, looked up twice per
/// request; `Authority` feeds its hasher one byte at a time, which is slow with SipHash,
/// whose protection against chosen keys buys nothing here.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Where a connection goes back to once its response body has been read.
pub(crate) struct Home {
    pool: Arc<Shared>,
    upstream: Authority,
}

impl Home {
    /// Pools the connection. Now and then (every half idle timeout) also closes the
    /// connections idle for longer than the timeout, including those to upstreams that
    /// no request asks for any more.
    pub(crate) fn give(self, mut conn: Connection) {
        conn.shrink_for_idle();
        let now = Instant::now();
        let mut idles = self.pool.lock();
        if now.duration_since(idles.swept) >= self.pool.idle_timeout / 2 {
            idles.swept = now;
            let timeout = self.pool.idle_timeout;
            idles.by_upstream.retain(|_, list| {
                list.retain(|idle| now.duration_since(idle.since) < timeout);
                !list.is_empty()
            });
        }
        let list = idles.by_upstream.entry(self.upstream).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle { conn, since: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A raw HTTP/1.1 upstream on loopback: answers every request with `body`, counts the
    /// connections it accepted, and closes each connection after `per_connection` answers
    /// (without saying so in a `Connection: close` header, as a server whose keep-alive
    /// timeout expired does).
    async fn upstream(body: &'static str, per_connection: usize) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    for _ in 0..per_connection {
                        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.clear();
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    async fn get(
        pool: &Pool,
        upstream: &Authority,
    ) -> Result<(ResponseHead, BodyReader), PoolError> {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, upstream.as_str().parse().unwrap());
        let path = http::uri::PathAndQuery::from_static("/");
        let request = RequestHead::encode(&http::Method::GET, &path, &headers, false);
        pool.send(upstream, &request, OutgoingBody::empty(None))
            .await
    }

    fn pool() -> Pool {
        Pool::new(Duration::from_secs(2), Duration::from_secs(60))
    }

    async fn read((_, mut body): (ResponseHead, BodyReader)) -> String {
        let mut bytes = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            bytes.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (upstream, accepted) = upstream("hello", usize::MAX).await;
        let pool = pool();
        for _ in 0..20 {
            let response = get(&pool, &upstream).await.unwrap();
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_takes_its_connection_with_it() {
        let (upstream, accepted) = upstream("a body that is never read", usize::MAX).await;
        let pool = pool();
        let unread = get(&pool, &upstream).await.unwrap();
        drop(unread);
        let response = get(&pool, &upstream).await.unwrap();
        assert_eq!(read(response).await, "a body that is never read");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced_without_failing_a_request() {
        let (upstream, accepted) = upstream("once", 1).await;
        let pool = pool();
        for i in 0..20 {
            let response = get(&pool, &upstream).await;
            assert_eq!(read(response.unwrap()).await, "once", "request {i}");
            // Alternately give the pool time to notice the close, and none.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        drop(listener);
        let sent = get(&pool(), &upstream).await;
        assert!(
            matches!(sent, Err(PoolError::Connect(_))),
            "not a connect error"
        );
    }
}
