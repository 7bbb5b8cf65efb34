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

/// Whether to believe the `X-Forwarded-*` headers a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The edge, the peer untrusted: whatever it says is replaced. `X-Forwarded-For`
    /// becomes the peer alone (a client could otherwise forge the start of the chain that
    /// apps read the client from) and `-Proto`/`-Host` are what this hop saw.
    Edge,
    /// From a trusted hop (the agent behind stickyroute-proxy, or the proxy behind a
    /// `--trusted-proxy`): the peer is appended to `X-Forwarded-For`, and the `-Proto`/`-Host`
    /// it set are kept; they are only filled in when missing.
    BehindProxy,
}

/// Whether the request reached the hop in front over HTTPS, as that hop says: the first
/// `X-Forwarded-Proto` item (the one the client-facing hop wrote, when a chain of proxies
/// appends) is `https`. Only for headers from a hop that is believed.
pub fn came_over_https(headers: &HeaderMap) -> bool {
    list_items(headers, X_FORWARDED_PROTO)
        .next()
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The client a request is from: the peer, unless it is a trusted proxy; then the first
/// untrusted hop of `X-Forwarded-For`, read from the right (the hops nearest us are the
/// ones whose word we have), or the leftmost when every hop is trusted. An entry that is
/// not an address ends the walk at the last good hop: nothing past it can be believed.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[crate::net::Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !crate::net::any_contains(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .into_iter()
        .rev()
        .flat_map(|value| {
            let items: Vec<&str> = value.to_str().map_or_else(
                |_| vec![""],
                |text| text.split(',').map(str::trim).collect(),
            );
            items.into_iter().rev()
        });
    for hop in hops {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !crate::net::any_contains(trusted, client) {
            break;
        }
    }
    client
}

/// Adds the peer to `X-Forwarded-For` (or makes it the whole header, at the edge) and sets
/// `X-Forwarded-Proto`/`-Host`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    mode: Forwarded,
) {
    // Built in one buffer that becomes the header value without another copy. Several
    // fields are one list (RFC 9110 §5.3), joined in order.
    let joined: Vec<u8>;
    let existing = match mode {
        Forwarded::Edge => None,
        Forwarded::BehindProxy => {
            let mut fields = headers
                .get_all(X_FORWARDED_FOR)
                .into_iter()
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty());
            match (fields.next(), fields.next()) {
                (None, _) => None,
                (Some(only), None) => Some(only),
                (Some(first), Some(second)) => {
                    let mut all = first.to_vec();
                    for field in std::iter::once(second).chain(fields) {
                        all.extend_from_slice(b", ");
                        all.extend_from_slice(field);
                    }
                    joined = all;
                    Some(&joined[..])
                }
            }
        }
    };
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
        assert_eq!(
            edge["x-forwarded-for"], "192.0.2.7",
            "a chain from an untrusted peer is not believed"
        );
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

    fn cidrs(blocks: &[&str]) -> Vec<crate::net::Cidr> {
        blocks.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.9"]);
        let chain = map(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3")]);
        let client = |peer: &str, headers: &HeaderMap| {
            client_address(peer.parse().unwrap(), headers, &trusted).to_string()
        };
        assert_eq!(
            client("127.0.0.9", &chain),
            "203.0.113.7",
            "skips the trusted 10.1.2.3"
        );
        assert_eq!(
            client("192.0.2.5", &chain),
            "192.0.2.5",
            "an untrusted peer is the client"
        );
        assert_eq!(client("127.0.0.9", &HeaderMap::new()), "127.0.0.9");
        let all_trusted = map(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(
            client("127.0.0.9", &all_trusted),
            "10.0.0.1",
            "the leftmost"
        );
        let forged = map(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.2")]);
        assert_eq!(
            client("127.0.0.9", &forged),
            "10.0.0.2",
            "nothing past a malformed hop is believed"
        );
        let fields = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            client("127.0.0.9", &fields),
            "198.51.100.1",
            "fields are one list"
        );
        assert!(came_over_https(&map(&[(
            "x-forwarded-proto",
            "HTTPS, http"
        )])));
        assert!(!came_over_https(&map(&[(
            "x-forwarded-proto",
            "http, https"
        )])));
    }

    #[test]
    fn from_a_trusted_hop_every_field_of_the_chain_is_kept_in_order() {
        let mut headers = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        add_forwarded(
            &mut headers,
            "127.0.0.9".parse().unwrap(),
            "http",
            None,
            Forwarded::BehindProxy,
        );
        assert_eq!(
            headers["x-forwarded-for"],
            "198.51.100.1, 10.0.0.3, 127.0.0.9"
        );
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    proptest::proptest! {
        /// Whatever the chain says, the client is the peer or one of the chain's addresses,
        /// never a trusted one unless every hop is trusted, and an untrusted peer is believed
        /// over any chain.
        #[test]
        fn the_client_is_always_a_hop_of_the_chain(
            hops in proptest::collection::vec((0u8..4, 0u8..3), 0..6),
            peer_trusted in proptest::bool::ANY,
        ) {
            let trusted = cidrs(&["10.0.0.0/8"]);
            let text: Vec<String> = hops
                .iter()
                .map(|(kind, n)| match kind {
                    0 => format!("10.0.0.{n}"),
                    1 => format!("198.51.100.{n}"),
                    2 => format!("2001:db8::{n}"),
                    _ => "junk".to_owned(),
                })
                .collect();
            let headers = map(&[("x-forwarded-for", &text.join(", "))]);
            let peer: IpAddr = if peer_trusted { "10.9.9.9" } else { "192.0.2.1" }.parse().unwrap();
            let client = client_address(peer, &headers, &trusted);
            if !peer_trusted {
                proptest::prop_assert_eq!(client, peer);
            } else {
                proptest::prop_assert!(client == peer || text.iter().any(|t| t.parse::<IpAddr>().ok() == Some(client)));
                // The right-to-left walk up to the first junk entry.
                let mut expected = peer;
                for hop in text.iter().rev() {
                    let Ok(ip) = hop.parse::<IpAddr>() else { break };
                    expected = ip;
                    if !crate::net::any_contains(&trusted, ip) { break; }
                }
                proptest::prop_assert_eq!(client, expected);
            }
        }
    }
}
