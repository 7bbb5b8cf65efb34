//! The sticky cookie codec, shared by the agent (which writes `balanceid=route.<ROUTE>`) and
//! the proxy (which reads the route back out of it).
//!
//! # Which part of the value is the route
//!
//! The route is the text after the **last** `.` of the value. Apache's mod_proxy_balancer
//! takes the text after the *first* `.`; the two agree whenever the part before the route
//! has no `.` (as in `route.www1`, the form the agent writes). A value such as `a.b.www1`
//! routes to `www1` here but is an unknown route (`b.www1`) to Apache. A value without any
//! `.` carries no route, as in Apache.
//!
//! # Reading `Cookie` headers
//!
//! Reading happens on every request of the proxy, so it borrows from the header bytes and
//! never allocates. It accepts what browsers and HTTP/2 clients really send: several
//! cookies separated by `;` with or without spaces, quoted values, and (HTTP/2, RFC 9113
//! §8.2.3) one cookie per `Cookie` header line. When a name occurs more than once the
//! first occurrence wins, as in Apache; browsers send the most specific cookie first.

use crate::route::{RouteId, is_route_char};
use std::fmt;

/// The cookie name the classic Apache setup uses (`stickysession=balanceid`).
pub const DEFAULT_COOKIE_NAME: &str = "balanceid";
/// The part written before the route: `route.www1`.
pub const DEFAULT_PREFIX: &str = "route";

/// Name and value prefix of the sticky cookie, checked once so writing can never produce a
/// broken header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    name: String,
    prefix: String,
}

impl Default for StickyCookie {
    fn default() -> Self {
        Self {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// Why a cookie name or prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieSpecError {
    #[error("cookie name {0:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)")]
    BadName(String),
    #[error(
        "cookie prefix {0:?} must be non-empty and contain no spaces, quotes, ',', ';' or '\\'"
    )]
    BadPrefix(String),
}

impl StickyCookie {
    pub fn new(name: &str, prefix: &str) -> Result<Self, CookieSpecError> {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(CookieSpecError::BadName(name.to_owned()));
        }
        if prefix.is_empty() || !prefix.bytes().all(is_cookie_octet) {
            return Err(CookieSpecError::BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cookie value for `route`: `PREFIX.ROUTE`.
    pub fn value_for(&self, route: &RouteId) -> String {
        format!("{}.{}", self.prefix, route)
    }

    /// The first value of this cookie across all `Cookie` header lines.
    pub fn find<'a, I>(&self, cookie_headers: I) -> Option<&'a [u8]>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        find_cookie(cookie_headers, self.name.as_bytes())
    }
}

impl fmt::Display for StickyCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}.<route>", self.name, self.prefix)
    }
}

/// The route a sticky value carries: the text after its last `.`, if that is a well-formed
/// route id. `None` for a value without `.`, with nothing after it, or with characters no
/// route can have.
pub fn route_of(value: &[u8]) -> Option<&str> {
    let dot = value.iter().rposition(|b| *b == b'.')?;
    let tail = &value[dot + 1..];
    let route = std::str::from_utf8(tail).ok()?;
    let valid = !route.is_empty()
        && route.len() <= crate::route::MAX_ROUTE_LEN
        && route.chars().all(is_route_char);
    valid.then_some(route)
}

/// The first value of cookie `name` (case-sensitive) across `Cookie` header lines.
pub fn find_cookie<'a, I>(cookie_headers: I, name: &[u8]) -> Option<&'a [u8]>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    cookie_headers
        .into_iter()
        .flat_map(cookies)
        .find(|c| c.name == name)
        .map(|c| c.value)
}

/// One `name=value` pair of a `Cookie` header, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie<'a> {
    pub name: &'a [u8],
    /// Without surrounding double quotes.
    pub value: &'a [u8],
}

/// The cookies of one `Cookie` header line, in order. Pieces without `=` (which carry no
/// name) are skipped.
pub fn cookies(header: &[u8]) -> Cookies<'_> {
    Cookies { rest: header }
}

/// Iterator returned by [`cookies`].
#[derive(Debug, Clone)]
pub struct Cookies<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Cookies<'a> {
    type Item = Cookie<'a>;

    fn next(&mut self) -> Option<Cookie<'a>> {
        while !self.rest.is_empty() {
            let (piece, rest) = match self.rest.iter().position(|b| *b == b';') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &b""[..]),
            };
            self.rest = rest;
            let Some(eq) = piece.iter().position(|b| *b == b'=') else {
                continue;
            };
            let name = trim(&piece[..eq]);
            if name.is_empty() {
                continue;
            }
            let mut value = trim(&piece[eq + 1..]);
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return Some(Cookie { name, value });
        }
        None
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// RFC 9110 `tchar`: what a cookie name may consist of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 `cookie-octet`: what a cookie value may consist of.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(header: &str) -> Vec<(String, String)> {
        cookies(header.as_bytes())
            .map(|c| {
                (
                    String::from_utf8_lossy(c.name).into_owned(),
                    String::from_utf8_lossy(c.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn route_is_the_text_after_the_last_dot() {
        assert_eq!(route_of(b"route.www1"), Some("www1"));
        assert_eq!(route_of(b"a.b.www1"), Some("www1"));
        assert_eq!(route_of(b"ABCDEF0123.www-2_x"), Some("www-2_x"));
        assert_eq!(route_of(b"www1"), None, "no dot: no route, as in Apache");
        assert_eq!(route_of(b"route."), None);
        assert_eq!(route_of(b""), None);
        assert_eq!(route_of(b"route.www 1"), None);
        assert_eq!(route_of(b"route.\xff"), None);
        assert_eq!(route_of(format!("r.{}", "a".repeat(65)).as_bytes()), None);
    }

    #[test]
    fn writes_prefix_dot_route() {
        let codec = StickyCookie::default();
        let route = RouteId::parse("www1").unwrap();
        assert_eq!(codec.value_for(&route), "route.www1");
        assert_eq!(route_of(codec.value_for(&route).as_bytes()), Some("www1"));
        let custom = StickyCookie::new("JSESSIONID", "node").unwrap();
        assert_eq!(custom.value_for(&route), "node.www1");
    }

    #[test]
    fn rejects_names_and_prefixes_that_would_break_the_header() {
        assert!(StickyCookie::new("", "route").is_err());
        assert!(StickyCookie::new("bal ance", "route").is_err());
        assert!(StickyCookie::new("bal;ance", "route").is_err());
        assert!(StickyCookie::new("balanceid", "").is_err());
        assert!(StickyCookie::new("balanceid", "a;b").is_err());
        assert!(StickyCookie::new("balanceid", "a b").is_err());
    }

    #[test]
    fn parses_browser_cookie_headers() {
        assert_eq!(
            all("SESSION=abc; balanceid=route.www1;theme=\"dark mode\" ;  x = y "),
            [
                ("SESSION".into(), "abc".into()),
                ("balanceid".into(), "route.www1".into()),
                ("theme".into(), "dark mode".into()),
                ("x".into(), "y".into()),
            ]
        );
        assert_eq!(all(""), Vec::<(String, String)>::new());
        assert_eq!(all(";;novalue; =x; a="), [("a".into(), "".into())]);
        assert_eq!(all("a=\""), [("a".into(), "\"".into())]);
    }

    #[test]
    fn finds_the_first_value_across_header_lines() {
        let lines: [&[u8]; 3] = [
            b"a=1",
            b"SESSION=x; balanceid=route.www2",
            b"balanceid=route.www9",
        ];
        let codec = StickyCookie::default();
        assert_eq!(codec.find(lines), Some(&b"route.www2"[..]));
        assert_eq!(
            find_cookie(lines, b"BALANCEID"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(
            find_cookie([&b"balanceid=\"route.www3\""[..]], b"balanceid"),
            Some(&b"route.www3"[..])
        );
    }
}
