//! What one access log line says, gathered in three places: the serving side knows the
//! request, the status, the bytes sent and when the response body ended; the handler
//! adds what only it knows ([`Fields`]: the member, its time to the response head, how
//! the member was chosen, the cookie decision) as a response extension.

use crate::tls::TlsInfo;
use http::{HeaderValue, Method, Version};
use routemap::RouteId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

/// What a handler adds to its response for the access log (`response.extensions`).
#[derive(Clone, Default)]
pub struct Fields {
    /// The member (or app) that answered: its route and address.
    pub route: Option<RouteId>,
    pub upstream: Option<SocketAddr>,
    /// From sending the request to the member's response head.
    pub upstream_head: Option<Duration>,
    /// How the member was chosen (the proxy's sticky outcome).
    pub sticky: Option<&'static str>,
    /// The session's route was not the route of the member that served it (Apache's
    /// `BALANCER_ROUTE_CHANGED`).
    pub route_changed: Option<bool>,
    /// The agent's cookie decision: `issued` or `none`, and why.
    pub cookie: Option<&'static str>,
    pub cookie_reason: Option<&'static str>,
    /// Request body bytes forwarded, as the exchange's meter counted them.
    pub uploaded: Option<Arc<dyn crate::body::Meter>>,
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields")
            .field("route", &self.route)
            .field("upstream", &self.upstream)
            .field("sticky", &self.sticky)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

/// Request body bytes sent upstream for one request, counted by the forwarding meter.
#[derive(Debug, Default)]
pub struct UploadCount(AtomicU64);

impl UploadCount {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counts a request's upload where no other meter does (the agent's).
impl crate::body::Meter for UploadCount {
    fn received(&self, bytes: u64) {
        self.add(bytes);
    }

    fn sent(&self, _bytes: u64) {}

    fn failed(&self, _error: &std::io::Error) {}

    fn uploaded(&self) -> u64 {
        self.get()
    }
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request head was complete.
    pub time: SystemTime,
    /// After trusted-hop resolution.
    pub client: IpAddr,
    pub method: Method,
    /// The request's URI as it arrived (a reference-counted copy, not a new string).
    pub uri: http::Uri,
    pub version: Version,
    pub status: u16,
    pub response_bytes: u64,
    /// From the complete request head to the end of the response body.
    pub duration: Duration,
    pub tls: Option<Arc<TlsInfo>>,
    /// As sent, reference-counted: escaped (or made text) only when the line is written.
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub fields: Fields,
}

impl Record {
    /// The request's path and query (for an absolute-form or HTTP/2 request too), or the
    /// whole URI when it has none (`CONNECT host:port`, `OPTIONS *`).
    pub fn target(&self) -> std::borrow::Cow<'_, str> {
        match self.uri.path_and_query() {
            Some(pq) => pq.as_str().into(),
            None => self.uri.to_string().into(),
        }
    }

    /// Request body bytes forwarded.
    pub fn request_bytes(&self) -> u64 {
        self.fields
            .uploaded
            .as_ref()
            .map_or(0, |meter| meter.uploaded())
    }
}

/// `HTTP/1.1` and the like, as Apache's `%H` writes it.
pub fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
