//! The validated value types a route map is made of.
//!
//! Each type can only be built through its `parse` constructor, so a value that exists is
//! valid: the rest of the system never re-checks a route's characters or a loadfactor's range.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Longest route id accepted. Long enough for any naming scheme, short enough that a cookie
/// value stays small.
pub const MAX_ROUTE_LEN: usize = 64;

/// A route id such as `www1`: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// No `.` is allowed because the route is whatever follows the *last* `.` of a sticky value,
/// and nothing that could break a `Set-Cookie` header either. Routes are case-sensitive, as
/// in Apache.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(Arc<str>);

impl RouteId {
    /// Checks `text` against the route charset and length.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        if text.is_empty() {
            return Err(RouteError::Empty);
        }
        if text.len() > MAX_ROUTE_LEN {
            return Err(RouteError::TooLong(text.len()));
        }
        if let Some(bad) = text.chars().find(|c| !is_route_char(*c)) {
            return Err(RouteError::BadChar(bad));
        }
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` may appear in a route id.
pub fn is_route_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouteId({:?})", &*self.0)
    }
}

impl std::borrow::Borrow<str> for RouteId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Why a token is not a route id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route is empty")]
    Empty,
    #[error("route is {0} characters long; at most {MAX_ROUTE_LEN} are allowed")]
    TooLong(usize),
    #[error("route contains {0:?}; only letters, digits, '_' and '-' are allowed")]
    BadChar(char),
}

/// What a map entry is keyed by: the address an app instance serves on, or a stable host
/// name (a StatefulSet pod name such as `web-0`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Addr(IpAddr),
    /// Lower-cased, because DNS names are case-insensitive.
    Name(Arc<str>),
}

/// Longest host name (RFC 1123), and longest label within one.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl Key {
    /// Accepts an IPv4 or IPv6 address (IPv4-mapped IPv6 is stored as IPv4, so that an agent
    /// listening on a dual-stack socket finds its entry) or an RFC 1123 host name.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Key::Addr(addr.to_canonical()));
        }
        if text.contains(':') {
            return Err(KeyError::BadAddress);
        }
        // Something like `10.16.4.300` is a mistyped address, not a host name.
        if text
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(KeyError::BadAddress);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(KeyError::NameTooLong(text.len()));
        }
        for label in text.split('.') {
            if label.is_empty() {
                return Err(KeyError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(KeyError::LabelTooLong(label.len()));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(KeyError::BadChar(bad));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(KeyError::EdgeHyphen);
            }
        }
        Ok(Key::Name(if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Arc::from(text.to_ascii_lowercase())
        } else {
            Arc::from(text)
        }))
    }

    /// The key an address is looked up under.
    pub fn from_addr(addr: IpAddr) -> Self {
        Key::Addr(addr.to_canonical())
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Key::parse(text)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Addr(addr) => addr.fmt(f),
            Key::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Why a token is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("looks like an IP address but is not a valid one")]
    BadAddress,
    #[error("host name is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    NameTooLong(usize),
    #[error("host name has an empty label (two dots in a row, or a leading or trailing dot)")]
    EmptyLabel,
    #[error("host name label is {0} characters long; at most {MAX_LABEL_LEN} are allowed")]
    LabelTooLong(usize),
    #[error("host name contains {0:?}; only letters, digits, '-' and '.' are allowed")]
    BadChar(char),
    #[error("host name label starts or ends with '-'")]
    EdgeHyphen,
}

/// The administrative status of a member, as `status=` in the map.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Takes sticky and new sessions.
    #[default]
    Enabled,
    /// Takes nothing.
    Disabled,
    /// Keeps serving its existing sticky sessions but takes no new ones.
    Drain,
    /// Takes traffic only when no enabled member is usable.
    Standby,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Enabled,
        Status::Disabled,
        Status::Drain,
        Status::Standby,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
            Status::Drain => "drain",
            Status::Standby => "standby",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's weight, 1–100 as in Apache's `loadfactor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoadFactor(u8);

impl LoadFactor {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 100;
    /// Apache's default when a member names no loadfactor.
    pub const DEFAULT: LoadFactor = LoadFactor(1);

    pub fn new(value: u32) -> Option<Self> {
        let value = u8::try_from(value).ok()?;
        (Self::MIN..=Self::MAX)
            .contains(&value)
            .then_some(LoadFactor(value))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for LoadFactor {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for LoadFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One `KEY ROUTE [ATTR=VALUE ...]` pair of the map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub key: Key,
    pub route: RouteId,
    pub loadfactor: LoadFactor,
    /// The member port; `None` means the consumer's default (`--member-port`).
    pub port: Option<u16>,
    pub status: Status,
    /// 1-based line of the map this entry came from (0 for maps not read from text).
    pub line: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_accept_the_charset_and_reject_the_rest() {
        assert!(RouteId::parse("www1").is_ok());
        assert!(RouteId::parse("a_B-9").is_ok());
        assert_eq!(RouteId::parse(""), Err(RouteError::Empty));
        assert_eq!(RouteId::parse("www.1"), Err(RouteError::BadChar('.')));
        assert_eq!(RouteId::parse("wü"), Err(RouteError::BadChar('ü')));
        assert!(RouteId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            RouteId::parse(&"a".repeat(65)),
            Err(RouteError::TooLong(65))
        );
    }

    #[test]
    fn keys_are_addresses_or_host_names() {
        assert_eq!(
            Key::parse("10.16.4.4").unwrap(),
            Key::Addr("10.16.4.4".parse().unwrap())
        );
        assert_eq!(
            Key::parse("::ffff:10.1.2.3").unwrap(),
            Key::Addr("10.1.2.3".parse().unwrap())
        );
        assert!(matches!(Key::parse("fd00::1").unwrap(), Key::Addr(_)));
        assert_eq!(Key::parse("Web-0").unwrap(), Key::Name("web-0".into()));
        assert!(Key::parse("web-0.web.default.svc.cluster.local").is_ok());
        assert_eq!(Key::parse("10.16.4.300"), Err(KeyError::BadAddress));
        assert_eq!(Key::parse("fd00::zz"), Err(KeyError::BadAddress));
        assert_eq!(Key::parse("web..0"), Err(KeyError::EmptyLabel));
        assert_eq!(Key::parse("-web"), Err(KeyError::EdgeHyphen));
        assert_eq!(Key::parse("web_0"), Err(KeyError::BadChar('_')));
        assert_eq!(Key::parse(&"a".repeat(64)), Err(KeyError::LabelTooLong(64)));
    }

    #[test]
    fn loadfactor_range_is_apaches() {
        assert!(LoadFactor::new(0).is_none());
        assert_eq!(LoadFactor::new(1).unwrap().get(), 1);
        assert_eq!(LoadFactor::new(100).unwrap().get(), 100);
        assert!(LoadFactor::new(101).is_none());
    }
}
