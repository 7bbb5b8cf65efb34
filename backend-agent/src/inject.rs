//! Writing the sticky cookie onto a response.

use http::Uri;
use http::header::{CACHE_CONTROL, HOST, HeaderMap, HeaderValue, SET_COOKIE};
use routemap::RouteId;
use routemap::cookie::StickyCookie;
use std::fmt::Write as _;

/// Why the cookie was set, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request carried the app's session cookie.
    RequestSession,
    /// The app's response created its session cookie.
    ResponseSession,
    /// `--track-all`.
    TrackAll,
}

impl Reason {
    pub const ALL: [Reason; 3] = [
        Reason::RequestSession,
        Reason::ResponseSession,
        Reason::TrackAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RequestSession => "request_session",
            Reason::ResponseSession => "response_session",
            Reason::TrackAll => "track_all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMode {
    /// The request's host without its port (the classic setup's `%{HTTP_HOST}`, minus the port that
    /// would make the cookie invalid).
    RequestHost,
    /// No Domain attribute: the browser sends the cookie back to this host only.
    HostOnly,
    /// A fixed domain such as `.example.com`, for stickiness across subdomains.
    Fixed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// When the cookie carries `Secure`.
///
/// `true` and `false` stay accepted (config files and environment variables written when
/// `--cookie-secure` was a plain switch) as `always` and `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CookieSecure {
    /// When the request came over HTTPS, as the hop in front says (`X-Forwarded-Proto`):
    /// one configuration serves both the TLS and the plain listener of the proxy, and a
    /// browser is never handed a `Secure` cookie over plain HTTP, which it would drop.
    Auto,
    #[value(alias = "true")]
    Always,
    #[value(alias = "false")]
    Never,
}

/// The agent believes its proxy; a client talking to the agent directly can only change
/// its own cookie's `Secure` this way.
pub use stickyroute_relay::headers::came_over_https;

#[derive(Debug, Clone)]
pub struct CookieAttributes {
    pub domain: DomainMode,
    pub secure: CookieSecure,
    pub http_only: bool,
    pub same_site: Option<SameSite>,
    pub max_age: Option<u64>,
}

impl CookieAttributes {
    /// `NAME=PREFIX.ROUTE; Path=/; Domain=...` plus the configured attributes, for a
    /// request that came over HTTPS or not (`https`).
    ///
    /// `SameSite=None` is written only with `Secure`: browsers reject the whole cookie
    /// otherwise (Chrome and Edge, as RFC 6265bis asks), which would end stickiness. So with
    /// `--cookie-secure auto` a plain-HTTP response gets the cookie without a SameSite
    /// attribute (the browser's default, Lax in Chrome and Edge); configurations that could
    /// never write it with `Secure` are refused when the settings are read.
    pub fn set_cookie(
        &self,
        cookie: &StickyCookie,
        route: &RouteId,
        host: Option<&str>,
        https: bool,
    ) -> Option<HeaderValue> {
        let secure = match self.secure {
            CookieSecure::Auto => https,
            CookieSecure::Always => true,
            CookieSecure::Never => false,
        };
        let mut value = format!("{}={}; Path=/", cookie.name(), cookie.value_for(route));
        let domain = match &self.domain {
            DomainMode::RequestHost => host,
            DomainMode::HostOnly => None,
            DomainMode::Fixed(domain) => Some(domain.as_str()),
        };
        if let Some(domain) = domain {
            let _ = write!(value, "; Domain={domain}");
        }
        if let Some(max_age) = self.max_age {
            let _ = write!(value, "; Max-Age={max_age}");
        }
        if secure {
            value.push_str("; Secure");
        }
        if self.http_only {
            value.push_str("; HttpOnly");
        }
        match self.same_site {
            Some(SameSite::Lax) => value.push_str("; SameSite=Lax"),
            Some(SameSite::Strict) => value.push_str("; SameSite=Strict"),
            Some(SameSite::None) if secure => value.push_str("; SameSite=None"),
            Some(SameSite::None) | None => {}
        }
        HeaderValue::from_str(&value).ok()
    }
}

/// The request's host name for the cookie's Domain: `Host` (or an HTTP/2 `:authority`)
/// without its port. `None` for an IPv6 literal (browsers reject it as a Domain) or for
/// anything that is not a plain host name, so a crafted Host header cannot inject cookie
/// attributes.
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    let raw = match headers.get(HOST) {
        Some(host) => host.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    if raw.starts_with('[') {
        return None;
    }
    let host = raw.rsplit_once(':').map_or(raw, |(host, _port)| host);
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    plain.then_some(host)
}

/// Keeps the injected cookie out of shared caches: adds `private="Set-Cookie"` to the
/// response's Cache-Control, merged into any existing one, unless the response already
/// cannot be stored by a shared cache (`no-store`, plain `private`) or already protects
/// Set-Cookie. A cache that does not understand the qualified form treats it as plain
/// `private` and stores nothing, the safe side.
pub fn keep_out_of_shared_caches(headers: &mut HeaderMap) {
    let existing: Vec<&str> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = existing.join(", ");
    let lower = joined.to_ascii_lowercase();
    let already = lower.contains("set-cookie")
        || lower
            .split(',')
            .map(str::trim)
            .any(|d| d == "no-store" || d == "private");
    if already {
        return;
    }
    let merged = if joined.trim().is_empty() {
        "private=\"Set-Cookie\"".to_owned()
    } else {
        format!("{joined}, private=\"Set-Cookie\"")
    };
    if let Ok(value) = HeaderValue::from_str(&merged) {
        headers.insert(CACHE_CONTROL, value);
    }
}

/// Adds the cookie and the cache marking to a response's headers.
pub fn inject(headers: &mut HeaderMap, set_cookie: HeaderValue) {
    headers.append(SET_COOKIE, set_cookie);
    keep_out_of_shared_caches(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(domain: DomainMode) -> CookieAttributes {
        CookieAttributes {
            domain,
            secure: CookieSecure::Auto,
            http_only: false,
            same_site: None,
            max_age: None,
        }
    }

    fn route() -> RouteId {
        RouteId::parse("www1").unwrap()
    }

    #[test]
    fn writes_the_seed_cookie() {
        let codec = StickyCookie::default();
        let value = attrs(DomainMode::RequestHost)
            .set_cookie(&codec, &route(), Some("shop.example"), false)
            .unwrap();
        assert_eq!(value, "balanceid=route.www1; Path=/; Domain=shop.example");
        let host_only = attrs(DomainMode::HostOnly)
            .set_cookie(&codec, &route(), Some("shop.example"), false)
            .unwrap();
        assert_eq!(host_only, "balanceid=route.www1; Path=/");
        let all = CookieAttributes {
            domain: DomainMode::Fixed(".example.com".into()),
            secure: CookieSecure::Always,
            http_only: true,
            same_site: Some(SameSite::Strict),
            max_age: Some(3600),
        };
        assert_eq!(
            all.set_cookie(&codec, &route(), Some("ignored"), false)
                .unwrap(),
            "balanceid=route.www1; Path=/; Domain=.example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn secure_follows_the_hop_in_front_unless_fixed_and_samesite_none_only_with_it() {
        let codec = StickyCookie::default();
        let with = |secure, same_site, https| {
            let attributes = CookieAttributes {
                secure,
                same_site,
                ..attrs(DomainMode::HostOnly)
            };
            let value = attributes
                .set_cookie(&codec, &route(), None, https)
                .unwrap();
            value.to_str().unwrap().to_owned()
        };
        let plain = "balanceid=route.www1; Path=/";
        assert_eq!(with(CookieSecure::Auto, None, false), plain);
        assert_eq!(
            with(CookieSecure::Auto, None, true),
            format!("{plain}; Secure")
        );
        assert_eq!(
            with(CookieSecure::Always, None, false),
            format!("{plain}; Secure")
        );
        assert_eq!(with(CookieSecure::Never, None, true), plain);
        let none = Some(SameSite::None);
        assert_eq!(
            with(CookieSecure::Auto, none, true),
            format!("{plain}; Secure; SameSite=None")
        );
        assert_eq!(
            with(CookieSecure::Auto, none, false),
            plain,
            "a SameSite=None cookie without Secure would be dropped by the browser"
        );
    }

    #[test]
    fn https_is_the_first_forwarded_proto() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-proto", HeaderValue::from_str(v).unwrap());
            }
            came_over_https(&h)
        };
        assert!(!headers(&[]));
        assert!(!headers(&["http"]));
        assert!(headers(&["https"]));
        assert!(headers(&["HTTPS"]));
        assert!(headers(&["https, http"]));
        assert!(headers(&["https", "http"]));
        assert!(!headers(&["http, https"]));
        assert!(!headers(&["httpsx"]));
    }

    #[test]
    fn the_request_host_loses_its_port_and_must_be_plain() {
        let uri: Uri = "/".parse().unwrap();
        let with = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_str(host).unwrap());
            request_host(&h, &uri).map(str::to_owned)
        };
        assert_eq!(with("shop.example:8080").as_deref(), Some("shop.example"));
        assert_eq!(with("127.0.0.2").as_deref(), Some("127.0.0.2"));
        assert_eq!(with("[::1]:8080"), None);
        assert_eq!(with("evil.example; Domain=x"), None);
        let h2: Uri = "http://h2.example:8443/x".parse().unwrap();
        assert_eq!(request_host(&HeaderMap::new(), &h2), Some("h2.example"));
    }

    #[test]
    fn cache_marking_merges_and_respects_stronger_directives() {
        let run = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            keep_out_of_shared_caches(&mut h);
            h.get_all(CACHE_CONTROL)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&[]), ["private=\"Set-Cookie\""]);
        assert_eq!(
            run(&["public, max-age=600"]),
            ["public, max-age=600, private=\"Set-Cookie\""]
        );
        assert_eq!(
            run(&["max-age=60", "must-revalidate"]),
            ["max-age=60, must-revalidate, private=\"Set-Cookie\""]
        );
        assert_eq!(run(&["no-store"]), ["no-store"]);
        assert_eq!(run(&["Private"]), ["Private"]);
        assert_eq!(
            run(&["no-cache=\"Set-Cookie\""]),
            ["no-cache=\"Set-Cookie\""]
        );
    }
}
