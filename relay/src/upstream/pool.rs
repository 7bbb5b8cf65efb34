//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker.
//!
//! A connection goes back to the pool from the response body itself, the moment its last
//! byte has been read (see [`super::body`]): no task watches it. It is reused only after its
//! previous exchange ended cleanly; a body dropped half-read takes its connection with it
//! (HTTP/1 cannot resynchronise). A pooled connection is checked before use (see
//! [`Connection::is_reusable`]); one that the upstream closed just as the request went out
//! fails without any answer, and a request that may be repeated (idempotent, no body) is
//! then sent once more, on a fresh connection, as browsers and other proxies do. So is one
//! whose fresh connection ended before any answer: that is what a connection still in an
//! upstream's accept queue gets when it stops listening (an agent at the end of its drain),
//! and the second attempt then finds the port closed, a failed connection like any other.
//!
//! # Which connection a request may use
//!
//! HTTP/1.1 has no request ids: whatever bytes come back on a connection are taken as the
//! answer to the request sent on it. A member that sends bytes after a complete response (a
//! body to a `HEAD`, more than its `Content-Length`, a second response) hands them to the
//! *next* request on that connection, which would be another client's. Checking for
//! unread bytes when a connection is returned and again when it is taken catches bytes that
//! have arrived by then; bytes that arrive a moment later, after the next request went
//! out, cannot be told from its answer. So reuse is limited by who a connection served:
//!
//! - a client connection's **first request** never gets a connection another client
//!   connection used; it opens its own (HAProxy's `http-reuse safe` rule). A new client,
//!   the usual target of such an attack and the usual victim of a misbehaving member,
//!   therefore only ever sees its own exchanges;
//! - later requests take an idle connection **their own client connection** used before
//!   when there is one, and any idle connection otherwise;
//! - a connection whose answer announced a body it did not carry (`HEAD`, `204`, `304`
//!   with a length or chunked coding) is not reused at all: that is where late bytes come
//!   from most often.
//!
//! The cost is one connection per new client connection to each member it reaches; clients
//! that keep their connection alive (browsers, API clients) pay it once.

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

/// Most idle connections kept per upstream and worker (nginx's `keepalive 32` is the same
/// kind of cache). A busy connection is not idle, so this bounds only the spares: with the
/// reuse rules below every new client connection opens a connection of its own, and
/// without a small cap a stream of short-lived clients would leave hundreds of idle
/// connections (and descriptors, on both sides) per member. The oldest goes first.
const MAX_IDLE_PER_UPSTREAM: usize = 64;

/// How deep into an upstream's idle connections a request looks for one its own client
/// connection used (the most recently returned are on top).
const OWN_SEARCH_DEPTH: usize = 16;

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened, or (for a request that may be repeated) two in a
    /// row closed without any answer: taken as not delivered.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The exchange failed after the request was (at least partly) written.
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
}

/// On whose behalf a request goes upstream, for the reuse rules above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    /// The client connection (unique in the process; 0 for the proxy's own probes).
    pub conn: u64,
    /// Its first request: it gets a connection no other client connection used.
    pub first: bool,
}

impl Requester {
    /// Health checks and status polls: their pool serves nobody else.
    pub const PROBE: Requester = Requester {
        conn: 0,
        first: false,
    };
}

/// Timing of one pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub connect: Duration,
    /// How long an unused connection is kept.
    pub idle: Duration,
    /// How long an upstream may leave an awaited response body without bytes.
    pub body_silence: Duration,
}

#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Mutex<Idles>,
    timeouts: PoolTimeouts,
}

struct Idles {
    by_upstream: HashMap<Authority, Vec<Idle>, BuildHasherDefault<Fnv>>,
    /// When expired connections were last closed (see [`Home::give`]).
    swept: Instant,
}

struct Idle {
    /// The client connection that used it last (kept here, next to `since`, so the search
    /// reads one small contiguous run of memory).
    owner: u64,
    since: Instant,
    conn: Connection,
}

impl Pool {
    pub fn new(timeouts: PoolTimeouts) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Idles {
                    by_upstream: HashMap::default(),
                    swept: Instant::now(),
                }),
                timeouts,
            }),
        }
    }

    /// Sends `request` with `body` to `upstream` for `requester` and returns the response
    /// head and its body, which hands the connection back when it has been read to the end.
    pub async fn send(
        &self,
        upstream: &Authority,
        request: &RequestHead,
        body: OutgoingBody,
        requester: Requester,
    ) -> Result<(ResponseHead, BodyReader), PoolError> {
        // A pooled connection closed under us before even the head went out leaves the
        // body untouched: a fresh connection gets the request.
        let pooled = match self.checkout(upstream, requester) {
            Some(mut conn) => conn.write_head(request).await.is_ok().then_some(conn),
            None => None,
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_with(upstream, request).await?,
        };
        let (head, sent_whole) = match conn.finish(request, body).await {
            Ok(answer) => answer,
            Err(error) if request.replayable && error.nothing_received() => {
                conn = self.open_with(upstream, request).await?;
                match conn.finish(request, OutgoingBody::empty(None)).await {
                    Ok(answer) => answer,
                    // Twice closed unanswered: the upstream is not serving (it stopped
                    // listening with the connection in its queue). As for a refused
                    // connection, the request may go elsewhere.
                    Err(again) if again.nothing_received() => {
                        return Err(PoolError::Connect(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            format!("{again}, twice: it is not serving"),
                        )));
                    }
                    Err(again) => return Err(again.into()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((head, BodyReader::upgraded(conn)));
        }
        let home = (head.keep_alive && sent_whole).then(|| Home {
            pool: self.shared.clone(),
            upstream: upstream.clone(),
            owner: requester.conn,
        });
        let body = BodyReader::new(conn, head.framing, home, self.shared.timeouts.body_silence);
        Ok((head, body))
    }

    /// An idle connection that is still open and that `requester` may use (see the
    /// module documentation): none for a first request; one its own client connection
    /// used if any, else the most recently returned.
    fn checkout(&self, upstream: &Authority, requester: Requester) -> Option<Connection> {
        if requester.first {
            return None;
        }
        let mut idles = self.shared.lock();
        let list = idles.by_upstream.get_mut(upstream)?;
        let timeout = self.shared.timeouts.idle;
        while let Some(top) = list.len().checked_sub(1) {
            let own = list
                .iter()
                .rev()
                .take(OWN_SEARCH_DEPTH)
                .position(|idle| idle.owner == requester.conn);
            // The top one moves into the gap: the order near the top matters little, and
            // nothing is shifted.
            let idle = list.swap_remove(own.map_or(top, |from_top| top - from_top));
            if idle.since.elapsed() < timeout && idle.conn.is_reusable() {
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
        let connecting = Connection::connect(upstream.as_str(), self.shared.timeouts.connect);
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
    /// The client connection the response was for: the connection's owner from now on.
    owner: u64,
}

impl Home {
    /// Pools the connection. Now and then (every half idle timeout) also closes the
    /// connections idle for longer than the timeout, including those to upstreams that
    /// no request asks for any more.
    pub(crate) fn give(self, mut conn: Connection) {
        conn.shrink_for_idle();
        let now = Instant::now();
        let mut idles = self.pool.lock();
        let timeout = self.pool.timeouts.idle;
        if now.duration_since(idles.swept) >= timeout / 2 {
            idles.swept = now;
            idles.by_upstream.retain(|_, list| {
                list.retain(|idle| now.duration_since(idle.since) < timeout);
                !list.is_empty()
            });
        }
        let list = idles.by_upstream.entry(self.upstream).or_default();
        if list.len() >= MAX_IDLE_PER_UPSTREAM {
            list.remove(0);
        }
        list.push(Idle {
            owner: self.owner,
            since: now,
            conn,
        });
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
        pool.send(upstream, &request, OutgoingBody::empty(None), CLIENT)
            .await
    }

    /// A client connection past its first request.
    const CLIENT: Requester = Requester {
        conn: 7,
        first: false,
    };

    fn pool() -> Pool {
        Pool::new(PoolTimeouts {
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(60),
            body_silence: Duration::from_secs(60),
        })
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

    #[tokio::test]
    async fn a_first_request_never_gets_another_clients_connection() {
        let (upstream, accepted) = upstream("hello", usize::MAX).await;
        let pool = pool();
        let send = |requester: Requester| {
            let (pool, upstream) = (pool.clone(), upstream.clone());
            async move {
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::HOST, upstream.as_str().parse().unwrap());
                let path = http::uri::PathAndQuery::from_static("/");
                let request = RequestHead::encode(&http::Method::GET, &path, &headers, false);
                let sent = pool.send(&upstream, &request, OutgoingBody::empty(None), requester);
                read(sent.await.unwrap()).await
            }
        };
        send(Requester {
            conn: 1,
            first: true,
        })
        .await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        send(Requester {
            conn: 2,
            first: true,
        })
        .await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "client 2's first request opens its own"
        );
        // Client 1 again: its own connection, although client 2's was returned last.
        send(Requester {
            conn: 1,
            first: false,
        })
        .await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let mut idle_owners: Vec<u64> = pool.shared.lock().by_upstream[&upstream]
            .iter()
            .map(|idle| idle.owner)
            .collect();
        idle_owners.sort_unstable();
        assert_eq!(idle_owners, [1, 2], "client 1 took back its own");
        // A later request of a client with no connection of its own takes any.
        send(Requester {
            conn: 3,
            first: false,
        })
        .await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
