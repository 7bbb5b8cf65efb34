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
//! the `Host` header. (A final coding other than `chunked` never gets here: the HTTP/1
//! parser answers 400 itself, as RFC 9112 §6.3 requires, since such a body has no length.)

use crate::body::{self, Body};
use crate::headers::list_items;
use http::header::{ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};

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

/// Checks `request`; on success, the host to forward (`None` for an HTTP/1.0 request
/// that named none).
pub fn check<B>(request: &Request<B>) -> Result<Option<HeaderValue>, Refusal> {
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
        return Ok(HeaderValue::from_str(authority.as_str()).ok());
    }
    match header {
        Some(header) => Ok(Some(header.clone())),
        None if request.version() == Version::HTTP_10 => Ok(None),
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

/// `host[:port]` (RFC 3986 §3.2.2): a registered name, an IPv4 address or a bracketed IP
/// literal, and an optional numeric port; no user information. Checked on the bytes, with
/// no allocation: it runs for every request.
fn valid_host(bytes: &[u8]) -> bool {
    let (host_ok, rest) = match bytes.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(close) => {
                let (inside, after) = literal.split_at(close);
                let ok = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                (ok, after.strip_prefix(b"]").unwrap_or(after))
            }
            None => (false, &b""[..]),
        },
        None => {
            let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
            let (name, after) = bytes.split_at(end);
            let ok = !name.is_empty() && name.iter().all(|&b| is_reg_name_byte(b));
            (ok, after)
        }
    };
    host_ok
        && (rest.is_empty()
            || rest
                .strip_prefix(b":")
                .is_some_and(|port| port.iter().all(u8::is_ascii_digit)))
}

/// `unreserved / pct-encoded / sub-delims` (RFC 3986 §3.2.2).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
}

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

    fn h1(headers: &[(&str, &str)]) -> Result<Option<HeaderValue>, Refusal> {
        check(&request("GET", "/", Version::HTTP_11, headers))
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
            &[("host", "[]")],
            &[("host", "a:1:2")],
            &[("host", ":80")],
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
            check(&request("GET", "/", Version::HTTP_10, &[])).unwrap(),
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
        assert_eq!(check(&absolute).unwrap().unwrap(), "shop.example:8443");
        let h2 = request("GET", "https://shop.example/", Version::HTTP_2, &[]);
        assert_eq!(check(&h2).unwrap().unwrap(), "shop.example");
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
