//! The live member table: rebuilt from every new route map snapshot (and whenever a member
//! host name resolves differently), swapped in with one `ArcSwap` store. Requests load it
//! without a lock and finish on the table they started with.

use crate::overrides::{self, Edit, OverrideSet};
use crate::table::{MemberTable, Resolved};
use arc_swap::{ArcSwap, ArcSwapOption};
use routemap::{Live, Snapshot};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

#[derive(Default)]
pub struct Balancer {
    table: ArcSwapOption<MemberTable>,
    swaps: AtomicU64,
    /// The operators' overrides, applied to every table (see [`crate::overrides`]).
    overrides: ArcSwap<OverrideSet>,
    /// Kept in a store other proxies share: entries of members this map lacks stay (another
    /// replica may have them), rather than going with the member.
    shared_overrides: bool,
    /// Held while a table or a set is put in place, so that a swap and a change of the set
    /// that race each other cannot leave a table without the latest set. Never taken on
    /// the request path.
    applying: Mutex<()>,
}

impl Balancer {
    /// A balancer whose overrides live in a store shared with other proxies.
    pub fn with_shared_overrides() -> Self {
        Self {
            shared_overrides: true,
            ..Self::default()
        }
    }

    pub fn overrides(&self) -> Arc<OverrideSet> {
        self.overrides.load_full()
    }

    /// Applies `set` (as read from, or written to, the store) to the current table and to
    /// every later one.
    pub fn set_overrides(&self, set: OverrideSet) {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = self.table.load_full() {
            overrides::apply(&table, &set);
        }
        self.overrides.store(Arc::new(set));
    }

    /// Makes `edit` in the in-process set (no store) and applies it.
    pub fn edit_overrides(&self, edit: &Edit) {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let set = self.overrides.load().edited(edit);
        if let Some(table) = self.table.load_full() {
            overrides::apply(&table, &set);
        }
        self.overrides.store(Arc::new(set));
    }

    /// The current table, `None` before the first map. Lock-free.
    pub fn table(&self) -> Option<Arc<MemberTable>> {
        self.table.load_full()
    }

    /// Tables swapped in since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Relaxed)
    }

    fn swap(&self, snapshot: Arc<Snapshot>, resolved: &Resolved, member_port: u16) {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.table.load_full();
        let (table, diff) =
            MemberTable::build(snapshot, previous.as_deref(), resolved, member_port);
        let mut set = self.overrides.load_full();
        if !self.shared_overrides {
            let kept = set.kept_for(&table);
            if kept != *set {
                set = Arc::new(kept);
                self.overrides.store(set.clone());
            }
        }
        overrides::apply(&table, &set);
        let (hash, generation) = (
            table.snapshot().short_hash().to_owned(),
            table.snapshot().generation(),
        );
        self.table.store(Some(Arc::new(table)));
        self.swaps.fetch_add(1, Relaxed);
        tracing::info!(map = %hash, generation, "member table swapped: {diff}");
    }
}

/// How members are reached: the port of entries without `port=`, and where name keys'
/// addresses come from.
#[derive(Debug)]
pub struct Addressing {
    pub member_port: u16,
    pub names: Names,
}

/// Where name keys' addresses come from (see [`crate::membership`]).
#[derive(Debug)]
pub enum Names {
    /// `KEY` + `suffix`, resolved again every `refresh` and on every map change.
    Dns { suffix: String, refresh: Duration },
    /// The latest view of a Service's EndpointSlices (`None` before the first list).
    #[cfg(feature = "kubernetes")]
    EndpointSlices(
        tokio::sync::watch::Receiver<Option<Arc<crate::membership::endpoint_slices::View>>>,
    ),
}

/// Keeps `balancer` in step with `live`: a new table for every new snapshot, and whenever a
/// name key's endpoint changes.
pub async fn follow(balancer: Arc<Balancer>, live: Live, addressing: Addressing) {
    let Addressing {
        member_port,
        mut names,
    } = addressing;
    let mut changes = live.subscribe();
    let mut resolved = Resolved::new();
    let mut built_generation = 0;
    loop {
        if let Some(snapshot) = live.load() {
            let fresh = match &names {
                Names::Dns { suffix, .. } => {
                    crate::membership::dns::resolve_names(&snapshot, &resolved, suffix).await
                }
                #[cfg(feature = "kubernetes")]
                Names::EndpointSlices(view) => {
                    let view = view.borrow().clone();
                    crate::membership::endpoint_slices::resolve(
                        &snapshot,
                        view.as_deref(),
                        &resolved,
                    )
                }
            };
            if snapshot.generation() != built_generation || fresh != resolved {
                resolved = fresh;
                built_generation = snapshot.generation();
                balancer.swap(snapshot, &resolved, member_port);
            }
        }
        match &mut names {
            Names::Dns { refresh, .. } => {
                let refresh = *refresh;
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(refresh) => {}
                }
            }
            #[cfg(feature = "kubernetes")]
            Names::EndpointSlices(view) => {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = view.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
