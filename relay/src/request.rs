//! What a client's request must be before any of it is forwarded (RFC 9110, 9112, 9113).
//! A request that fails here is answered at once and never reaches an upstream: a proxy
//! that forwards what it does not understand lets the client and the upstream disagree
//! about the message, which is how request smuggling and cache poisoning start.
//!
//! | request | answer |
//! | --- | --- |
//! | `CONNECT` | 405: this is a reverse proxy, not a tunnel to anywhere |
//! | HTTP/1.1 without `Host`, more than one `Host`, or a `Host` that is not `host[:port]` | 400 |
//! | a transfer coding other than `chunked` (`gzip, chunked`) | 501: the body would reach the upstream decoded wrongly |
//!
//! The host the upstream gets is the request target's authority when there is one (an
//! absolute-form target, RFC 9112 §3.2.2; HTTP/2's `:authority`, RFC 9113 §8.3.1), else
//! the `Host` header: [`admit`] leaves it as the request's one `Host` header. (A final coding other than `chunked` never gets here: the HTTP/1
//! parser answers 400 itself, as RFC 9112 §6.3 requires, since such a body has no length.)

use crate::body::{self, Body};
use crate::headers::list_items;
use crate::serve::stats::{ClientFault, ServeStats};
use http::header::{ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use std::net::SocketAddr;

/// Why a request is refused; the status and a short reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

/// The answer to a refused request. The connection is closed after it: a client that
/// sent this may have framed the rest of its bytes wrongly too.
pub fn refusal_response(refusal: &Refusal) -> Response<Body> {
    let mut response = body::text(
        refusal.status,
        format!("{}: {}\n", refusal.status, refusal.reason),
    );
    let headers = response.headers_mut();
    if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(
            ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
        );
    }
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Admits `request` ([`admit`]): `None`; or counts the refusal and gives its answer.
pub fn admit_or_answer<B>(
    request: &mut Request<B>,
    stats: &ServeStats,
    client: SocketAddr,
) -> Option<Response<Body>> {
    let refusal = admit(request).err()?;
    stats.client_fault(ClientFault::Refused);
    tracing::debug!(%client, reason = refusal.reason, "request refused");
    Some(refusal_response(&refusal))
}

/// Checks `request` and, when it may be forwarded, leaves the host to forward as its one
/// `Host` header (none for an HTTP/1.0 request that named none).
pub fn admit<B>(request: &mut Request<B>) -> Result<(), Refusal> {
    match check(request)? {
        Host::Header => {}
        Host::Target(host) => {
            request.headers_mut().insert(HOST, host);
        }
        Host::None => {}
    }
    Ok(())
}

/// Where the host to forward comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// The request's one `Host` header, as it is.
    Header,
    /// The request target's authority (absolute form, HTTP/2 `:authority`), which differs
    /// from the `Host` header or replaces a missing one.
    Target(HeaderValue),
    /// An HTTP/1.0 request that names no host.
    None,
}

/// Checks `request`; on success, where the host to forward comes from.
pub fn check<B>(request: &Request<B>) -> Result<Host, Refusal> {
    if request.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    if request.version() <= Version::HTTP_11
        && request.headers().contains_key(TRANSFER_ENCODING)
        && !only_chunked(request)
    {
        return Err(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "transfer codings other than chunked are not supported",
        ));
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "more than one Host header",
        ));
    }
    if let Some(header) = header
        && !valid_host(header.as_bytes())
    {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid Host header"));
    }
    if let Some(authority) = request.uri().authority() {
        if !valid_host(authority.as_str().as_bytes()) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid authority in the request target",
            ));
        }
        if header.is_some_and(|h| h.as_bytes() == authority.as_str().as_bytes()) {
            return Ok(Host::Header);
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Host::Target)
            .map_err(|_| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid authority in the request target",
                )
            });
    }
    match header {
        Some(_) => Ok(Host::Header),
        None if request.version() == Version::HTTP_10 => Ok(Host::None),
        None => Err(Refusal::new(StatusCode::BAD_REQUEST, "no Host header")),
    }
}

/// `Transfer-Encoding: chunked` and nothing else, across all its fields.
fn only_chunked<B>(request: &Request<B>) -> bool {
    let mut codings = list_items(request.headers(), TRANSFER_ENCODING);
    codings
        .next()
        .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        && codings.next().is_none()
}

/// `host[:port]` (RFC 3986 §3.2.2): a registered name, an IPv4 address or a bracketed IPv6
/// address, and an optional numeric port; no user information. Checked on the bytes, with
/// no allocation: it runs for every request.
fn valid_host(bytes: &[u8]) -> bool {
    let (host_ok, rest) = match bytes.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(close) => {
                let (inside, after) = literal.split_at(close);
                let ok = std::str::from_utf8(inside)
                    .is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok());
                (ok, after.strip_prefix(b"]").unwrap_or(after))
            }
            None => (false, &b""[..]),
        },
        None => {
            let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
            let (name, after) = bytes.split_at(end);
            (!name.is_empty() && is_reg_name(name), after)
        }
    };
    host_ok
        && (rest.is_empty()
            || rest
                .strip_prefix(b":")
                .is_some_and(|port| port.iter().all(u8::is_ascii_digit)))
}

/// `*( unreserved / sub-delims )` (RFC 3986 §3.2.2). Percent-encoding, which the RFC
/// allows but no DNS name needs (international names travel as punycode), is refused, as
/// most HTTP stacks (the `http` crate's `Authority` among them) refuse it.
fn is_reg_name(name: &[u8]) -> bool {
    name.iter().all(|&b| REG_NAME[usize::from(b)])
}

/// The bytes of a registered name, as a table: this runs for every request.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    /// The host forwarded for an HTTP/1.1 `GET /` with `headers`.
    fn h1(headers: &[(&str, &str)]) -> Result<Option<HeaderValue>, Refusal> {
        forwarded(request("GET", "/", Version::HTTP_11, headers))
    }

    fn forwarded(mut request: Request<()>) -> Result<Option<HeaderValue>, Refusal> {
        admit(&mut request)?;
        assert!(request.headers().get_all(HOST).iter().count() <= 1);
        Ok(request.headers().get(HOST).cloned())
    }

    #[test]
    fn the_host_header_must_be_there_once_and_valid() {
        assert_eq!(
            h1(&[("host", "shop.example")]).unwrap().unwrap(),
            "shop.example"
        );
        assert_eq!(
            h1(&[("host", "[::1]:8080")]).unwrap().unwrap(),
            "[::1]:8080"
        );
        assert_eq!(
            h1(&[("host", "10.0.0.1:80")]).unwrap().unwrap(),
            "10.0.0.1:80"
        );
        for bad in [
            &[][..],
            &[("host", "a"), ("host", "a")],
            &[("host", "[::1")],
            &[("host", "[:::::]")],
            &[("host", "[]")],
            &[("host", "a:1:2")],
            &[("host", ":80")],
            &[("host", "%s=7chu")],
            &[("host", "a%41b")],
            &[("host", "")],
            &[("host", "a b")],
            &[("host", "user@shop.example")],
            &[("host", "shop.example:http")],
        ] {
            assert_eq!(
                h1(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        assert_eq!(
            forwarded(request("GET", "/", Version::HTTP_10, &[])).unwrap(),
            None,
            "HTTP/1.0 may name no host"
        );
    }

    #[test]
    fn the_target_authority_wins_over_the_host_header() {
        let absolute = request(
            "GET",
            "http://shop.example:8443/cart",
            Version::HTTP_11,
            &[("host", "other.example")],
        );
        assert_eq!(forwarded(absolute).unwrap().unwrap(), "shop.example:8443");
        let h2 = request("GET", "https://shop.example/", Version::HTTP_2, &[]);
        assert_eq!(forwarded(h2).unwrap().unwrap(), "shop.example");
        let same = request(
            "GET",
            "http://shop.example/",
            Version::HTTP_11,
            &[("host", "shop.example")],
        );
        assert_eq!(check(&same).unwrap(), Host::Header, "nothing to copy");
    }

    #[test]
    fn connect_and_unknown_codings_are_refused() {
        let connect = request(
            "CONNECT",
            "shop.example:443",
            Version::HTTP_11,
            &[("host", "shop.example:443")],
        );
        assert_eq!(
            check(&connect).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        for codings in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
        ] {
            let headers: Vec<(&str, &str)> = std::iter::once(("host", "a"))
                .chain(codings.iter().map(|c| ("transfer-encoding", *c)))
                .collect();
            assert_eq!(
                h1(&headers).unwrap_err().status,
                StatusCode::NOT_IMPLEMENTED,
                "{codings:?}"
            );
        }
        assert!(h1(&[("host", "a"), ("transfer-encoding", "Chunked")]).is_ok());
    }
}
