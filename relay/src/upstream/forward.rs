//! Sending one request on to an upstream and bringing its response back.
//!
//! Upstreams are spoken to in HTTP/1.1 over a keep-alive pool (see [`crate::upstream`]),
//! whatever the client spoke.
//! Bodies stream in both directions; nothing is buffered whole. A protocol upgrade (a
//! WebSocket handshake) that the upstream accepts with `101` becomes a byte tunnel between
//! the two connections, tracked so that shutdown can wait for it.
//!
//! Every failure says whose it is ([`ErrorSource`]): the client's (a broken or stalled
//! upload: 400, 408), the upstream's (refused, silent, broken: 502, 504) or our own (500).
//! Only the upstream's count against it.

use crate::body::{OutgoingBody, Reclaim, Streamed, UploadError};
use crate::clock::now_ms;
use crate::headers::{self, Forwarded};
use crate::upstream::connection::ExchangeError;
use crate::upstream::{
    BodyReader, Connection, Pool, PoolError, PoolTimeouts, RequestHead, Requester, ResponseHead,
};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::task::TaskTracker;

/// Timeouts of exchanges with upstreams.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Silence allowed before the response head: counted from the request, or from the
    /// last upload bytes that moved (see `Upstreams::exchange`).
    pub response_header: Duration,
    /// How long an unused pooled connection is kept.
    pub pool_idle: Duration,
    /// Once a request is under way, the longest time no byte may move where one is
    /// awaited: the client's upload (then 408), the upstream's response body (then the
    /// client's connection is cut).
    pub inactivity: Duration,
    /// The longest a WebSocket (or other upgraded) tunnel may carry no byte either way.
    pub tunnel_idle: Duration,
}

/// Whose fault a failed exchange is. It decides the status, the log level, whether the
/// upstream is held responsible (counted, put in error) and whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client: a broken or stalled upload. Never counted against an upstream.
    Client,
    /// The upstream: refused, too slow, or broke the exchange.
    Upstream,
    /// This process: a request it could not build.
    Internal,
}

/// Why a request could not be forwarded. The kind decides the status the client gets and
/// whether another upstream may be tried.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made: nothing was sent, so trying elsewhere is safe.
    #[error("cannot connect to {upstream}: {source}")]
    Connect {
        upstream: Authority,
        #[source]
        source: PoolError,
    },
    /// Nothing moved for `timeout`: no response head, and no upload progress either.
    #[error(
        "{upstream} sent no response headers within {timeout:?} (counted from the request, or from the last bytes of its upload that moved)"
    )]
    Timeout {
        upstream: Authority,
        timeout: Duration,
    },
    /// The request (and maybe part of its body) was sent: never replayed.
    #[error("request to {upstream} failed: {source}")]
    Upstream {
        upstream: Authority,
        #[source]
        source: PoolError,
    },
    #[error("{upstream} switched protocols for a request that asked for no upgrade")]
    UnaskedUpgrade { upstream: Authority },
    /// The client's request body broke off or had invalid framing.
    #[error("the request body from the client is broken: {0}")]
    ClientBody(hyper::Error),
    /// The client stopped sending its request body.
    #[error("the client sent no request body bytes for {0:?}")]
    ClientStalled(Duration),
    #[error("cannot build the upstream request: {0}")]
    Internal(#[from] http::Error),
}

impl ForwardError {
    pub fn source(&self) -> ErrorSource {
        match self {
            ForwardError::ClientBody(_) | ForwardError::ClientStalled(_) => ErrorSource::Client,
            ForwardError::Internal(_) => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    /// What the client gets: 400 or 408 for its own upload's failure, 502 when the
    /// upstream failed, 504 when it was too slow, 500 for our own.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ForwardError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ForwardError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The client's mistake this is, if it is one (for `stickyroute_client_faults_total`).
    pub fn client_fault(&self) -> Option<crate::serve::stats::ClientFault> {
        use crate::serve::stats::ClientFault;
        match self {
            ForwardError::ClientBody(_) => Some(ClientFault::UploadBroken),
            ForwardError::ClientStalled(_) => Some(ClientFault::UploadStalled),
            _ => None,
        }
    }

    /// What went wrong, for the upstream error counters; `None` when it was not the
    /// upstream's fault.
    pub fn failure(&self) -> Option<UpstreamFailure> {
        use ExchangeError as E;
        match self {
            ForwardError::Connect { .. } => Some(UpstreamFailure::Connect),
            ForwardError::Timeout { .. } => Some(UpstreamFailure::Timeout),
            ForwardError::Upstream { source, .. } => Some(match source {
                PoolError::Connect(_) => UpstreamFailure::Connect,
                PoolError::Exchange(E::Head(_) | E::ClosedInHead) => UpstreamFailure::Protocol,
                PoolError::Exchange(E::ClientBody(_)) => return None,
                PoolError::Exchange(E::Io(error)) => UpstreamFailure::of_io(error),
                PoolError::Exchange(_) => UpstreamFailure::Reset,
            }),
            ForwardError::UnaskedUpgrade { .. } => Some(UpstreamFailure::Protocol),
            _ => None,
        }
    }

    /// Whether nothing reached the upstream (so another one may be tried).
    pub fn is_connect(&self) -> bool {
        matches!(self, ForwardError::Connect { .. })
    }
}

/// How an exchange with an upstream failed: the `kind` label of the upstream error
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect,
    /// No response head in time, or a response body that stopped.
    Timeout,
    /// The connection was closed or reset.
    Reset,
    /// The upstream broke HTTP (an invalid response head or body framing).
    Protocol,
    /// It answered a `--failonstatus` code.
    Status,
}

impl UpstreamFailure {
    pub const ALL: [UpstreamFailure; 5] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Timeout,
        UpstreamFailure::Reset,
        UpstreamFailure::Protocol,
        UpstreamFailure::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::Status => "failonstatus",
        }
    }

    /// A failure in the middle of a response body, by its I/O error.
    pub fn of_io(error: &std::io::Error) -> UpstreamFailure {
        match error.kind() {
            std::io::ErrorKind::TimedOut => UpstreamFailure::Timeout,
            std::io::ErrorKind::InvalidData => UpstreamFailure::Protocol,
            _ => UpstreamFailure::Reset,
        }
    }
}

/// A keep-alive client for HTTP/1.1 upstreams, shared by every request of one worker.
#[derive(Clone)]
pub struct Upstreams {
    pool: Pool,
    timeouts: UpstreamTimeouts,
    tunnels: TaskTracker,
}

/// Who the request came from and how it reached us, for the `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub client: SocketAddr,
    pub proto: &'static str,
    pub forwarded: Forwarded,
}

/// A request head rewritten for upstreams once (hop-by-hop headers gone, `Host` kept,
/// `X-Forwarded-*` added) and encoded, so it can be sent to a second upstream after a
/// failed connection attempt as it is.
pub struct Prepared {
    head: RequestHead,
    upgrade: Option<OnUpgrade>,
}

impl Prepared {
    /// Splits `request` into the prepared head and its body. The request has been
    /// admitted ([`crate::request::admit`]): its `Host` header is the host to forward.
    pub fn new(mut request: Request<Incoming>, origin: Origin) -> (Self, Incoming) {
        let upgrade = (request.version() == Version::HTTP_11
            && headers::wants_upgrade(request.headers()))
        .then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let host = parts.headers.get(header::HOST).cloned();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        headers::add_forwarded(
            &mut parts.headers,
            origin.client.ip(),
            origin.proto,
            host,
            origin.forwarded,
        );
        // Origin-form target, whatever form the client used (an absolute-form target's
        // authority became the Host, as RFC 9112 §3.2.2 asks).
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let has_body = !http_body::Body::is_end_stream(&body);
        let head = RequestHead::encode(&parts.method, &path, &parts.headers, has_body);
        (Self { head, upgrade }, body)
    }
}

impl Upstreams {
    /// `tunnels` tracks upgraded connections so that shutdown can wait for them.
    pub fn new(timeouts: UpstreamTimeouts, tunnels: TaskTracker) -> Self {
        Self {
            pool: Pool::new(PoolTimeouts {
                connect: timeouts.connect,
                idle: timeouts.pool_idle,
                body_silence: timeouts.inactivity,
            }),
            timeouts,
            tunnels,
        }
    }

    /// The client's request body, ready to be sent (and handed back if no connection
    /// could be made); `meter` counts its bytes.
    pub fn upload(
        &self,
        body: Incoming,
        meter: Option<Arc<dyn crate::body::Meter>>,
    ) -> (OutgoingBody, Option<Reclaim>) {
        OutgoingBody::guard(body, meter, self.timeouts.inactivity)
    }

    /// Forwards an admitted `request` to `upstream` once, streaming both bodies; `meter`
    /// counts the upload.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        upstream: &Authority,
        origin: Origin,
        requester: Requester,
        meter: Option<Arc<dyn crate::body::Meter>>,
    ) -> Result<Response<Streamed>, ForwardError> {
        let (mut head, body) = Prepared::new(request, origin);
        let (body, _) = self.upload(body, meter);
        self.send(&mut head, body, upstream, requester).await
    }

    /// Sends the prepared request to `upstream`; `head` stays usable for another attempt.
    pub async fn send(
        &self,
        head: &mut Prepared,
        body: OutgoingBody,
        upstream: &Authority,
        requester: Requester,
    ) -> Result<Response<Streamed>, ForwardError> {
        let (answer, reader) = self
            .exchange(
                upstream,
                &head.head,
                body,
                self.timeouts.response_header,
                requester,
            )
            .await?;
        let upgrading = answer.status == StatusCode::SWITCHING_PROTOCOLS;
        let reader = if upgrading {
            let (Some(client_side), Some(upstream_side)) =
                (head.upgrade.take(), reader.into_upgraded())
            else {
                return Err(ForwardError::UnaskedUpgrade {
                    upstream: upstream.clone(),
                });
            };
            let name = upstream.clone();
            let idle = self.timeouts.tunnel_idle;
            self.tunnels.spawn(async move {
                tunnel(client_side, upstream_side, name, idle).await;
            });
            BodyReader::empty()
        } else {
            reader
        };
        let mut response = response(answer, Streamed::new(reader));
        headers::strip_hop_by_hop(response.headers_mut(), upgrading);
        Ok(response)
    }
}

impl Upstreams {
    /// `GET path` on `upstream` (health checks, agents' `/status`): the response head must
    /// arrive within `timeout`.
    pub async fn get(
        &self,
        upstream: &Authority,
        path: &str,
        timeout: Duration,
    ) -> Result<Response<Streamed>, ForwardError> {
        let path = PathAndQuery::try_from(path).map_err(http::Error::from)?;
        let mut headers = HeaderMap::new();
        if let Ok(host) = HeaderValue::from_str(upstream.as_str()) {
            headers.insert(header::HOST, host);
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("stickyroute-health-check"),
        );
        let request = RequestHead::encode(&Method::GET, &path, &headers, false);
        let (answer, reader) = self
            .exchange(
                upstream,
                &request,
                OutgoingBody::empty(None),
                timeout,
                Requester::PROBE,
            )
            .await?;
        Ok(response(answer, Streamed::new(reader)))
    }

    /// One request through the pool; the response head must arrive within `timeout` of
    /// the last moment anything moved: the request, or the last bytes of its upload. A
    /// big upload over a slow link therefore runs as long as it keeps moving (as Apache's
    /// and nginx's inactivity timeouts allow). While the upload waits for the client, the
    /// client's stall is not the upstream's: the body times it (408) and the deadline
    /// here is put off.
    async fn exchange(
        &self,
        upstream: &Authority,
        request: &RequestHead,
        body: OutgoingBody,
        timeout: Duration,
        requester: Requester,
    ) -> Result<(ResponseHead, BodyReader), ForwardError> {
        let progress = body.progress();
        let sending = self.pool.send(upstream, request, body, requester);
        tokio::pin!(sending);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            match tokio::time::timeout_at(deadline, &mut sending).await {
                Ok(outcome) => break outcome,
                Err(_) => {
                    if progress.as_ref().is_some_and(|p| p.awaiting_client()) {
                        deadline += timeout;
                        continue;
                    }
                    let moved = progress.as_ref().map(|p| p.last() + timeout);
                    match moved.map(tokio::time::Instant::from_std) {
                        Some(later) if later > deadline => deadline = later,
                        _ => {
                            return Err(ForwardError::Timeout {
                                upstream: upstream.clone(),
                                timeout,
                            });
                        }
                    }
                }
            }
        };
        match outcome {
            Err(PoolError::Exchange(ExchangeError::ClientBody(UploadError::Broken(error)))) => {
                Err(ForwardError::ClientBody(error))
            }
            Err(PoolError::Exchange(ExchangeError::ClientBody(UploadError::Stalled(idle)))) => {
                Err(ForwardError::ClientStalled(idle))
            }
            Err(source @ PoolError::Connect(_)) => Err(ForwardError::Connect {
                upstream: upstream.clone(),
                source,
            }),
            Err(source) => Err(ForwardError::Upstream {
                upstream: upstream.clone(),
                source,
            }),
            Ok(answer) => Ok(answer),
        }
    }
}

/// The response for the client, from the upstream's head and body.
fn response(head: ResponseHead, body: Streamed) -> Response<Streamed> {
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        response.extensions_mut().insert(reason);
    }
    response
}

/// Copies bytes both ways between an upgraded client and upstream until either side
/// closes, or no byte moved either way for `idle`. Bytes the upstream sent right after its
/// `101` answer go to the client first.
async fn tunnel(client: OnUpgrade, upstream: Connection, name: Authority, idle: Duration) {
    let client = match client.await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(upstream = %name, %error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let (upstream, early) = upstream.into_parts();
    if !early.is_empty()
        && let Err(error) = client.write_all(&early).await
    {
        tracing::debug!(upstream = %name, %error, "tunnel ended with an error");
        return;
    }
    let activity = Arc::new(AtomicU64::new(now_ms()));
    let mut client = Active::new(client, activity.clone());
    let mut upstream = Active::new(upstream, activity.clone());
    let copying = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copying);
    loop {
        let quiet = Duration::from_millis(now_ms().saturating_sub(activity.load(Relaxed)));
        let left = idle.saturating_sub(quiet);
        if left.is_zero() {
            tracing::debug!(upstream = %name, ?idle, "tunnel idle; closed");
            return;
        }
        tokio::select! {
            copied = &mut copying => {
                match copied {
                    Ok((up, down)) => tracing::debug!(upstream = %name, up, down, "tunnel closed"),
                    Err(error) => tracing::debug!(upstream = %name, %error, "tunnel ended with an error"),
                }
                return;
            }
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// One side of a tunnel, noting when bytes last moved through it.
struct Active<T> {
    io: T,
    activity: Arc<AtomicU64>,
}

impl<T> Active<T> {
    fn new(io: T, activity: Arc<AtomicU64>) -> Self {
        Self { io, activity }
    }

    fn moved(&self) {
        self.activity.store(now_ms(), Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
