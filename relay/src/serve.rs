//! The accept loop both binaries use for their traffic and admin listeners.
//!
//! It takes an already-bound listener and a stop token, so tests and binaries start it the
//! same way. Each connection speaks HTTP/1.1 or HTTP/2 (detected from its first bytes), with
//! limits that keep slow or oversized clients from holding resources.

use crate::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The two ends of the connection a request arrived on. `local` is what the agent looks
/// its route up by (Apache's `SERVER_ADDR`).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Answers requests. Implemented by the proxy, the agent and their admin endpoints.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Limits against slow and oversized clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time a client has to send a complete request head (also bounds idle keep-alive).
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request.
    pub max_headers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// Serves `listener` until `stop` is cancelled, then stops accepting (the listener is
/// closed, so new connections are refused), lets open connections finish their in-flight
/// requests (HTTP/2 clients get a GOAWAY) and returns once they have, or after `grace`.
/// Returns whether every connection finished in time.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    stop: CancellationToken,
    grace: Duration,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        // Head and body copied into one buffer and written with `send`: for the small
        // responses most requests get, cheaper in the kernel than `writev` of two pieces.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo { local, remote };
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request, conn).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(client = %remote, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
}

/// Binds a listener, with a message that names the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
