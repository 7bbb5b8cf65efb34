//! Header rules of an HTTP intermediary (RFC 9110 §7.6).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::net::IpAddr;

/// Headers that describe one connection, never the message: removed before forwarding in
/// either direction (RFC 9110 §7.6.1; `Proxy-Connection` and the `Proxy-Auth*` pair as
/// widely deployed proxies do).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` is removed too unless `keep_upgrade` (a tunnel is being set up), in which case
/// `Connection: upgrade` is put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names present is cheaper than a
    // lookup for each name that might be.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = list_items(headers, header::CONNECTION)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` header), as a WebSocket handshake does.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && list_items(headers, header::CONNECTION)
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
}

/// The items of a comma-separated list header (`Connection`, `Transfer-Encoding`), across
/// all its fields, trimmed, empty ones skipped.
pub fn list_items(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whose `X-Forwarded-Proto`/`-Host` to believe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The edge: clients are untrusted, so both are set from what this hop saw.
    Edge,
    /// Behind a trusted proxy (the agent behind stickyroute-proxy): values the proxy set are
    /// kept; they are only filled in when missing.
    BehindProxy,
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`/`-Host`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    mode: Forwarded,
) {
    // Built in one buffer that becomes the header value without another copy.
    let existing = headers
        .get(X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty());
    let mut chain = Vec::with_capacity(existing.map_or(0, |v| v.len() + 2) + 39);
    if let Some(existing) = existing {
        chain.extend_from_slice(existing);
        chain.extend_from_slice(b", ");
    }
    let _ = write!(chain, "{}", client.to_canonical());
    // Joined chains of valid header text stay valid header text.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let set = |headers: &mut HeaderMap, name: HeaderName, value: HeaderValue| match mode {
        Forwarded::Edge => {
            headers.insert(name, value);
        }
        Forwarded::BehindProxy => {
            headers.entry(name).or_insert(value);
        }
    };
    set(headers, X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        set(headers, X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_fixed_and_connection_listed_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Debug"),
            ("keep-alive", "timeout=5"),
            ("x-debug", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["cookie", "set-cookie"]);
    }

    #[test]
    fn keeps_upgrade_for_tunnels() {
        let mut headers = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["sec-websocket-key"], "k");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers_at_the_edge_and_behind_a_proxy() {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut edge = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(
            &mut edge,
            client,
            "http",
            Some(HeaderValue::from_static("shop.example")),
            Forwarded::Edge,
        );
        assert_eq!(edge["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(
            edge["x-forwarded-proto"], "http",
            "clients cannot claim https at the edge"
        );
        assert_eq!(edge["x-forwarded-host"], "shop.example");

        let mut inner = map(&[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ]);
        add_forwarded(
            &mut inner,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some(HeaderValue::from_static("10.0.0.5:8080")),
            Forwarded::BehindProxy,
        );
        assert_eq!(inner["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
        assert_eq!(inner["x-forwarded-proto"], "https");
        assert_eq!(inner["x-forwarded-host"], "shop.example");

        let mut fresh = HeaderMap::new();
        add_forwarded(
            &mut fresh,
            "::ffff:127.0.0.9".parse().unwrap(),
            "http",
            None,
            Forwarded::BehindProxy,
        );
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.9");
        assert!(!fresh.contains_key("x-forwarded-host"));
    }
}
