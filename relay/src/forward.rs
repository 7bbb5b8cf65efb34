//! Sending one request on to an upstream and bringing its response back.
//!
//! Upstreams are spoken to in HTTP/1.1 over a keep-alive pool, whatever the client spoke.
//! Bodies stream in both directions; nothing is buffered whole. A protocol upgrade (a
//! WebSocket handshake) that the upstream accepts with `101` becomes a byte tunnel between
//! the two connections, tracked so that shutdown can wait for it.

use crate::body::{OutgoingBody, Streamed};
use crate::headers::{self, Forwarded};
use crate::pool::{Pool, PoolError};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Timeouts towards upstreams.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From sending the request head to receiving the response head.
    pub response_header: Duration,
    /// How long an unused pooled connection is kept.
    pub idle: Duration,
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
    #[error("{upstream} sent no response headers within {timeout:?}")]
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
    #[error("cannot build the upstream request: {0}")]
    BadRequest(#[from] http::Error),
}

impl ForwardError {
    /// What the client gets: 502 when the upstream failed, 504 when it was too slow.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether nothing reached the upstream (so another one may be tried).
    pub fn is_connect(&self) -> bool {
        matches!(self, ForwardError::Connect { .. })
    }
}

/// A keep-alive client for HTTP/1.1 upstreams, shared by every request of one worker.
#[derive(Clone)]
pub struct Upstreams {
    pool: Pool,
    response_header: Duration,
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
/// `X-Forwarded-*` added), so it can be sent to a second upstream after a failed
/// connection attempt.
pub struct Prepared {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    upgrade: Option<OnUpgrade>,
}

impl Prepared {
    /// Splits `request` into the prepared head and its body.
    pub fn new(mut request: Request<Incoming>, origin: Origin) -> (Self, Incoming) {
        let upgrade = (request.version() == Version::HTTP_11
            && headers::wants_upgrade(request.headers()))
        .then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let host = parts
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| authority_header(&parts.uri));
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        if let Some(host) = &host {
            parts.headers.insert(header::HOST, host.clone());
        }
        headers::add_forwarded(
            &mut parts.headers,
            origin.client.ip(),
            origin.proto,
            host,
            origin.forwarded,
        );
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let prepared = Self {
            method: parts.method,
            path,
            headers: parts.headers,
            upgrade,
        };
        (prepared, body)
    }
}

impl Upstreams {
    /// `tunnels` tracks upgraded connections so that shutdown can wait for them.
    pub fn new(timeouts: UpstreamTimeouts, tunnels: TaskTracker) -> Self {
        Self {
            pool: Pool::new(timeouts.connect, timeouts.idle),
            response_header: timeouts.response_header,
            tunnels,
        }
    }

    /// Forwards `request` to `upstream` once, streaming both bodies.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        upstream: &Authority,
        origin: Origin,
    ) -> Result<Response<Streamed>, ForwardError> {
        let (mut head, body) = Prepared::new(request, origin);
        let (body, _) = OutgoingBody::guard(body, None);
        self.send(&mut head, body, upstream, false).await
    }

    /// Sends the prepared request to `upstream`. With `keep_head` the head stays in `head`
    /// for another attempt (a copy is sent); without it, it is moved out.
    pub async fn send(
        &self,
        head: &mut Prepared,
        body: OutgoingBody,
        upstream: &Authority,
        keep_head: bool,
    ) -> Result<Response<Streamed>, ForwardError> {
        let headers = if keep_head {
            head.headers.clone()
        } else {
            std::mem::take(&mut head.headers)
        };
        // Origin-form target; the client's Host header is passed through as it came (or
        // set from an HTTP/2 client's :authority), never replaced by the upstream's address.
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = head.method.clone();
        *outgoing.uri_mut() = Uri::from(head.path.clone());
        *outgoing.headers_mut() = headers;
        *outgoing.version_mut() = Version::HTTP_11;

        let mut response = self
            .exchange(upstream, outgoing, self.response_header)
            .await?;

        match head.upgrade.take() {
            Some(client_side) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream_side = hyper::upgrade::on(&mut response);
                let name = upstream.clone();
                self.tunnels.spawn(async move {
                    tunnel(client_side, upstream_side, name).await;
                });
                headers::strip_hop_by_hop(response.headers_mut(), true);
            }
            _ => headers::strip_hop_by_hop(response.headers_mut(), false),
        }
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
        let mut request = Request::new(OutgoingBody::empty(None));
        *request.uri_mut() = Uri::try_from(path).map_err(http::Error::from)?;
        if let Ok(host) = HeaderValue::from_str(upstream.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static("stickyroute-health-check"),
        );
        self.exchange(upstream, request, timeout).await
    }

    /// One request through the pool; the response head must arrive within `timeout`.
    async fn exchange(
        &self,
        upstream: &Authority,
        request: Request<OutgoingBody>,
        timeout: Duration,
    ) -> Result<Response<Streamed>, ForwardError> {
        match tokio::time::timeout(timeout, self.pool.send(upstream, request)).await {
            Err(_) => Err(ForwardError::Timeout {
                upstream: upstream.clone(),
                timeout,
            }),
            Ok(Err(source @ PoolError::Connect(_))) => Err(ForwardError::Connect {
                upstream: upstream.clone(),
                source,
            }),
            Ok(Err(source)) => Err(ForwardError::Upstream {
                upstream: upstream.clone(),
                source,
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The `Host` value for an HTTP/2 request, which carries it as `:authority` in the URI.
fn authority_header(uri: &Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    name: Authority,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(upstream = %name, %error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(upstream = %name, up, down, "tunnel closed"),
        Err(error) => tracing::debug!(upstream = %name, %error, "tunnel ended with an error"),
    }
}
