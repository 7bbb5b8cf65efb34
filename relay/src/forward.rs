//! Sending one request on to an upstream and bringing its response back.
//!
//! Upstreams are spoken to in HTTP/1.1 over a keep-alive pool (see [`crate::upstream`]),
//! whatever the client spoke.
//! Bodies stream in both directions; nothing is buffered whole. A protocol upgrade (a
//! WebSocket handshake) that the upstream accepts with `101` becomes a byte tunnel between
//! the two connections, tracked so that shutdown can wait for it.

use crate::body::{OutgoingBody, Streamed};
use crate::headers::{self, Forwarded};
use crate::upstream::{BodyReader, Connection, Pool, PoolError, RequestHead, ResponseHead};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::task::TaskTracker;

/// Timeouts towards upstreams.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Silence allowed before the response head: counted from the request, or from the
    /// last upload bytes that moved (see `Upstreams::exchange`).
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
/// `X-Forwarded-*` added) and encoded, so it can be sent to a second upstream after a
/// failed connection attempt as it is.
pub struct Prepared {
    head: RequestHead,
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
        if let Some(host) = &host
            && !parts.headers.contains_key(header::HOST)
        {
            parts.headers.insert(header::HOST, host.clone());
        }
        headers::add_forwarded(
            &mut parts.headers,
            origin.client.ip(),
            origin.proto,
            host,
            origin.forwarded,
        );
        // Origin-form target; the client's Host header is passed through as it came (or
        // set from an HTTP/2 client's :authority), never replaced by the upstream's address.
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
        self.send(&mut head, body, upstream).await
    }

    /// Sends the prepared request to `upstream`; `head` stays usable for another attempt.
    pub async fn send(
        &self,
        head: &mut Prepared,
        body: OutgoingBody,
        upstream: &Authority,
    ) -> Result<Response<Streamed>, ForwardError> {
        let (answer, reader) = self
            .exchange(upstream, &head.head, body, self.response_header)
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
            self.tunnels.spawn(async move {
                tunnel(client_side, upstream_side, name).await;
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
            .exchange(upstream, &request, OutgoingBody::empty(None), timeout)
            .await?;
        Ok(response(answer, Streamed::new(reader)))
    }

    /// One request through the pool; the response head must arrive within `timeout` of
    /// the last moment anything moved: the request, or the last bytes of its upload. A
    /// big upload over a slow link therefore runs as long as it keeps moving (as Apache's
    /// and nginx's inactivity timeouts allow), while a stalled one ends after `timeout`.
    async fn exchange(
        &self,
        upstream: &Authority,
        request: &RequestHead,
        body: OutgoingBody,
        timeout: Duration,
    ) -> Result<(ResponseHead, BodyReader), ForwardError> {
        let progress = body.progress();
        let sending = self.pool.send(upstream, request, body);
        tokio::pin!(sending);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            match tokio::time::timeout_at(deadline, &mut sending).await {
                Ok(outcome) => break outcome,
                Err(_) => {
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

/// The `Host` value for an HTTP/2 request, which carries it as `:authority` in the URI.
fn authority_header(uri: &Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// Copies bytes both ways between an upgraded client and upstream until either side
/// closes. Bytes the upstream sent right after its `101` answer go to the client first.
async fn tunnel(client: OnUpgrade, upstream: Connection, name: Authority) {
    let client = match client.await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(upstream = %name, %error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let (mut upstream, early) = upstream.into_parts();
    if !early.is_empty()
        && let Err(error) = client.write_all(&early).await
    {
        tracing::debug!(upstream = %name, %error, "tunnel ended with an error");
        return;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(upstream = %name, up, down, "tunnel closed"),
        Err(error) => tracing::debug!(upstream = %name, %error, "tunnel ended with an error"),
    }
}
