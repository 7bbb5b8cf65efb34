//! The route map text format: `KEY ROUTE [ATTR=VALUE ...]`, `#` comments, several pairs on
//! one line (the Apache `RewriteMap txt:` form pasted on one line works).
//!
//! Parsing never stops at the first problem: an operator fixing a map wants every mistake of
//! the file in one run, each with its line number, so a pre-commit hook is useful.

use crate::map::RouteMap;
use crate::route::{Entry, Key, KeyError, LoadFactor, RouteError, RouteId, Status};
use std::fmt;

/// Largest map accepted: 8 MiB, room for about 200,000 entries. Kubernetes limits a
/// ConfigMap to 1 MiB; a plain file may be bigger, but a map of many megabytes more is a
/// mistake (a wrong path), not a route map, and would cost every component its memory.
pub const MAX_MAP_BYTES: usize = 8 * 1024 * 1024;

/// Errors listed for one map; the rest are counted. An operator fixes the first few and
/// runs the check again; a file of half a million bad lines (the wrong file) must not
/// become half a million error strings in memory, in `/status` and in one log line.
pub const MAX_LISTED_ERRORS: usize = 20;

/// Longest piece of the input quoted in an error message.
const MAX_QUOTED_CHARS: usize = 80;

/// One problem found in a map, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub kind: ErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

/// What is wrong, phrased for the person editing the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the map is larger than the limit of {MAX_MAP_BYTES} bytes; is this the right file?")]
    TooLarge,
    /// Stands for the errors not listed (see [`MAX_LISTED_ERRORS`]), on the line of the
    /// first of them.
    #[error("{0} more error(s) from this line on are not listed")]
    MoreErrors(usize),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("key {token:?} is neither an IP address nor a host name: {reason}")]
    BadKey { token: String, reason: KeyError },
    #[error("route {token:?} is not valid: {reason}")]
    BadRoute { token: String, reason: RouteError },
    #[error("key {key:?} has no route (expected KEY ROUTE)")]
    MissingRoute { key: String },
    #[error("attribute {token:?} does not follow a KEY ROUTE pair")]
    DanglingAttribute { token: String },
    #[error("attribute {token:?} comes between key {key:?} and its route")]
    AttributeBeforeRoute { token: String, key: String },
    #[error("unknown attribute {name:?} (known: loadfactor, port, status)")]
    UnknownAttribute { name: String },
    #[error("attribute {name:?} is given twice for the same entry")]
    DuplicateAttribute { name: String },
    #[error("{name}={value:?} is not valid: {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("duplicate key {key} (first on line {first_line})")]
    DuplicateKey { key: String, first_line: usize },
    #[error("duplicate route {route} (first on line {first_line})")]
    DuplicateRoute { route: String, first_line: usize },
}

/// Parses and validates a whole map. Either every line is good and the map is returned, or
/// the errors found are returned in line order: the first [`MAX_LISTED_ERRORS`], then one
/// [`ErrorKind::MoreErrors`] counting the rest.
pub fn parse(text: &[u8]) -> Result<RouteMap, Vec<ParseError>> {
    if text.len() > MAX_MAP_BYTES {
        return Err(vec![ParseError {
            line: 1,
            kind: ErrorKind::TooLarge,
        }]);
    }
    let mut entries = Vec::new();
    let mut errors = ErrorList::default();
    for (index, raw) in text.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(text) => parse_line(line, text, &mut entries, &mut errors),
            Err(_) => errors.push(ParseError {
                line,
                kind: ErrorKind::NotUtf8,
            }),
        }
    }
    match RouteMap::index(entries) {
        Ok(map) if errors.is_empty() => Ok(map),
        Ok(_) => Err(errors.finish()),
        Err(duplicates) => Err(errors.merge(duplicates).finish()),
    }
}

/// The errors of one map as they are found, in line order: the first
/// [`MAX_LISTED_ERRORS`] kept, the rest only counted.
#[derive(Debug, Default)]
pub(crate) struct ErrorList {
    kept: Vec<ParseError>,
    more: usize,
    /// The line of the first error not kept.
    more_from: Option<usize>,
}

impl ErrorList {
    pub(crate) fn push(&mut self, error: ParseError) {
        if self.kept.len() < MAX_LISTED_ERRORS {
            self.kept.push(error);
        } else {
            self.more += 1;
            self.more_from.get_or_insert(error.line);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Both lists in one, in line order (this one's first on equal lines).
    pub(crate) fn merge(self, other: ErrorList) -> ErrorList {
        let mut all = self.kept;
        all.extend(other.kept);
        all.sort_by_key(|e| e.line);
        let mut merged = ErrorList {
            kept: Vec::with_capacity(MAX_LISTED_ERRORS),
            more: self.more + other.more,
            more_from: match (self.more_from, other.more_from) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        };
        for error in all {
            merged.push(error);
        }
        merged
    }

    /// The listed errors, followed by one standing for the unlisted ones.
    pub(crate) fn finish(self) -> Vec<ParseError> {
        let mut errors = self.kept;
        if let Some(line) = self.more_from {
            errors.push(ParseError {
                line,
                kind: ErrorKind::MoreErrors(self.more),
            });
        }
        errors
    }
}

/// How many errors a list from [`parse`] stands for, the unlisted ones included.
pub fn error_count(errors: &[ParseError]) -> usize {
    errors
        .iter()
        .map(|e| match e.kind {
            ErrorKind::MoreErrors(n) => n,
            _ => 1,
        })
        .sum()
}

/// A piece of the input as an error message quotes it: at most [`MAX_QUOTED_CHARS`]
/// characters (a single token can be a megabyte long).
fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// A pair being assembled from the tokens of one line.
enum Pending<'a> {
    Nothing,
    Key(&'a str),
    /// A complete pair; attributes may still follow.
    Pair(Draft),
}

/// An entry under construction. Key or route is `None` when it was invalid (and already
/// reported): its attributes are still checked, but nothing is kept.
struct Draft {
    line: usize,
    key: Option<Key>,
    route: Option<RouteId>,
    loadfactor: LoadFactor,
    port: Option<u16>,
    status: Status,
    /// Bit per attribute already given, to catch duplicates.
    seen: u8,
}

impl Draft {
    fn new(line: usize, key: &str, route: &str, report: &mut impl FnMut(ErrorKind)) -> Self {
        let key = Key::parse(key)
            .map_err(|reason| {
                report(ErrorKind::BadKey {
                    token: quoted(key),
                    reason,
                })
            })
            .ok();
        let route = RouteId::parse(route)
            .map_err(|reason| {
                report(ErrorKind::BadRoute {
                    token: quoted(route),
                    reason,
                })
            })
            .ok();
        Draft {
            line,
            key,
            route,
            loadfactor: LoadFactor::DEFAULT,
            port: None,
            status: Status::Enabled,
            seen: 0,
        }
    }

    fn into_entry(self) -> Option<Entry> {
        Some(Entry {
            key: self.key?,
            route: self.route?,
            loadfactor: self.loadfactor,
            port: self.port,
            status: self.status,
            line: self.line,
        })
    }

    fn apply(&mut self, name: &str, value: &str) -> Result<(), ErrorKind> {
        let (name, bit): (&'static str, u8) = match name {
            "loadfactor" => ("loadfactor", 1),
            "port" => ("port", 2),
            "status" => ("status", 4),
            _ => {
                return Err(ErrorKind::UnknownAttribute { name: quoted(name) });
            }
        };
        if self.seen & bit != 0 {
            return Err(ErrorKind::DuplicateAttribute {
                name: name.to_owned(),
            });
        }
        self.seen |= bit;
        let bad = |expected| ErrorKind::BadValue {
            name,
            value: quoted(value),
            expected,
        };
        match name {
            "loadfactor" => {
                self.loadfactor = value
                    .parse::<u32>()
                    .ok()
                    .and_then(LoadFactor::new)
                    .ok_or_else(|| bad("a whole number from 1 to 100"))?;
            }
            "port" => {
                let port = value.parse::<u16>().ok().filter(|p| *p != 0);
                self.port = Some(port.ok_or_else(|| bad("a port number from 1 to 65535"))?);
            }
            _ => {
                self.status = Status::parse(value)
                    .ok_or_else(|| bad("one of enabled, disabled, drain, standby"))?;
            }
        }
        Ok(())
    }
}

fn parse_line(line: usize, text: &str, entries: &mut Vec<Entry>, errors: &mut ErrorList) {
    let text = text.split_once('#').map_or(text, |(before, _)| before);
    let mut pending = Pending::Nothing;
    let mut report = |kind| errors.push(ParseError { line, kind });
    for token in text.split_ascii_whitespace() {
        if let Some((name, value)) = token.split_once('=') {
            match &mut pending {
                Pending::Pair(draft) => {
                    if let Err(kind) = draft.apply(name, value) {
                        report(kind);
                    }
                    continue;
                }
                Pending::Nothing => report(ErrorKind::DanglingAttribute {
                    token: quoted(token),
                }),
                Pending::Key(key) => report(ErrorKind::AttributeBeforeRoute {
                    token: quoted(token),
                    key: quoted(key),
                }),
            }
            // The rest of the line cannot be paired reliably; stop rather than pile up
            // follow-on errors.
            return;
        }
        pending = match std::mem::replace(&mut pending, Pending::Nothing) {
            Pending::Key(key) => Pending::Pair(Draft::new(line, key, token, &mut report)),
            Pending::Pair(draft) => {
                entries.extend(draft.into_entry());
                Pending::Key(token)
            }
            Pending::Nothing => Pending::Key(token),
        };
    }
    match pending {
        Pending::Nothing => {}
        Pending::Key(key) => report(ErrorKind::MissingRoute { key: quoted(key) }),
        Pending::Pair(draft) => entries.extend(draft.into_entry()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text.as_bytes())
            .expect_err("map should be invalid")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_the_design_example() {
        let map = parse(
            b"# comment; blank lines ignored\n\n\
              10.16.4.4   www1\n\
              10.16.4.6   www2  loadfactor=60\n\
              10.12.2.13  www0  loadfactor=20 port=8080\n\
              web-3       www3                 # a stable host/pod name\n",
        )
        .unwrap();
        let routes: Vec<_> = map.entries().iter().map(|e| e.route.as_str()).collect();
        assert_eq!(routes, ["www1", "www2", "www0", "www3"]);
        let www0 = map.by_route("www0").unwrap();
        assert_eq!(www0.loadfactor.get(), 20);
        assert_eq!(www0.port, Some(8080));
        assert_eq!(www0.line, 5);
        assert_eq!(
            map.by_route("www1").unwrap().loadfactor,
            LoadFactor::DEFAULT
        );
    }

    #[test]
    fn reads_the_seed_one_line_form() {
        let map = parse(b"10.16.4.4 www1 10.16.4.6 www2 10.16.4.7 www3 10.12.2.13 www0").unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(
            map.by_key(&Key::parse("10.12.2.13").unwrap())
                .unwrap()
                .route
                .as_str(),
            "www0"
        );
    }

    #[test]
    fn attributes_bind_to_the_pair_before_them() {
        let map = parse(b"a www1 loadfactor=60 b www2 status=drain\r\n").unwrap();
        assert_eq!(map.by_route("www1").unwrap().loadfactor.get(), 60);
        assert_eq!(map.by_route("www1").unwrap().status, Status::Enabled);
        assert_eq!(map.by_route("www2").unwrap().status, Status::Drain);
    }

    #[test]
    fn empty_and_comment_only_maps_are_valid_and_empty() {
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(b"# nothing yet\n\n   \n").unwrap().is_empty());
    }

    #[test]
    fn every_error_kind_is_reported_with_its_line() {
        assert_eq!(
            errors("a www1\nb www1\n"),
            ["line 2: duplicate route www1 (first on line 1)"]
        );
        assert_eq!(
            errors("10.0.0.1 www1\n10.0.0.1 www2\n"),
            ["line 2: duplicate key 10.0.0.1 (first on line 1)"]
        );
        assert_eq!(
            errors("a www.1"),
            [
                "line 1: route \"www.1\" is not valid: route contains '.'; only letters, digits, '_' and '-' are allowed"
            ]
        );
        assert_eq!(
            errors("a www1 weight=3"),
            ["line 1: unknown attribute \"weight\" (known: loadfactor, port, status)"]
        );
        assert_eq!(
            errors("a www1 loadfactor=0"),
            ["line 1: loadfactor=\"0\" is not valid: a whole number from 1 to 100"]
        );
        assert_eq!(
            errors("a www1 loadfactor=101"),
            ["line 1: loadfactor=\"101\" is not valid: a whole number from 1 to 100"]
        );
        assert_eq!(
            errors("a www1 port=70000"),
            ["line 1: port=\"70000\" is not valid: a port number from 1 to 65535"]
        );
        assert_eq!(
            errors("a www1 status=down"),
            ["line 1: status=\"down\" is not valid: one of enabled, disabled, drain, standby"]
        );
        assert_eq!(
            errors("a www1 port=1 port=2"),
            ["line 1: attribute \"port\" is given twice for the same entry"]
        );
        assert_eq!(
            errors("10.16.4.300 www1"),
            [
                "line 1: key \"10.16.4.300\" is neither an IP address nor a host name: looks like an IP address but is not a valid one"
            ]
        );
        assert_eq!(
            errors("web_1 www1"),
            [
                "line 1: key \"web_1\" is neither an IP address nor a host name: host name contains '_'; only letters, digits, '-' and '.' are allowed"
            ]
        );
        assert_eq!(
            errors("loadfactor=5 a www1"),
            ["line 1: attribute \"loadfactor=5\" does not follow a KEY ROUTE pair"]
        );
        assert_eq!(
            errors("a loadfactor=5 www1"),
            ["line 1: attribute \"loadfactor=5\" comes between key \"a\" and its route"]
        );
        assert_eq!(
            errors("a www1 b"),
            ["line 1: key \"b\" has no route (expected KEY ROUTE)"]
        );
        assert_eq!(
            errors("a www1\n\nb w\u{fffd}"),
            [
                "line 3: route \"w\u{fffd}\" is not valid: route contains '\u{fffd}'; only letters, digits, '_' and '-' are allowed"
            ]
        );
    }

    #[test]
    fn invalid_utf8_and_oversized_input_are_errors() {
        assert_eq!(
            errors_of(b"a www1\nb \xff\xfe\n"),
            ["line 2: line is not valid UTF-8"]
        );
        let big = vec![b'#'; MAX_MAP_BYTES + 1];
        assert_eq!(parse(&big).unwrap_err()[0].kind, ErrorKind::TooLarge);
    }

    #[test]
    fn a_flood_of_errors_is_listed_up_to_the_limit_and_counted() {
        let text = "10.0.0.1 not.a.route\n".repeat(50_000);
        let errors = parse(text.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        assert_eq!(errors[MAX_LISTED_ERRORS].line, MAX_LISTED_ERRORS + 1);
        assert_eq!(
            errors[MAX_LISTED_ERRORS].kind,
            ErrorKind::MoreErrors(50_000 - MAX_LISTED_ERRORS)
        );
        assert_eq!(error_count(&errors), 50_000);
        // Duplicates count against the same limit, merged in line order.
        let mut dups = String::from("10.0.0.1 www1\n");
        for i in 0..100 {
            dups.push_str(&format!("10.0.1.{i} www1 loadfactor=0\n"));
        }
        let errors = parse(dups.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        assert_eq!(error_count(&errors), 200);
        assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
    }

    #[test]
    fn a_huge_token_is_quoted_shortened() {
        let text = format!("a {}", "r".repeat(1 << 20));
        let message = errors(&text).join("\n");
        assert!(message.len() < 300, "{}", message.len());
        assert!(message.contains('…'));
    }

    fn errors_of(bytes: &[u8]) -> Vec<String> {
        parse(bytes)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn all_errors_of_a_file_are_reported_in_line_order() {
        let found = errors(
            "10.0.0.1 www1\n\
             10.0.0.2 www1 loadfactor=500\n\
             # fine\n\
             10.0.0.1 www3 colour=red\n",
        );
        assert_eq!(
            found,
            [
                "line 2: loadfactor=\"500\" is not valid: a whole number from 1 to 100",
                "line 2: duplicate route www1 (first on line 1)",
                "line 4: unknown attribute \"colour\" (known: loadfactor, port, status)",
                "line 4: duplicate key 10.0.0.1 (first on line 1)",
            ]
        );
    }
}
