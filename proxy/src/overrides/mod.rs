//! The operators' runtime changes to members (status, loadfactor), as one set that every
//! replica applies the same way.
//!
//! A balancer-manager change edits the [`OverrideSet`] and the whole set is applied to the
//! member table ([`apply`]), after every change and after every table swap. Without a store
//! the set lives in this process (as Apache's balancer-manager does without
//! `BalancerPersist`) and an entry goes with its member. With a [`store::Store`] it lives
//! where every replica follows it — a file (`--overrides-file`, [`file_store`]) or a
//! ConfigMap (`--overrides-configmap`, `configmap_store`): a change is written there first
//! and fails visibly when it cannot be, so replicas never diverge.
//!
//! An entry names its member by route *and* key, as the table carries a member's state: a
//! route moved to another address does not inherit the old member's override.

#[cfg(feature = "kubernetes")]
pub mod configmap_store;
pub mod file_store;
pub mod store;

use crate::member::Member;
use crate::table::MemberTable;
use routemap::{LoadFactor, Status};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One member's override. `by` and `at_ms` say who set it and when, for the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub route: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadfactor: Option<u8>,
    /// The client address, and the token's name when tokens are used.
    pub by: String,
    /// Wall-clock milliseconds since the epoch.
    pub at_ms: u64,
}

/// Every override, with a version that moves on with each change (so a replica can say
/// which one it applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSet {
    pub version: u64,
    pub overrides: Vec<Override>,
}

/// A validated change to one member.
#[derive(Debug, Clone)]
pub struct Edit {
    pub route: String,
    pub key: String,
    pub status: Option<Status>,
    pub loadfactor: Option<LoadFactor>,
    /// Back to the map: the entry is removed (before `status`/`loadfactor` apply).
    pub reset: bool,
    pub by: String,
    pub at_ms: u64,
}

impl OverrideSet {
    /// The entry for `member`, if one names its route and key.
    pub fn of(&self, member: &Member) -> Option<&Override> {
        let entry = self
            .overrides
            .iter()
            .find(|o| o.route == member.route.as_str())?;
        // The key's text only for the one entry of this route (a swap asks for every member).
        (entry.key == member.key.to_string()).then_some(entry)
    }

    /// The set with `edit` made, one version on.
    pub fn edited(&self, edit: &Edit) -> OverrideSet {
        let mut next = self.clone();
        next.version = self.version.wrapping_add(1);
        let old = next
            .overrides
            .iter()
            .position(|o| o.route == edit.route)
            .map(|i| next.overrides.remove(i))
            .filter(|o| o.key == edit.key && !edit.reset);
        let status = edit.status.or(old.as_ref().and_then(|o| o.status));
        let loadfactor = edit
            .loadfactor
            .map(LoadFactor::get)
            .or(old.as_ref().and_then(|o| o.loadfactor));
        if status.is_some() || loadfactor.is_some() {
            next.overrides.push(Override {
                route: edit.route.clone(),
                key: edit.key.clone(),
                status,
                loadfactor,
                by: edit.by.clone(),
                at_ms: edit.at_ms,
            });
        }
        next
    }

    /// The set without the entries of members `table` no longer has (an in-process set's
    /// override goes with its member, as it always did).
    pub fn kept_for(&self, table: &MemberTable) -> OverrideSet {
        let mut kept = self.clone();
        kept.overrides.retain(|o| {
            table
                .by_route(&o.route)
                .is_some_and(|m| m.key.to_string() == o.key)
        });
        kept
    }

    /// What is wrong with a set read from a store, naming the entry.
    pub fn check(&self) -> Result<(), String> {
        for (i, o) in self.overrides.iter().enumerate() {
            let entry = format!("override {} (route {:?})", i + 1, o.route);
            if let Some(lf) = o.loadfactor
                && LoadFactor::new(u32::from(lf)).is_none()
            {
                return Err(format!(
                    "{entry}: loadfactor {lf} is not a whole number from 1 to 100"
                ));
            }
            if o.status.is_none() && o.loadfactor.is_none() {
                return Err(format!("{entry}: sets neither status nor loadfactor"));
            }
            if self.overrides[..i].iter().any(|p| p.route == o.route) {
                return Err(format!("{entry}: the route appears twice"));
            }
        }
        Ok(())
    }
}

/// Who set a member's override and when, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub by: String,
    pub at_ms: u64,
}

/// Makes every member of `table` carry exactly what `set` says of it (nothing, for members
/// it does not name).
pub fn apply(table: &MemberTable, set: &OverrideSet) {
    for member in table.members() {
        let entry = set.of(member);
        let state = &member.state;
        state.set_status_override(entry.and_then(|o| o.status));
        state.set_loadfactor_override(
            entry
                .and_then(|o| o.loadfactor)
                .and_then(|l| LoadFactor::new(u32::from(l))),
        );
        state.override_origin.store(entry.map(|o| {
            Arc::new(Origin {
                by: o.by.clone(),
                at_ms: o.at_ms,
            })
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(route: &str, key: &str) -> Edit {
        Edit {
            route: route.to_owned(),
            key: key.to_owned(),
            status: None,
            loadfactor: None,
            reset: false,
            by: "127.0.0.1".to_owned(),
            at_ms: 1,
        }
    }

    #[test]
    fn edits_merge_per_member_and_reset_removes() {
        let set = OverrideSet::default().edited(&Edit {
            status: Some(Status::Drain),
            ..edit("www1", "10.0.0.1")
        });
        let set = set.edited(&Edit {
            loadfactor: LoadFactor::new(30),
            ..edit("www1", "10.0.0.1")
        });
        assert_eq!(set.version, 2);
        assert_eq!(set.overrides.len(), 1);
        assert_eq!(set.overrides[0].status, Some(Status::Drain));
        assert_eq!(set.overrides[0].loadfactor, Some(30));
        // The same route at another address starts afresh.
        let moved = set.edited(&Edit {
            loadfactor: LoadFactor::new(5),
            ..edit("www1", "10.0.0.9")
        });
        assert_eq!(moved.overrides[0].status, None);
        let reset = set.edited(&Edit {
            reset: true,
            ..edit("www1", "10.0.0.1")
        });
        assert!(reset.overrides.is_empty());
        assert_eq!(reset.version, 3);
    }

    #[test]
    fn a_stored_set_is_checked_entry_by_entry() {
        let bad: OverrideSet = serde_json::from_str(
            r#"{"version":1,"overrides":[{"route":"a","key":"k","loadfactor":0,"by":"x","at_ms":0}]}"#,
        )
        .unwrap();
        assert!(
            bad.check()
                .unwrap_err()
                .contains("override 1 (route \"a\")")
        );
        let twice: OverrideSet = serde_json::from_str(
            r#"{"version":1,"overrides":[{"route":"a","key":"k","status":"drain","by":"x","at_ms":0},{"route":"a","key":"k","status":"drain","by":"x","at_ms":0}]}"#,
        )
        .unwrap();
        assert!(twice.check().unwrap_err().contains("twice"));
        assert!(
            serde_json::from_str::<OverrideSet>(
                r#"{"version":1,"overrides":[{"route":"a","key":"k","status":"asleep","by":"x","at_ms":0}]}"#
            )
            .is_err()
        );
    }
}
