//! Where a request's sticky value comes from, as Apache's `stickysession=COOKIE|PARAM`:
//! a URL parameter first (`;PARAM=value` in the path, as servlet containers write
//! `;jsessionid=`, or `?PARAM=value`), then the optional affinity header, then the cookie.
//! The route is the text after the value's last `.` ([`routemap::cookie::route_of`]).
//!
//! Everything here borrows from the request; nothing is allocated per request.

use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use routemap::cookie::{find_cookie, route_of};

/// What the request says about its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky<'a> {
    /// No sticky value anywhere: a new session.
    Absent,
    /// A value without a route after its last `.` (or with characters no route has).
    Malformed,
    Route(&'a str),
}

#[derive(Debug, Clone)]
pub struct StickySpec {
    cookie: String,
    param: Option<String>,
    header: Option<HeaderName>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the cookie name is empty or has characters a cookie name cannot have")]
    Cookie,
    #[error(
        "the parameter name is empty or has characters that cannot appear in a URL parameter name"
    )]
    Param,
    #[error("{0:?} is not a header name")]
    Header(String),
}

impl StickySpec {
    /// `COOKIE` or `COOKIE|PARAM`, and an optional affinity header name.
    pub fn parse(spec: &str, header: Option<&str>) -> Result<Self, SpecError> {
        let (cookie, param) = match spec.split_once('|') {
            Some((cookie, param)) => (cookie, Some(param)),
            None => (spec, None),
        };
        routemap::cookie::StickyCookie::new(cookie, "x").map_err(|_| SpecError::Cookie)?;
        if let Some(param) = param {
            let ok = !param.is_empty()
                && param
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.~".contains(&b));
            if !ok {
                return Err(SpecError::Param);
            }
        }
        let header = header
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| SpecError::Header(h.to_owned()))
            })
            .transpose()?;
        Ok(Self {
            cookie: cookie.to_owned(),
            param: param.map(str::to_owned),
            header,
        })
    }

    /// Apache's `stickysession` value, for display.
    pub fn describe(&self) -> String {
        match &self.param {
            Some(p) => format!("{}|{p}", self.cookie),
            None => self.cookie.clone(),
        }
    }

    /// The sticky value of a request: parameter, then header, then cookie.
    pub fn extract<'a>(&self, path_and_query: &'a str, headers: &'a HeaderMap) -> Sticky<'a> {
        let value = self
            .param
            .as_deref()
            .and_then(|p| url_param(path_and_query, p))
            .or_else(|| {
                self.header
                    .as_ref()
                    .and_then(|h| headers.get(h))
                    .map(|v| v.as_bytes())
            })
            .or_else(|| {
                find_cookie(
                    headers.get_all(COOKIE).iter().map(|v| v.as_bytes()),
                    self.cookie.as_bytes(),
                )
            });
        match value {
            None => Sticky::Absent,
            Some(value) => route_of(value).map_or(Sticky::Malformed, Sticky::Route),
        }
    }
}

/// `;name=value` in the path or `name=value` in the query; the value ends at the next
/// `;`, `?`, `&`, `/` or `#`.
fn url_param<'a>(path_and_query: &'a str, name: &str) -> Option<&'a [u8]> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let value_of = |piece: &'a str| {
        let rest = piece.strip_prefix(name)?.strip_prefix('=')?;
        let end = rest.find([';', '?', '&', '/', '#']).unwrap_or(rest.len());
        Some(&rest.as_bytes()[..end])
    };
    path.split(';')
        .skip(1)
        .find_map(value_of)
        .or_else(|| query.split('&').find_map(value_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_cookie_suffix_is_the_route() {
        let spec = StickySpec::parse("balanceid", None).unwrap();
        let h = headers(&[("cookie", "SESSION=x; balanceid=route.www1")]);
        assert_eq!(spec.extract("/", &h), Sticky::Route("www1"));
        assert_eq!(
            spec.extract(
                "/",
                &headers(&[("cookie", "a=1"), ("cookie", "balanceid=route.www2")])
            ),
            Sticky::Route("www2")
        );
        assert_eq!(
            spec.extract("/", &headers(&[("cookie", "balanceid=www1")])),
            Sticky::Malformed
        );
        assert_eq!(
            spec.extract("/", &headers(&[("cookie", "balanceid=route.")])),
            Sticky::Malformed
        );
        assert_eq!(spec.extract("/", &HeaderMap::new()), Sticky::Absent);
    }

    #[test]
    fn a_url_parameter_wins_over_the_cookie_as_in_apache() {
        let spec = StickySpec::parse("JSESSIONID|jsessionid", None).unwrap();
        let h = headers(&[("cookie", "JSESSIONID=abc.www1")]);
        assert_eq!(
            spec.extract("/shop;jsessionid=abc.www2?x=1", &h),
            Sticky::Route("www2")
        );
        assert_eq!(
            spec.extract("/shop;jsessionid=abc.www3/more", &h),
            Sticky::Route("www3")
        );
        assert_eq!(
            spec.extract("/shop?a=1&jsessionid=abc.www4&b=2", &h),
            Sticky::Route("www4")
        );
        assert_eq!(
            spec.extract("/shop?xjsessionid=abc.www5", &h),
            Sticky::Route("www1")
        );
        assert_eq!(spec.extract("/shop", &h), Sticky::Route("www1"));
    }

    #[test]
    fn the_affinity_header_comes_before_the_cookie() {
        let spec = StickySpec::parse("balanceid", Some("X-Sticky-Route")).unwrap();
        let h = headers(&[
            ("x-sticky-route", "route.www7"),
            ("cookie", "balanceid=route.www1"),
        ]);
        assert_eq!(spec.extract("/", &h), Sticky::Route("www7"));
        assert_eq!(
            spec.extract("/", &headers(&[("x-sticky-route", "route.www7")])),
            Sticky::Route("www7")
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(StickySpec::parse("", None).is_err());
        assert!(StickySpec::parse("a|", None).is_err());
        assert!(StickySpec::parse("a|b c", None).is_err());
        assert!(StickySpec::parse("a", Some("bad header")).is_err());
        assert_eq!(
            StickySpec::parse("JSESSIONID|jsessionid", None)
                .unwrap()
                .describe(),
            "JSESSIONID|jsessionid"
        );
    }
}
