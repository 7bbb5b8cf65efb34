//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker.
//!
//! Why not hyper-util's pooled client: for every HTTP/1 request it spawns a task that waits
//! for the connection to become idle again before returning it to the pool, and it keys
//! the pool by scheme and authority behind a shared lock. On the request path of a proxy
//! that is a task spawn and wake per request. Here a connection goes back to the pool from
//! the response body itself, the moment its last byte has been read: no task, no wake.
//!
//! A connection is reused only after its previous exchange ended cleanly; a response body
//! dropped half-read takes its connection with it (HTTP/1 cannot resynchronise). A request
//! that a reused connection could not even start (the upstream had just closed it) goes to
//! a fresh connection once, as the request was never written.

use crate::body::{OutgoingBody, Streamed};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most idle connections kept per upstream and worker; more are closed when returned.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

type Sender = SendRequest<OutgoingBody>;

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: nothing was sent.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The exchange failed after the request was (at least partly) written.
    #[error("{0}")]
    Exchange(hyper::Error),
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
    by_upstream: HashMap<Authority, Vec<Idle>>,
    /// When expired connections were last closed (see [`Return::give`]).
    swept: Instant,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Idles {
                    by_upstream: HashMap::new(),
                    swept: Instant::now(),
                }),
                connect_timeout,
                idle_timeout,
            }),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `upstream` and returns the response,
    /// whose body hands the connection back to the pool when it has been read to the end.
    pub async fn send(
        &self,
        upstream: &Authority,
        request: Request<OutgoingBody>,
    ) -> Result<Response<Streamed>, PoolError> {
        let (mut sender, reused) = match self.checkout(upstream).await {
            Some(sender) => (sender, true),
            None => (self.connect(upstream).await?, false),
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                // Never written: the reused connection was closed under us. A fresh one.
                Some(request) if reused => {
                    sender = self.connect(upstream).await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(PoolError::Exchange)?
                }
                _ => return Err(PoolError::Exchange(failed.into_error())),
            },
        };
        // An upgraded connection belongs to its tunnel from now on.
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let mut back = reusable.then(|| Return {
            pool: self.shared.clone(),
            upstream: upstream.clone(),
            sender,
        });
        let (parts, inner) = response.into_parts();
        if http_body::Body::is_end_stream(&inner)
            && let Some(back) = back.take()
        {
            back.give();
        }
        Ok(Response::from_parts(parts, Streamed::new(inner, back)))
    }

    /// The most recently used idle connection that is still open and ready.
    async fn checkout(&self, upstream: &Authority) -> Option<Sender> {
        loop {
            let idle = self.shared.lock().by_upstream.get_mut(upstream)?.pop()?;
            if idle.since.elapsed() >= self.shared.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Normally ready at once: it came back only after its exchange ended.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, upstream: &Authority) -> Result<Sender, PoolError> {
        let address = upstream.as_str();
        let stream = tokio::time::timeout(
            self.shared.connect_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await
        .map_err(|_| {
            PoolError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.shared.connect_timeout),
            ))
        })?
        .map_err(PoolError::Connect)?;
        // Request heads are small and written whole: no reason to wait for Nagle.
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Exchange)?;
        let name = upstream.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(upstream = %name, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Idles> {
        // Every holder only pushes or pops: the map is consistent even after a panic.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection on its way back to the pool, carried by the response body
/// ([`Streamed`]) until its last byte is read.
pub(crate) struct Return {
    pool: Arc<Shared>,
    upstream: Authority,
    sender: Sender,
}

impl Return {
    /// Pools the connection. Now and then (every half idle timeout) also closes the
    /// connections idle for longer than the timeout, including those to upstreams that
    /// no request asks for any more.
    pub(crate) fn give(self) {
        let now = Instant::now();
        let mut idles = self.pool.lock();
        if now.duration_since(idles.swept) >= self.pool.idle_timeout / 2 {
            idles.swept = now;
            let timeout = self.pool.idle_timeout;
            idles.by_upstream.retain(|_, list| {
                list.retain(|idle| {
                    now.duration_since(idle.since) < timeout && !idle.sender.is_closed()
                });
                !list.is_empty()
            });
        }
        let list = idles.by_upstream.entry(self.upstream).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                sender: self.sender,
                since: now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
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

    fn get(upstream: &Authority) -> Request<OutgoingBody> {
        Request::builder()
            .uri("/")
            .header("host", upstream.as_str())
            .body(OutgoingBody::empty(None))
            .unwrap()
    }

    fn pool() -> Pool {
        Pool::new(Duration::from_secs(2), Duration::from_secs(60))
    }

    async fn read(response: Response<Streamed>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (upstream, accepted) = upstream("hello", usize::MAX).await;
        let pool = pool();
        for _ in 0..20 {
            let response = pool.send(&upstream, get(&upstream)).await.unwrap();
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_takes_its_connection_with_it() {
        let (upstream, accepted) = upstream("a body that is never read", usize::MAX).await;
        let pool = pool();
        let unread = pool.send(&upstream, get(&upstream)).await.unwrap();
        drop(unread);
        let response = pool.send(&upstream, get(&upstream)).await.unwrap();
        assert_eq!(read(response).await, "a body that is never read");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced_without_failing_a_request() {
        let (upstream, accepted) = upstream("once", 1).await;
        let pool = pool();
        for i in 0..20 {
            let response = pool.send(&upstream, get(&upstream)).await;
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
        let sent = pool().send(&upstream, get(&upstream)).await;
        assert!(
            matches!(sent, Err(PoolError::Connect(_))),
            "not a connect error"
        );
    }
}
