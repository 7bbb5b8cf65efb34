//! The member table: built from one route map snapshot, swapped in whole.
//!
//! One immutable value holds the members and the route index, so a request sees a
//! consistent table from its start to its end, and a swap is a single pointer store.

use crate::member::{Member, MemberState};
use http::uri::Authority;
use routemap::{Key, RouteId, Snapshot};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct MemberTable {
    members: Vec<Arc<Member>>,
    by_route: HashMap<RouteId, usize>,
    /// Former routes of renamed entries (same key, new route), so sessions that still carry
    /// the old route stay on their member; kept until another member takes that route.
    aliases: HashMap<RouteId, usize>,
    snapshot: Arc<Snapshot>,
}

pub use crate::membership::Resolved;

impl MemberTable {
    /// Builds the table for `snapshot`. Members whose key and route are unchanged since
    /// `previous` keep their runtime state. Returns the table and a one-line description of
    /// what changed.
    pub fn build(
        snapshot: Arc<Snapshot>,
        previous: Option<&MemberTable>,
        resolved: &Resolved,
        default_port: u16,
    ) -> (Self, String) {
        let mut members = Vec::with_capacity(snapshot.len());
        let mut by_route = HashMap::with_capacity(snapshot.len());
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for entry in snapshot.entries() {
            let port = entry.port.unwrap_or(default_port);
            let (ip, terminating) = match &entry.key {
                Key::Addr(ip) => (Some(*ip), false),
                Key::Name(name) => match resolved.get(name).copied().flatten() {
                    Some(found) => (Some(found.ip), found.terminating),
                    None => (None, false),
                },
            };
            let address = ip.map(|ip| SocketAddr::new(ip, port));
            let authority = address.and_then(|a| Authority::try_from(a.to_string()).ok());
            let old = previous
                .and_then(|p| p.by_route(entry.route.as_str()))
                .filter(|m| m.key == entry.key);
            let state = match old {
                Some(old) => {
                    let mut what = Vec::new();
                    if old.map_loadfactor != entry.loadfactor {
                        what.push(format!(
                            "loadfactor {}->{}",
                            old.map_loadfactor, entry.loadfactor
                        ));
                    }
                    if old.map_status != entry.status {
                        what.push(format!("status {}->{}", old.map_status, entry.status));
                    }
                    if old.address != address {
                        what.push(format!("address {}->{}", show(old.address), show(address)));
                    }
                    if !what.is_empty() {
                        changed.push(format!("{} ({})", entry.route, what.join(", ")));
                    }
                    old.state.clone()
                }
                None => {
                    added.push(entry.route.to_string());
                    Arc::new(MemberState::default())
                }
            };
            by_route.insert(entry.route.clone(), members.len());
            members.push(Arc::new(Member {
                route: entry.route.clone(),
                key: entry.key.clone(),
                port,
                address,
                authority,
                map_loadfactor: entry.loadfactor,
                map_status: entry.status,
                terminating,
                state,
            }));
        }
        let by_key: HashMap<&Key, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (&m.key, i))
            .collect();
        let mut aliases = HashMap::new();
        let mut removed = Vec::new();
        let mut renamed = Vec::new();
        if let Some(previous) = previous {
            for old in &previous.members {
                let kept = by_route
                    .get(old.route.as_str())
                    .is_some_and(|i| members[*i].key == old.key);
                if kept {
                    continue;
                }
                match by_key.get(&old.key) {
                    Some(&i) if !by_route.contains_key(old.route.as_str()) => {
                        renamed.push(format!("{}->{}", old.route, members[i].route));
                        added.retain(|r| *r != members[i].route.as_str());
                        aliases.insert(old.route.clone(), i);
                    }
                    _ => removed.push(old.route.to_string()),
                }
            }
            for (alias, &j) in &previous.aliases {
                if let Some(&i) = by_key.get(&previous.members[j].key)
                    && !by_route.contains_key(alias.as_str())
                {
                    aliases.entry(alias.clone()).or_insert(i);
                }
            }
        }
        let mut diff = String::new();
        for (label, list) in [
            ("added", &added),
            ("removed", &removed),
            ("renamed", &renamed),
            ("changed", &changed),
        ] {
            if !list.is_empty() {
                let _ = write!(
                    diff,
                    "{}{label} [{}]",
                    if diff.is_empty() { "" } else { "; " },
                    list.join(", ")
                );
            }
        }
        if diff.is_empty() {
            diff.push_str("no member changes");
        }
        (
            Self {
                members,
                by_route,
                aliases,
                snapshot,
            },
            diff,
        )
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    pub fn by_route(&self, route: &str) -> Option<&Arc<Member>> {
        self.by_route.get(route).map(|i| &self.members[*i])
    }

    /// The member a sticky route leads to: its current route, or a former one it was
    /// renamed from.
    pub fn by_sticky_route(&self, route: &str) -> Option<&Arc<Member>> {
        self.sticky_index(route).map(|i| &self.members[i])
    }

    /// Like [`MemberTable::by_sticky_route`], as an index into [`MemberTable::members`].
    pub fn sticky_index(&self, route: &str) -> Option<usize> {
        self.by_route
            .get(route)
            .or_else(|| self.aliases.get(route))
            .copied()
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

fn show(address: Option<SocketAddr>) -> String {
    address.map_or_else(|| "unresolved".to_owned(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemap::RouteMap;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::SystemTime;

    fn snap(text: &str, generation: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot::new(
            RouteMap::parse(text.as_bytes()).unwrap(),
            generation,
            SystemTime::now(),
        ))
    }

    #[test]
    fn members_come_from_the_map_with_ports_and_resolved_names() {
        let mut resolved = Resolved::new();
        resolved.insert(
            "web-0".into(),
            Some(crate::membership::Found {
                ip: "10.0.0.9".parse().unwrap(),
                terminating: false,
            }),
        );
        resolved.insert("web-1".into(), None);
        let (table, diff) = MemberTable::build(
            snap(
                "10.0.0.1 www1 port=8080\nweb-0 www0\nweb-1 www9 loadfactor=5\n",
                1,
            ),
            None,
            &resolved,
            80,
        );
        assert_eq!(diff, "added [www1, www0, www9]");
        assert_eq!(
            table
                .by_route("www1")
                .unwrap()
                .authority
                .as_ref()
                .unwrap()
                .as_str(),
            "10.0.0.1:8080"
        );
        assert_eq!(
            table.by_route("www0").unwrap().address.unwrap().to_string(),
            "10.0.0.9:80"
        );
        assert!(
            table.by_route("www9").unwrap().authority.is_none(),
            "unresolved: unusable, not an error"
        );
    }

    #[test]
    fn unchanged_members_keep_their_state_and_the_diff_says_what_changed() {
        let (first, _) = MemberTable::build(
            snap("10.0.0.1 www1\n10.0.0.2 www2\n10.0.0.3 www3\n", 1),
            None,
            &Resolved::new(),
            80,
        );
        first
            .by_route("www1")
            .unwrap()
            .state
            .requests
            .store(7, Relaxed);
        first
            .by_route("www3")
            .unwrap()
            .state
            .requests
            .store(9, Relaxed);
        let (second, diff) = MemberTable::build(
            snap(
                "10.0.0.1 www1 loadfactor=30\n10.0.0.9 www3\n10.0.0.4 www4\n",
                2,
            ),
            Some(&first),
            &Resolved::new(),
            80,
        );
        assert_eq!(
            diff,
            "added [www3, www4]; removed [www2, www3]; changed [www1 (loadfactor 1->30)]"
        );
        assert_eq!(
            second
                .by_route("www1")
                .unwrap()
                .state
                .requests
                .load(Relaxed),
            7,
            "same key and route: state kept"
        );
        assert_eq!(
            second
                .by_route("www3")
                .unwrap()
                .state
                .requests
                .load(Relaxed),
            0,
            "new key: a new member"
        );
    }

    #[test]
    fn a_renamed_route_stays_an_alias_until_another_member_takes_it() {
        let build = |text: &str, generation, previous: Option<&MemberTable>| {
            MemberTable::build(snap(text, generation), previous, &Resolved::new(), 80)
        };
        let (first, _) = build("10.0.0.1 www1\n10.0.0.2 www2\n", 1, None);
        let (second, diff) = build("10.0.0.1 shop1\n10.0.0.2 www2\n", 2, Some(&first));
        assert_eq!(diff, "renamed [www1->shop1]");
        assert_eq!(
            second.by_sticky_route("www1").unwrap().route.as_str(),
            "shop1"
        );
        assert!(second.by_route("www1").is_none(), "not a member of its own");
        let (third, _) = build(
            "10.0.0.1 shop1\n10.0.0.2 www2 loadfactor=2\n",
            3,
            Some(&second),
        );
        assert_eq!(
            third.by_sticky_route("www1").unwrap().route.as_str(),
            "shop1",
            "kept across later swaps"
        );
        let (fourth, _) = build("10.0.0.1 shop1\n10.0.0.3 www1\n", 4, Some(&third));
        assert_eq!(
            fourth.by_sticky_route("www1").unwrap().key.to_string(),
            "10.0.0.3",
            "a real member wins"
        );
    }
}
