//! The replicas of this balancer, and whether each has applied the latest route map and
//! overrides: what the balancer-manager's "Replicas" section shows.
//!
//! Sharing overrides is only half of one balancer across replicas; the other half is seeing
//! that every replica did apply them. The list of replicas comes from one of two places:
//!
//! - `--overrides-file`: every proxy keeps its admin address in `PATH.replicas` beside the
//!   file (under the file's lock), written at start and every round, removed when it stops
//!   (see [`registry`]). A proxy that died without removing its entry shows as unreachable,
//!   and is forgotten once its entry has not been renewed for [`FORGET_AFTER`].
//! - `--proxy-service NAMESPACE/NAME`: the endpoints of the proxies' own Service
//!   (EndpointSlices, watched as `--member-service` watches the members'), each on this
//!   proxy's admin port: what Kubernetes says the replicas are, with no registry to keep.
//!
//! Every [`POLL_INTERVAL`] each replica's admin `/status?members=false` (the status without
//! the member list, so its size does not grow with the map) is read, this one's too (through
//! its own listener, so every replica is measured the same way), with a deadline for the
//! whole answer (see [`poll`]). A replica is current when it applies the highest overrides
//! version any replica reports and the route map most recently loaded by any of them: a
//! replica that missed a change shows as behind until it catches up.

pub mod poll;
pub mod registry;

use arc_swap::ArcSwap;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How often every replica's `/status` is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The longest one replica's `/status` may take, whole.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A registry entry not renewed for this long is removed (a proxy killed without the chance
/// to remove its own entry).
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What one replica reported when last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replica {
    /// The pod's name (`--proxy-service`) or `HOST pid PID` (`--overrides-file`).
    pub name: String,
    /// Its admin listener, where `/status` was read.
    pub admin: String,
    /// Whether it is the proxy serving this page.
    pub this: bool,
    /// Its software version.
    pub version: Option<String>,
    /// The hash of the route map it serves, and when it loaded it (wall-clock ms).
    pub map_hash: Option<String>,
    pub map_loaded_at_ms: Option<u64>,
    /// The version of the overrides it applies, and whether they are shared (from a
    /// store) rather than its own; unknown for a proxy older than this list.
    pub overrides_version: Option<u64>,
    pub overrides_shared: Option<bool>,
    /// Whether it is shutting down.
    pub draining: Option<bool>,
    /// Whether it answered `/status` (what it answered may still have been refused).
    pub answered: bool,
    /// Why it could not be read, when it could not.
    pub error: Option<String>,
    /// When it was last read (wall-clock ms), and since when it has not answered.
    pub checked_at_ms: u64,
    pub unreachable_since_ms: Option<u64>,
}

/// The replicas as the balancer-manager shows them.
#[derive(Debug, Serialize)]
pub struct ReplicasView {
    /// Where the list comes from: `file:PATH.replicas` or `service:NAMESPACE/NAME`.
    pub source: String,
    /// Why the list itself could not be read (an unreadable registry), when it could not.
    pub error: Option<String>,
    /// The highest overrides version and the most recently loaded map any replica reports.
    pub latest_overrides_version: Option<u64>,
    pub latest_map_hash: Option<String>,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaView {
    #[serde(flatten)]
    pub replica: Replica,
    /// Whether it applies the latest map and the latest overrides (`None`: unknown, it
    /// could not be read, or its overrides are its own and not comparable).
    pub map_current: Option<bool>,
    pub overrides_current: Option<bool>,
}

/// The last round's reports, shared between the poller and the balancer-manager.
pub struct Replicas {
    /// This process's identity in `/status`, by which it knows itself among the replicas.
    instance: String,
    source: Option<String>,
    round: ArcSwap<Round>,
}

/// One round of reads: the list's error, if any, and each replica's report.
#[derive(Debug, Default)]
pub struct Round {
    pub error: Option<String>,
    pub replicas: Vec<Replica>,
}

impl Replicas {
    /// `source` is where the list comes from, `None` when this proxy has no way to know its
    /// replicas (no shared store, or overrides in a ConfigMap without `--proxy-service`).
    pub fn new(source: Option<String>) -> Self {
        Self {
            instance: crate::manager::access::random_hex(8),
            source,
            round: ArcSwap::default(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn round(&self) -> Arc<Round> {
        self.round.load_full()
    }

    pub fn publish(&self, round: Round) {
        self.round.store(Arc::new(round));
    }

    /// The view, `None` when the replicas are not known.
    pub fn view(&self) -> Option<ReplicasView> {
        let source = self.source.clone()?;
        let round = self.round();
        Some(view(source, &round))
    }
}

/// Which replicas are current: the highest version of shared overrides and the most
/// recently loaded map among those that answered. Overrides a replica keeps for itself (no
/// store) are not compared: their versions count different changes.
pub fn view(source: String, round: &Round) -> ReplicasView {
    let answered = || round.replicas.iter().filter(|r| r.error.is_none());
    let shared = |r: &Replica| r.overrides_shared == Some(true);
    let latest_overrides_version = answered()
        .filter(|r| shared(r))
        .filter_map(|r| r.overrides_version)
        .max();
    let latest_map_hash = answered()
        .filter(|r| r.map_hash.is_some())
        .max_by_key(|r| r.map_loaded_at_ms)
        .and_then(|r| r.map_hash.clone());
    let replicas = round
        .replicas
        .iter()
        .map(|replica| {
            let answered = replica.error.is_none();
            ReplicaView {
                map_current: answered
                    .then(|| replica.map_hash.is_some() && replica.map_hash == latest_map_hash),
                overrides_current: (answered && shared(replica))
                    .then(|| replica.overrides_version == latest_overrides_version),
                replica: replica.clone(),
            }
        })
        .collect();
    ReplicasView {
        source,
        error: round.error.clone(),
        latest_overrides_version,
        latest_map_hash,
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, hash: &str, loaded: u64, overrides: u64) -> Replica {
        Replica {
            name: name.to_owned(),
            admin: format!("{name}:9900"),
            this: false,
            version: Some("0.1.0".to_owned()),
            map_hash: Some(hash.to_owned()),
            map_loaded_at_ms: Some(loaded),
            overrides_version: Some(overrides),
            overrides_shared: Some(true),
            draining: Some(false),
            answered: true,
            error: None,
            checked_at_ms: 1,
            unreachable_since_ms: None,
        }
    }

    #[test]
    fn a_replica_that_missed_a_change_is_behind_and_an_unreachable_one_unknown() {
        let mut gone = replica("d", "old", 0, 0);
        gone.error = Some("refused".to_owned());
        gone.answered = false;
        gone.map_hash = None;
        gone.overrides_version = None;
        // A replica whose overrides are its own: many changes, none of them shared.
        let mut own = replica("e", "new", 25, 99);
        own.overrides_shared = Some(false);
        let round = Round {
            error: None,
            replicas: vec![
                replica("a", "new", 20, 7),
                replica("b", "old", 10, 7),
                replica("c", "new", 30, 6),
                gone,
                own,
            ],
        };
        let view = view("file:x".to_owned(), &round);
        assert_eq!(view.latest_map_hash.as_deref(), Some("new"));
        assert_eq!(view.latest_overrides_version, Some(7));
        let states: Vec<_> = view
            .replicas
            .iter()
            .map(|r| (r.replica.name.as_str(), r.map_current, r.overrides_current))
            .collect();
        assert_eq!(
            states,
            [
                ("a", Some(true), Some(true)),
                ("b", Some(false), Some(true)),
                ("c", Some(true), Some(false)),
                ("d", None, None),
                ("e", Some(true), None),
            ]
        );
    }
}
