//! The live member table: rebuilt from every new route map snapshot (and whenever a member
//! host name resolves differently), swapped in with one `ArcSwap` store. Requests load it
//! without a lock and finish on the table they started with.

use crate::table::{MemberTable, Resolved};
use arc_swap::ArcSwapOption;
use routemap::{Key, Live, Snapshot};
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

/// How members are reached: the port of entries without `port=`, the suffix that turns a
/// name key into a resolvable host name, and how often names are resolved again.
#[derive(Debug, Clone)]
pub struct Addressing {
    pub member_port: u16,
    pub domain_suffix: String,
    pub dns_refresh: Duration,
}

/// Keeps `balancer` in step with `live`: a new table for every new snapshot, and for DNS
/// changes of name keys (re-resolved every `dns_refresh` and on every map change).
pub async fn follow(balancer: Arc<Balancer>, live: Live, addressing: Addressing) {
    let Addressing {
        member_port,
        domain_suffix,
        dns_refresh,
    } = addressing;
    let mut changes = live.subscribe();
    let mut resolved = Resolved::new();
    let mut built_generation = 0;
    loop {
        if let Some(snapshot) = live.load() {
            let fresh = resolve_names(&snapshot, &resolved, &domain_suffix).await;
            if snapshot.generation() != built_generation || fresh != resolved {
                resolved = fresh;
                built_generation = snapshot.generation();
                balancer.swap(snapshot, &resolved, member_port);
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(dns_refresh) => {}
        }
    }
}

/// Resolves every host-name key of the map (as `KEY` + `suffix`). A name that does not
/// resolve makes that member unusable (logged when it changes), never the map invalid.
async fn resolve_names(snapshot: &Snapshot, previous: &Resolved, suffix: &str) -> Resolved {
    let names: Vec<Arc<str>> = snapshot
        .entries()
        .iter()
        .filter_map(|e| match &e.key {
            Key::Name(name) => Some(name.clone()),
            Key::Addr(_) => None,
        })
        .collect();
    let lookups = names.iter().map(|name| async move {
        let host = format!("{name}{suffix}");
        let found = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((host.as_str(), 0)),
        )
        .await;
        let ip = match found {
            Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()),
            _ => None,
        };
        (name.clone(), ip)
    });
    let resolved: Resolved = futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .collect();
    for (name, ip) in &resolved {
        let before = previous.get(name).copied().flatten();
        match ip {
            None if before.is_some() || !previous.contains_key(name) => {
                tracing::warn!(%name, host = format!("{name}{suffix}"), "member host name does not resolve; the member is unusable until it does");
            }
            Some(ip) if before != Some(*ip) => {
                tracing::info!(%name, host = format!("{name}{suffix}"), %ip, "member host name resolved")
            }
            _ => {}
        }
    }
    resolved
}
