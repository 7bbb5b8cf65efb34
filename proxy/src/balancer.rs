//! The live member table: rebuilt from every new route map snapshot (and whenever a member
//! host name resolves differently), swapped in with one `ArcSwap` store. Requests load it
//! without a lock and finish on the table they started with.

use crate::table::{MemberTable, Resolved};
use arc_swap::ArcSwapOption;
use routemap::{Live, Snapshot};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Balancer {
    table: ArcSwapOption<MemberTable>,
    swaps: AtomicU64,
}

impl Balancer {
    /// The current table, `None` before the first map. Lock-free.
    pub fn table(&self) -> Option<Arc<MemberTable>> {
        self.table.load_full()
    }

    /// Tables swapped in since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Relaxed)
    }

    fn swap(&self, snapshot: Arc<Snapshot>, resolved: &Resolved, member_port: u16) {
        let previous = self.table.load_full();
        let (table, diff) =
            MemberTable::build(snapshot, previous.as_deref(), resolved, member_port);
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
