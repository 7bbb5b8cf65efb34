//! A validated, indexed route map.

use crate::error::LoadError;
use crate::parse::{ErrorKind, ErrorList, ParseError};
use crate::route::{Entry, Key, LoadFactor, RouteId, Status};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::fmt::Write as _;
use std::net::IpAddr;

/// The entries of a valid map in file order (the order breaks ties when balancing), with
/// O(1) lookup by key and by route, and a content hash.
///
/// The hash is SHA-256 over the canonical text ([`RouteMap::to_text`]), so it is the same
/// on every machine and run, and a change of comments or spacing alone does not change it
/// (nothing is republished for such an edit). It is shown everywhere a map is reported so
/// an operator can check that every component runs the same map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMap {
    entries: Vec<Entry>,
    by_key: HashMap<Key, usize>,
    by_route: HashMap<RouteId, usize>,
    hash: String,
}

impl RouteMap {
    /// Indexes `entries`, rejecting duplicate keys and routes (each reported at the line of
    /// the second occurrence, naming the first).
    pub fn from_entries(entries: Vec<Entry>) -> Result<Self, Vec<ParseError>> {
        Self::index(entries).map_err(ErrorList::finish)
    }

    pub(crate) fn index(entries: Vec<Entry>) -> Result<Self, ErrorList> {
        let mut by_key: HashMap<Key, usize> = HashMap::with_capacity(entries.len());
        let mut by_route: HashMap<RouteId, usize> = HashMap::with_capacity(entries.len());
        let mut errors = ErrorList::default();
        for (index, entry) in entries.iter().enumerate() {
            match by_key.entry(entry.key.clone()) {
                Slot::Occupied(first) => errors.push(ParseError {
                    line: entry.line,
                    kind: ErrorKind::DuplicateKey {
                        key: entry.key.to_string(),
                        first_line: entries[*first.get()].line,
                    },
                }),
                Slot::Vacant(slot) => {
                    slot.insert(index);
                }
            }
            match by_route.entry(entry.route.clone()) {
                Slot::Occupied(first) => errors.push(ParseError {
                    line: entry.line,
                    kind: ErrorKind::DuplicateRoute {
                        route: entry.route.to_string(),
                        first_line: entries[*first.get()].line,
                    },
                }),
                Slot::Vacant(slot) => {
                    slot.insert(index);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut map = RouteMap {
            entries,
            by_key,
            by_route,
            hash: String::new(),
        };
        let digest = Sha256::digest(map.to_text().as_bytes());
        map.hash = digest.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(map)
    }

    /// Parses and validates map text; see [`crate::parse()`].
    pub fn parse(text: &[u8]) -> Result<Self, Vec<ParseError>> {
        crate::parse::parse(text)
    }

    /// What every source does with the bytes it fetched from `origin`: a zero-byte input is
    /// refused (see [`LoadError::Empty`]), anything else is parsed.
    pub fn load(origin: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.is_empty() {
            return Err(LoadError::Empty {
                origin: origin.to_owned(),
            });
        }
        Self::parse(bytes).map_err(|errors| LoadError::Invalid {
            origin: origin.to_owned(),
            errors,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn by_key(&self, key: &Key) -> Option<&Entry> {
        self.by_key.get(key).map(|i| &self.entries[*i])
    }

    /// Looks an address up the way an agent does for the address a connection arrived on.
    pub fn by_addr(&self, addr: IpAddr) -> Option<&Entry> {
        self.by_key(&Key::from_addr(addr))
    }

    /// Looks a route up without allocating (case-sensitive, as Apache).
    pub fn by_route(&self, route: &str) -> Option<&Entry> {
        self.by_route.get(route).map(|i| &self.entries[*i])
    }

    /// SHA-256 of the canonical text, 64 lower-case hex digits.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The first 12 hex digits of [`RouteMap::hash`], enough to tell maps apart at a glance.
    pub fn short_hash(&self) -> &str {
        short(&self.hash)
    }

    /// The canonical text: one entry per line in map order, attributes only where they
    /// differ from the defaults. Parsing it gives back an equal map.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.entries.len() * 32);
        for e in &self.entries {
            let _ = write!(out, "{} {}", e.key, e.route);
            if e.loadfactor != LoadFactor::DEFAULT {
                let _ = write!(out, " loadfactor={}", e.loadfactor);
            }
            if let Some(port) = e.port {
                let _ = write!(out, " port={port}");
            }
            if e.status != Status::Enabled {
                let _ = write!(out, " status={}", e.status);
            }
            out.push('\n');
        }
        out
    }
}

/// The first 12 characters of a hash (all of it if shorter).
pub fn short(hash: &str) -> &str {
    hash.char_indices()
        .nth(12)
        .map_or(hash, |(end, _)| hash.get(..end).unwrap_or(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_ignores_comments_and_spacing() {
        let a = RouteMap::parse(b"10.0.0.1 www1 loadfactor=60\n").unwrap();
        let b = RouteMap::parse(b"# edited\n\n10.0.0.1\twww1   loadfactor=60 # same\n").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        // Equal to `printf "10.0.0.1 www1 loadfactor=60\n" | sha256sum`; pinned so that a
        // change of the canonical form (which would make components built
        // from different versions disagree) is noticed.
        assert_eq!(
            a.hash(),
            "a22b098514af73f6439c3eb57ef0d4299f672fef34948bdd7b63b28149469876"
        );
    }

    #[test]
    fn hash_changes_with_content_and_order() {
        let a = RouteMap::parse(b"a www1\nb www2\n").unwrap();
        let b = RouteMap::parse(b"b www2\na www1\n").unwrap();
        let c = RouteMap::parse(b"a www1\nb www2 loadfactor=2\n").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(
            a.hash(),
            RouteMap::parse(b"a www1 loadfactor=1 status=enabled\nb www2")
                .unwrap()
                .hash()
        );
    }

    #[test]
    fn lookups_by_key_address_and_route() {
        let map = RouteMap::parse(b"10.0.0.1 www1\nfd00::1 www6\nWeb-0 www0\n").unwrap();
        assert_eq!(
            map.by_addr("10.0.0.1".parse().unwrap())
                .unwrap()
                .route
                .as_str(),
            "www1"
        );
        assert_eq!(
            map.by_addr("::ffff:10.0.0.1".parse().unwrap())
                .unwrap()
                .route
                .as_str(),
            "www1"
        );
        assert_eq!(
            map.by_addr("fd00:0::1".parse().unwrap())
                .unwrap()
                .route
                .as_str(),
            "www6"
        );
        assert_eq!(
            map.by_key(&Key::parse("WEB-0").unwrap())
                .unwrap()
                .route
                .as_str(),
            "www0"
        );
        assert_eq!(map.by_route("www0").unwrap().key, Key::Name("web-0".into()));
        assert!(map.by_route("WWW0").is_none(), "routes are case-sensitive");
        assert!(map.by_addr("10.0.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn canonical_text_round_trips() {
        let map =
            RouteMap::parse(b"10.0.0.1 www1 status=drain port=81 loadfactor=7 web-0 www0").unwrap();
        assert_eq!(
            map.to_text(),
            "10.0.0.1 www1 loadfactor=7 port=81 status=drain\nweb-0 www0\n"
        );
        let again = RouteMap::parse(map.to_text().as_bytes()).unwrap();
        assert_eq!(again.hash(), map.hash());
    }
}
