//! `--https-redirect`: a request on a plain traffic listener gets a 308 to the same URL on
//! https. 308, not 301: the method and body are kept, so a POST is repeated as a POST.
//!
//! The host is the one the client asked for (the `Host` header or the absolute target,
//! without its port); the port is the first TLS listener's, left out when it is 443.

use http::{HeaderValue, Request, Response, StatusCode, header};
use stickyroute_relay::body::{self, Body};
use stickyroute_relay::serve::ConnInfo;

/// The 308 to `https://HOST[:port]/target`, or 400 when the request names a host that
/// cannot be put in a URL.
pub fn to_https<B>(request: &Request<B>, conn: &ConnInfo, port: u16) -> Response<Body> {
    let named = request.uri().host().map(str::to_owned).or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(without_port)
    });
    let host = match named {
        Some(host) if is_host(&host) => host,
        Some(_) => return body::text(StatusCode::BAD_REQUEST, "invalid Host header\n"),
        None => match conn.local.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        },
    };
    let target = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|t| t.starts_with('/'))
        .unwrap_or("/");
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return body::text(StatusCode::BAD_REQUEST, "invalid request target\n");
    };
    let mut response = body::text(
        StatusCode::PERMANENT_REDIRECT,
        "this site is served over https\n",
    );
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn without_port(authority: &str) -> String {
    if authority.starts_with('[') {
        return match authority.split_once(']') {
            Some((inside, _)) => format!("{inside}]"),
            None => authority.to_owned(),
        };
    }
    authority
        .split_once(':')
        .map_or(authority, |(host, _)| host)
        .to_owned()
}

/// A DNS name, an IPv4 address or a bracketed IPv6 address: nothing that could change what
/// the URL means (no `/`, `@`, `?`, `#`, spaces).
fn is_host(host: &str) -> bool {
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inside.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, target: &str, port: u16) -> (u16, Option<String>) {
        let mut request = Request::builder().uri(target);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let request = request.body(()).unwrap();
        let conn = ConnInfo {
            local: "127.0.0.9:80".parse().unwrap(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            id: 1,
            first_request: true,
            tls: None,
        };
        let response = to_https(&request, &conn, port);
        (
            response.status().as_u16(),
            response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
        )
    }

    #[test]
    fn keeps_host_and_target_and_names_the_tls_port_unless_443() {
        let ok = |l: &str| (308, Some(l.to_owned()));
        assert_eq!(
            location(Some("shop.example:8080"), "/cart?x=1", 8443),
            ok("https://shop.example:8443/cart?x=1")
        );
        assert_eq!(
            location(Some("shop.example"), "/", 443),
            ok("https://shop.example/")
        );
        assert_eq!(
            location(Some("[::1]:8080"), "/a", 443),
            ok("https://[::1]/a")
        );
        assert_eq!(location(None, "/a", 443), ok("https://127.0.0.9/a"));
        assert_eq!(
            location(Some("x"), "http://other.example:81/p", 443),
            ok("https://other.example/p")
        );
        assert_eq!(location(Some("evil.example/x@"), "/", 443).0, 400);
        assert_eq!(location(Some("[zz]"), "/", 443).0, 400);
    }
}
