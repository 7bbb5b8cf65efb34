//! Name keys resolved through DNS (the default): `KEY` + `--member-domain-suffix`, again
//! every `--dns-refresh` and on every map change.

use super::{Found, Resolved};
use routemap::{Key, Snapshot};
use std::sync::Arc;
use std::time::Duration;

/// Resolves every host-name key of the map (as `KEY` + `suffix`). A name that does not
/// resolve makes that member unusable (logged when it changes), never the map invalid.
pub async fn resolve_names(snapshot: &Snapshot, previous: &Resolved, suffix: &str) -> Resolved {
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
        (
            name.clone(),
            ip.map(|ip| Found {
                ip,
                terminating: false,
            }),
        )
    });
    let resolved: Resolved = futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .collect();
    for (name, found) in &resolved {
        let before = previous.get(name).copied().flatten().map(|f| f.ip);
        match found.map(|f| f.ip) {
            None if before.is_some() || !previous.contains_key(name) => {
                tracing::warn!(%name, host = format!("{name}{suffix}"), "member host name does not resolve; the member is unusable until it does");
            }
            Some(ip) if before != Some(ip) => {
                tracing::info!(%name, host = format!("{name}{suffix}"), %ip, "member host name resolved")
            }
            _ => {}
        }
    }
    resolved
}
