//! The accept loop both binaries use for their traffic and admin listeners.
//!
//! It takes an already-bound listener and a stop token, so tests and binaries start it the
//! same way. Each connection speaks HTTP/1.1 or HTTP/2 (detected from its first bytes), and
//! nothing a client does can hold resources without a deadline:
//!
//! | what the client does | what ends it |
//! | --- | --- |
//! | connects beyond the connection limit | closed at once ([`admission`]) |
//! | is a peer that must send a PROXY protocol header and sends none, a broken one or half of one | closed after the header read timeout ([`proxy_protocol`]) |
//! | opens a TLS listener's connection and stalls in the handshake | closed after the handshake timeout ([`crate::tls`]) |
//! | sends nothing, part of a request head or of the HTTP/2 preface | closed after the header read timeout (`connection`) |
//! | keeps an idle HTTP/1 or HTTP/2 connection after its last response | closed after the header read timeout |
//! | stops reading a response | closed after the idle timeout (`client_io`) |
//! | stops sending a request body | 408 after the idle timeout (`crate::body`) |

pub mod admission;
mod client_io;
mod connection;
pub mod listeners;
pub mod proxy_protocol;
pub mod stats;

use crate::access_log::{AccessLog, Pending};
use crate::body::Body;
use crate::tls::{TlsInfo, TlsServer};
use admission::Admission;
use client_io::ClientIo;
use connection::{Close, ConnState, Tracked};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use stats::ServeStats;
use stats::Silence;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection closed for silence, or stopped at shutdown, gets to say goodbye
/// (an HTTP/2 GOAWAY) before it is dropped.
const GOODBYE: Duration = Duration::from_secs(1);

/// The two ends of the connection a request arrived on, and where the request stands on
/// it. `local` is what the agent looks its route up by (Apache's `SERVER_ADDR`); `id` and
/// `first_request` decide which pooled upstream connections the request may use (see
/// `crate::upstream::pool`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub local: SocketAddr,
    /// The client: the peer, or the source a trusted balancer's PROXY protocol header named.
    pub remote: SocketAddr,
    /// Unique in this process.
    pub id: u64,
    /// The first request made on this connection.
    pub first_request: bool,
    /// What the TLS handshake negotiated, on a TLS listener.
    pub tls: Option<Arc<TlsInfo>>,
}

impl ConnInfo {
    /// On whose behalf a request of this connection goes upstream.
    pub fn requester(&self) -> crate::upstream::Requester {
        crate::upstream::Requester {
            conn: self.id,
            first: self.first_request,
        }
    }

    /// Where a request of this connection came from, for the `X-Forwarded-*` headers.
    pub fn origin(&self, forwarded: crate::headers::Forwarded) -> crate::upstream::forward::Origin {
        crate::upstream::forward::Origin {
            client: self.remote,
            proto: if self.tls.is_some() { "https" } else { "http" },
            forwarded,
        }
    }
}

/// Answers requests. Implemented by the proxy, the agent and their admin endpoints.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Where this handler's requests are logged, if anywhere.
    fn access_log(&self) -> Option<&AccessLog> {
        None
    }

    /// Whether a connection from `peer` must start with a PROXY protocol header (see
    /// [`proxy_protocol`]).
    fn expects_proxy_header(&self, _peer: IpAddr) -> bool {
        false
    }

    /// The client a request is from, for the access log: the peer, unless the handler
    /// knows the hops in front (see [`crate::headers::client_address`]).
    fn client_address(&self, _request: &Request<Incoming>, conn: &ConnInfo) -> IpAddr {
        conn.remote.ip().to_canonical()
    }
}

/// Limits against slow, silent and oversized clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time a client has, after the accept or after its last response, to send a
    /// complete request head; then the connection is closed.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request.
    pub max_headers: usize,
    /// How long a write to a client may wait (the client does not read) before the
    /// connection is closed.
    pub idle_timeout: Duration,
}

/// The time a client has for a complete request head, and an idle connection before it
/// is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// Serves `listener` until `stop` is cancelled, then stops accepting (the listener is
/// closed, so new connections are refused), lets open connections finish their in-flight
/// requests (HTTP/2 clients get a GOAWAY) and returns once they have, or after `grace`.
/// Returns whether every connection finished in time. `admission` is shared by every
/// listener of the group (all workers' listeners of the traffic address, say).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
    grace: Duration,
) -> bool {
    accept_loop(listener, handler, limits, admission, stop, grace, None).await
}

/// [`serve`] for a TLS listener: every connection first completes a TLS handshake, in its
/// own task, within `tls`'s handshake timeout.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
    grace: Duration,
    tls: Arc<TlsServer>,
) -> bool {
    accept_loop(listener, handler, limits, admission, stop, grace, Some(tls)).await
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
    grace: Duration,
    tls: Option<Arc<TlsServer>>,
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
    let connections = TaskTracker::new();
    // Every open connection, for the sweeper.
    let mut live: Vec<Weak<ConnState>> = Vec::new();
    let timeout = limits.header_read_timeout;
    let mut sweep = tokio::time::interval(sweep_interval(timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            _ = sweep.tick() => {
                sweep_idle(&mut live, timeout, &admission);
                continue;
            }
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
        let Some(slot) = admission.admit() else {
            tracing::debug!(client = %remote, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            local,
            remote,
            id: next_connection_id(),
            first_request: true,
            tls: None,
        };
        let io = ClientIo::new(stream, limits.idle_timeout, slot, admission.stats().clone());
        let state = ConnState::new();
        live.push(Arc::downgrade(&state));
        connections.spawn(open_connection(
            io,
            conn,
            state,
            handler.clone(),
            builder.clone(),
            tls.clone(),
            admission.stats().clone(),
            timeout,
        ));
    }
    drop(listener);
    for state in live.iter().filter_map(Weak::upgrade) {
        state.ask(Close::Shutdown);
    }
    connections.close();
    tokio::time::timeout(grace, connections.wait())
        .await
        .is_ok()
}

/// How often the sweeper looks for idle connections: a quarter of the timeout, so a
/// connection is closed at most a quarter late, and at least every second.
fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Asks every connection idle for `timeout` to close; forgets the closed ones.
fn sweep_idle(live: &mut Vec<Weak<ConnState>>, timeout: Duration, admission: &Admission) {
    live.retain(|weak| {
        let Some(state) = weak.upgrade() else {
            return false;
        };
        if state.idle_left(timeout).is_some_and(|left| left.is_zero()) {
            let silence = if state.served_any() {
                Silence::KeepAlive
            } else {
                Silence::FirstRequest
            };
            admission.stats().silent(silence);
            state.ask(Close::Idle);
            return false;
        }
        true
    });
}

/// The steps of a connection before HTTP, in its own task (the accept loop never waits
/// on a client): the PROXY protocol header from a peer that must send one (within the
/// header read timeout), then [`secure_connection`].
#[allow(clippy::too_many_arguments)]
async fn open_connection<H: Handler>(
    io: ClientIo,
    mut conn: ConnInfo,
    state: Arc<ConnState>,
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<TlsServer>>,
    stats: Arc<ServeStats>,
    header_timeout: Duration,
) {
    if !handler.expects_proxy_header(conn.remote.ip()) {
        return secure_connection(io, conn, state, handler, builder, tls, stats).await;
    }
    match proxy_protocol::read_header(io, header_timeout).await {
        Ok((from, io)) => {
            if let proxy_protocol::ProxiedFrom::Client { source, .. } = from {
                conn.remote = source;
            }
            secure_connection(io, conn, state, handler, builder, tls, stats).await;
        }
        Err(error) => {
            stats.client_fault(stats::ClientFault::ProxyHeader);
            tracing::debug!(peer = %conn.remote, %error, "closing a connection without a valid PROXY protocol header");
        }
    }
}

/// The TLS handshake on a TLS listener, then [`serve_connection`].
async fn secure_connection<H, IO>(
    io: IO,
    conn: ConnInfo,
    state: Arc<ConnState>,
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<TlsServer>>,
    stats: Arc<ServeStats>,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = tls else {
        return serve_connection(io, conn, state, handler, builder, stats).await;
    };
    if let Some((stream, info)) = terminate_tls(&tls, io, &state).await {
        let conn = ConnInfo {
            tls: Some(info),
            ..conn
        };
        serve_connection(stream, conn, state, handler, builder, stats).await;
    }
}

/// The TLS handshake, within its own deadline. A shutdown ends it at once; the sweeper's
/// idle close does not (the handshake timeout is what governs a handshake), but a
/// connection that took longer than the header read timeout to get here is then closed
/// right after, having sent no request in time.
async fn terminate_tls<IO>(
    tls: &TlsServer,
    io: IO,
    state: &ConnState,
) -> Option<(tokio_rustls::server::TlsStream<IO>, Arc<TlsInfo>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let shutdown = std::future::poll_fn(|cx| match state.asked(cx) {
        Some(Close::Shutdown) => Poll::Ready(()),
        _ => Poll::Pending,
    });
    tls.handshake(io, shutdown).await
}

/// One connection, from its accept (or handshake) to its close: served by hyper, closed
/// gracefully when the sweeper asks (idle, or shutting down).
async fn serve_connection<H, IO>(
    io: IO,
    conn: ConnInfo,
    state: Arc<ConnState>,
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    stats: Arc<ServeStats>,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = state.clone();
    let remote = conn.remote;
    let faults = stats.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let started = Instant::now();
        let in_flight = requests.begin();
        let conn = ConnInfo {
            first_request: in_flight.is_first(),
            ..conn.clone()
        };
        let handler = handler.clone();
        let stats = stats.clone();
        async move {
            let pending = handler.access_log().map(|log| {
                let client = handler.client_address(&request, &conn);
                Pending::new(log, &request, client, conn.tls.clone(), started)
            });
            let response = handler.handle(request, conn).await;
            let (mut head, mut body) = response.into_parts();
            stats.responded(head.status);
            let pending = pending.map(|mut pending| {
                let fields = crate::body::take_log_fields(&mut head, &mut body);
                pending.respond(head.status, fields);
                pending
            });
            let body = Tracked::new(body, in_flight, stats, started, pending);
            Ok::<_, Infallible>(Response::from_parts(head, body))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = None;
    let mut goodbye: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let result = std::future::poll_fn(|cx| {
        if closing.is_none()
            && let Some(close) = state.asked(cx)
        {
            closing = Some(close);
            connection.as_mut().graceful_shutdown();
            if close == Close::Idle {
                tracing::debug!(client = %remote, "closing a connection that sent no complete request in time");
                goodbye = Some(Box::pin(tokio::time::sleep(GOODBYE)));
            }
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        match goodbye.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    if let Err(error) = result {
        if let Some(fault) = head_fault(&*error) {
            faults.client_fault(fault);
        }
        tracing::debug!(client = %remote, %error, "connection ended with an error");
    }
}

/// The client's mistake a connection's error is, when hyper refused its request head (and
/// answered 400 or 431 itself).
fn head_fault(error: &(dyn std::error::Error + 'static)) -> Option<stats::ClientFault> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if error.is_parse_too_large() {
        Some(stats::ClientFault::HeadTooLarge)
    } else if error.is_parse() {
        Some(stats::ClientFault::HeadInvalid)
    } else {
        None
    }
}

/// Binds a listener, with a message that names the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
