//! Which names the balancer-manager answers to, and which pages may send it changes: the
//! defences against being driven from a web page an operator happens to open.
//!
//! - **DNS rebinding**: a page on `evil.example` makes its own name resolve to the admin
//!   address and reads the balancer-manager (and its nonce) as same-origin. The browser
//!   still sends `Host: evil.example`, so only requests naming the admin listener itself
//!   are served: its address, `localhost`, a loopback address, or a name given with
//!   `--admin-host` (the Service names in Kubernetes).
//! - **Cross-site requests**: a change must carry `Origin` (or, without it, `Referer`) of
//!   the same host when the browser sends one, as Apache's balancer-manager checks
//!   `Referer`. Browsers send `Origin` on every cross-site POST.

use http::HeaderValue;
use http::uri::{Authority, Uri};
use std::net::IpAddr;

/// `name` as the allow-list keeps it: lower case, no trailing dot, IPv6 without brackets.
/// `None` when it is neither a host name nor an address.
pub fn normalize(name: &str) -> Option<String> {
    let bare = name.trim_end_matches('.').to_ascii_lowercase();
    let unbracketed = bare
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(&bare);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then_some(bare)
}

/// The host part of a `Host` header or an origin's authority, normalized.
fn host_of(authority: &str) -> Option<String> {
    let authority = Authority::try_from(authority).ok()?;
    normalize(authority.host())
}

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// `names` as [`normalize`] gives them.
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }

    /// Whether `host` (the request's `Host` header) names the admin listener that the
    /// request arrived on at `local`.
    pub fn allows(&self, host: Option<&HeaderValue>, local: IpAddr) -> bool {
        let Some(host) = host.and_then(|h| h.to_str().ok()).and_then(host_of) else {
            return false;
        };
        if self.names.contains(&host) || host == "localhost" {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == local.to_canonical(),
            Err(_) => false,
        }
    }
}

/// Whether a change comes from a page of the same host: its `Origin`, or without one its
/// `Referer`, names the request's `Host`. A request with neither (curl, scripts) passes:
/// only browsers send them, and they always do on a cross-site POST.
pub fn same_origin(
    host: Option<&HeaderValue>,
    origin: Option<&HeaderValue>,
    referer: Option<&HeaderValue>,
) -> bool {
    let Some(claimed) = origin.or(referer) else {
        return true;
    };
    let claimed = claimed
        .to_str()
        .ok()
        .and_then(|text| text.parse::<Uri>().ok())
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_ascii_lowercase()));
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    matches!((claimed, host), (Some(claimed), Some(host)) if claimed.trim_end_matches('.') == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn only_the_listeners_own_names_are_allowed() {
        let hosts = AllowedHosts::new(vec![normalize("Admin.Shop.svc.").unwrap()]);
        let local: IpAddr = "10.1.2.3".parse().unwrap();
        for allowed in [
            "localhost:9900",
            "127.0.0.1:9900",
            "127.9.9.9",
            "[::1]:9900",
            "10.1.2.3:9900",
            "admin.shop.svc",
            "ADMIN.shop.svc.:9900",
        ] {
            assert!(hosts.allows(Some(&value(allowed)), local), "{allowed}");
        }
        for refused in [
            "evil.example",
            "evil.example:9900",
            "10.1.2.4:9900",
            "",
            "a b",
        ] {
            assert!(!hosts.allows(Some(&value(refused)), local), "{refused}");
        }
        assert!(!hosts.allows(None, local));
        assert_eq!(normalize("bad_name"), None);
        assert_eq!(normalize("[::ffff:10.0.0.1]").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn changes_must_come_from_the_same_host() {
        let host = value("127.0.0.1:9900");
        assert!(same_origin(Some(&host), None, None), "no browser, no claim");
        assert!(same_origin(
            Some(&host),
            Some(&value("http://127.0.0.1:9900")),
            None
        ));
        assert!(same_origin(
            Some(&host),
            None,
            Some(&value("http://127.0.0.1:9900/balancer-manager"))
        ));
        assert!(!same_origin(
            Some(&host),
            Some(&value("http://evil.example")),
            None
        ));
        assert!(!same_origin(Some(&host), Some(&value("null")), None));
        assert!(!same_origin(
            Some(&host),
            None,
            Some(&value("https://evil.example/x"))
        ));
    }
}
