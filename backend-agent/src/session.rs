//! Does this exchange belong to an app session? The cookie is only worth setting when it
//! does: when the request carries the app's session cookie (the classic setup's `RewriteCond
//! %{HTTP_COOKIE} (existing_session_cookie) [NC]`), or when the app's response creates it,
//! which fixes the classic setup's gap where state set by the very first response could be lost.

use http::HeaderMap;
use http::header::{COOKIE, SET_COOKIE};
use regex::Regex;
use routemap::cookie::cookies;
use std::borrow::Cow;

#[derive(Debug)]
pub struct SessionMatcher {
    names: Vec<String>,
    regex: Option<Regex>,
}

impl SessionMatcher {
    pub fn new(names: &[String], regex: Option<&str>) -> Result<Self, regex::Error> {
        Ok(Self {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            regex: regex.map(Regex::new).transpose()?,
        })
    }

    fn is_session_name(&self, name: &[u8]) -> bool {
        self.names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }

    /// The request carries a session cookie (by name, case-insensitively, or by the regex
    /// over the Cookie header; several Cookie headers are joined with `; ` first, as
    /// Apache's `%{HTTP_COOKIE}` shows them).
    pub fn in_request(&self, headers: &HeaderMap) -> bool {
        let lines = || headers.get_all(COOKIE).iter().map(|v| v.as_bytes());
        if !self.names.is_empty()
            && lines()
                .flat_map(cookies)
                .any(|c| self.is_session_name(c.name))
        {
            return true;
        }
        let Some(regex) = &self.regex else {
            return false;
        };
        let mut all = headers.get_all(COOKIE).iter();
        let joined: Cow<'_, [u8]> = match (all.next(), all.next()) {
            (None, _) => return false,
            (Some(one), None) => Cow::Borrowed(one.as_bytes()),
            _ => Cow::Owned(lines().collect::<Vec<_>>().join(&b"; "[..])),
        };
        std::str::from_utf8(&joined).is_ok_and(|text| regex.is_match(text))
    }

    /// The response sets a session cookie (not one that deletes it: `Max-Age=0` or a
    /// negative one, or an `Expires` in 1970 as frameworks write for logouts).
    pub fn created_by(&self, headers: &HeaderMap) -> bool {
        headers.get_all(SET_COOKIE).iter().any(|value| {
            let bytes = value.as_bytes();
            let pair_end = bytes.iter().position(|b| *b == b';').unwrap_or(bytes.len());
            let Some(eq) = bytes[..pair_end].iter().position(|b| *b == b'=') else {
                return false;
            };
            self.is_session_name(bytes[..eq].trim_ascii()) && !deletes(&bytes[pair_end..])
        })
    }
}

fn deletes(attributes: &[u8]) -> bool {
    let lower = attributes.to_ascii_lowercase();
    attributes.split(|b| *b == b';').any(|a| {
        let a = a.trim_ascii().to_ascii_lowercase();
        a.strip_prefix(b"max-age=")
            .is_some_and(|v| v.starts_with(b"-") || v.iter().all(|d| *d == b'0'))
    }) || (lower.windows(8).any(|w| w == b"expires=") && lower.windows(4).any(|w| w == b"1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: http::header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn matcher(names: &[&str], regex: Option<&str>) -> SessionMatcher {
        SessionMatcher::new(
            &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            regex,
        )
        .unwrap()
    }

    #[test]
    fn session_names_match_case_insensitively_in_any_cookie_header() {
        let m = matcher(&["JSESSIONID"], None);
        assert!(m.in_request(&headers(COOKIE, &["theme=dark; jsessionid=abc"])));
        assert!(m.in_request(&headers(COOKIE, &["theme=dark", "JSESSIONID=abc"])));
        assert!(!m.in_request(&headers(COOKIE, &["theme=dark; XJSESSIONID=abc"])));
        assert!(!m.in_request(&HeaderMap::new()));
    }

    #[test]
    fn the_regex_sees_the_whole_cookie_header() {
        let m = matcher(&[], Some("(?i)(existing_session_cookie|sid)="));
        assert!(m.in_request(&headers(COOKIE, &["a=1; Existing_Session_Cookie=x"])));
        assert!(m.in_request(&headers(COOKIE, &["a=1", "sid=2"])));
        assert!(!m.in_request(&headers(COOKIE, &["a=1"])));
    }

    #[test]
    fn a_response_creates_a_session_unless_it_deletes_it() {
        let m = matcher(&["SESSION"], None);
        assert!(m.created_by(&headers(
            SET_COOKIE,
            &["theme=dark", "session=abc; Path=/; HttpOnly"]
        )));
        assert!(!m.created_by(&headers(SET_COOKIE, &["SESSION=; Max-Age=0; Path=/"])));
        assert!(!m.created_by(&headers(SET_COOKIE, &["SESSION=x; Max-Age=-1"])));
        assert!(!m.created_by(&headers(
            SET_COOKIE,
            &["SESSION=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
        )));
        assert!(m.created_by(&headers(SET_COOKIE, &["SESSION=x; Max-Age=3600"])));
        assert!(!m.created_by(&headers(SET_COOKIE, &["OTHER=x"])));
    }
}
