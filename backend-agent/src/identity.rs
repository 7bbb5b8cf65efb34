//! Which map entry is this instance's own.
//!
//! The default key is the local address a connection arrived on, exactly Apache's
//! `SERVER_ADDR`: agents whose command lines differ only in their listen and upstream
//! addresses, sharing one map, each find their own route (the classic setup's "identical configs
//! managed centrally"). `--server-addr` (or `POD_IP`) replaces it. When the address is not in
//! the map the name key is tried: `--server-name`, `POD_NAME`, then the host name, for maps
//! keyed by StatefulSet pod names.

use arc_swap::ArcSwap;
use routemap::{Entry, Key, Snapshot};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct Identity {
    server_addr: Option<IpAddr>,
    name: Option<Key>,
    /// Local addresses connections arrived on; starts with the listen address when that is
    /// a specific one, so `/status` shows the route before any traffic.
    seen: ArcSwap<Vec<IpAddr>>,
}

/// How this instance's entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchedBy {
    Address,
    Name,
}

impl Identity {
    /// `name` that is not a valid host name is ignored with a warning: it can never match.
    /// `listen` is the address the agent listens on.
    pub fn new(server_addr: Option<IpAddr>, name: Option<&str>, listen: IpAddr) -> Self {
        let name = name.and_then(|n| match Key::parse(n) {
            Ok(key @ Key::Name(_)) => Some(key),
            Ok(Key::Addr(_)) | Err(_) => {
                tracing::warn!(
                    name = n,
                    "server name is not a host name; it cannot match a map key"
                );
                None
            }
        });
        Self {
            server_addr: server_addr.map(|a| a.to_canonical()),
            name,
            seen: ArcSwap::from_pointee(if listen.is_unspecified() {
                Vec::new()
            } else {
                vec![listen.to_canonical()]
            }),
        }
    }

    /// The address key used for a connection that arrived on `local`.
    pub fn addr_key(&self, local: IpAddr) -> IpAddr {
        self.server_addr.unwrap_or_else(|| local.to_canonical())
    }

    pub fn name_key(&self) -> Option<&Key> {
        self.name.as_ref()
    }

    /// This instance's entry in `snapshot`, for a connection that arrived on `local`.
    pub fn lookup<'s>(
        &self,
        snapshot: &'s Snapshot,
        local: IpAddr,
    ) -> Option<(&'s Entry, MatchedBy)> {
        let addr = self.addr_key(local);
        if let Some(entry) = snapshot.by_addr(addr) {
            return Some((entry, MatchedBy::Address));
        }
        let entry = snapshot.by_key(self.name.as_ref()?)?;
        Some((entry, MatchedBy::Name))
    }

    /// Remembers the local addresses connections arrive on, for `/status`. Lock-free on the
    /// request path; writes only when an address is new.
    pub fn note_local(&self, local: IpAddr) {
        let addr = self.addr_key(local);
        if !self.seen.load().contains(&addr) {
            self.seen.rcu(|seen| {
                let mut seen = Vec::clone(seen);
                if !seen.contains(&addr) {
                    seen.push(addr);
                }
                seen
            });
        }
    }

    /// The address keys known so far: `--server-addr`, else those connections arrived on.
    pub fn addr_keys(&self) -> Arc<Vec<IpAddr>> {
        match self.server_addr {
            Some(addr) => Arc::new(vec![addr]),
            None => self.seen.load_full(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemap::RouteMap;
    use std::time::SystemTime;

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::new(
            RouteMap::parse(text.as_bytes()).unwrap(),
            1,
            SystemTime::now(),
        )
    }

    #[test]
    fn finds_by_local_address_then_by_name() {
        let map = snapshot("127.0.0.2 www1\n127.0.0.3 www2\nweb-0 www0\n");
        let id = Identity::new(None, Some("web-0"), "0.0.0.0".parse().unwrap());
        let route = |local: &str| {
            id.lookup(&map, local.parse().unwrap())
                .map(|(e, by)| (e.route.to_string(), by))
        };
        assert_eq!(
            route("127.0.0.2"),
            Some(("www1".into(), MatchedBy::Address))
        );
        assert_eq!(
            route("::ffff:127.0.0.3"),
            Some(("www2".into(), MatchedBy::Address))
        );
        assert_eq!(route("127.0.0.9"), Some(("www0".into(), MatchedBy::Name)));
        let nameless = Identity::new(None, None, "0.0.0.0".parse().unwrap());
        assert!(
            nameless
                .lookup(&map, "127.0.0.9".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn an_explicit_server_address_overrides_the_local_one() {
        let map = snapshot("10.16.4.4 www1\n127.0.0.2 www2\n");
        let id = Identity::new(
            Some("10.16.4.4".parse().unwrap()),
            None,
            "0.0.0.0".parse().unwrap(),
        );
        let (entry, by) = id.lookup(&map, "127.0.0.2".parse().unwrap()).unwrap();
        assert_eq!((entry.route.as_str(), by), ("www1", MatchedBy::Address));
        assert_eq!(*id.addr_keys(), ["10.16.4.4".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn remembers_each_local_address_once() {
        let id = Identity::new(None, Some("not_a_host"), "0.0.0.0".parse().unwrap());
        assert!(id.name_key().is_none());
        for a in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
            id.note_local(a.parse().unwrap());
        }
        assert_eq!(id.addr_keys().len(), 2);
        let specific = Identity::new(None, None, "127.0.0.7".parse().unwrap());
        assert_eq!(
            *specific.addr_keys(),
            ["127.0.0.7".parse::<IpAddr>().unwrap()],
            "known before any traffic"
        );
    }
}
