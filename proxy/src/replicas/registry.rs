//! `PATH.replicas`: the proxies sharing the overrides file `PATH`, by admin address.
//!
//! Processes on one host (or on hosts sharing a volume) have no Service to list them, so
//! each one keeps its own entry: written when it starts and again every poll round (a
//! heartbeat, which also puts back an entry removed by mistake), removed when it stops, with
//! the same lock and atomic rename as the overrides themselves, so concurrent writers lose no
//! entry. An entry whose heartbeat is older than [`FORGET_AFTER`] (a proxy killed without
//! the chance to remove it) is dropped by the next writer. An entry is removed or replaced
//! only by the process that wrote it (its `instance`) or once it is stale: a proxy
//! restarted at the same address takes its key over, and a late removal by the old process
//! does not take the new one's entry away. The file is JSON:
//!
//! ```json
//! {"replicas": {"127.0.0.1:9900": {"host": "web1", "pid": 4242, "instance": "9f0c…",
//!   "since_ms": 1764892800000, "seen_ms": 1764892802000}}}
//! ```
//!
//! An admin listener on an unspecified address (`0.0.0.0:9900`) is registered as the
//! loopback address on its port, which is right for proxies on one host; on a shared
//! volume across hosts, give each proxy's `--admin-listen` an address the others reach (two
//! live proxies claiming one address are logged as a conflict).

use super::FORGET_AFTER;
use crate::overrides::file_store::{FileStore, read_bounded, write_atomically};
use crate::overrides::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The largest registry read: room for thousands of replicas.
const MAX_FILE: u64 = 1024 * 1024;

/// Unknown fields are kept out of the types but not refused, so that a newer proxy's
/// entries do not make an older one's registry unreadable.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    replicas: BTreeMap<SocketAddr, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    host: String,
    pid: u32,
    #[serde(default)]
    instance: String,
    since_ms: u64,
    #[serde(default)]
    seen_ms: u64,
}

/// A registered replica: its name and where its admin listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub admin: SocketAddr,
}

/// This process's entry: written by [`heartbeat`], removed by [`leave`].
#[derive(Debug, Clone)]
pub struct Me {
    pub admin: SocketAddr,
    pub instance: String,
    since_ms: u64,
}

impl Me {
    pub fn new(admin: SocketAddr, instance: &str) -> Self {
        Self {
            admin: reachable(admin),
            instance: instance.to_owned(),
            since_ms: crate::member::wall_ms(),
        }
    }
}

/// Where the registry of `store` is: its path with `.replicas` added.
pub fn path_of(store: &FileStore) -> PathBuf {
    let mut path = store.path().as_os_str().to_owned();
    path.push(".replicas");
    PathBuf::from(path)
}

/// The address the other proxies reach `admin` at.
pub fn reachable(admin: SocketAddr) -> SocketAddr {
    match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port())
        }
        _ => admin,
    }
}

/// Writes (or renews) this process's entry, drops stale ones, and returns the replicas
/// registered. Blocks: run it off the event loop.
pub fn heartbeat(store: &FileStore, me: &Me) -> Result<Vec<Registered>, StoreError> {
    let now = crate::member::wall_ms();
    let forget = FORGET_AFTER.as_millis() as u64;
    let host = host_name();
    let registry = edit(store, |registry| {
        registry
            .replicas
            .retain(|_, e| e.seen_ms.max(e.since_ms).saturating_add(forget) > now);
        if let Some(other) = registry.replicas.get(&me.admin)
            && other.instance != me.instance
            && other
                .seen_ms
                .saturating_add(2 * super::POLL_INTERVAL.as_millis() as u64)
                > now
            && (other.host != host || other.pid != std::process::id())
        {
            tracing::warn!(
                admin = %me.admin,
                other_host = %other.host,
                other_pid = other.pid,
                "another live proxy is registered at this proxy's admin address; give each proxy sharing the overrides file an --admin-listen address the others reach"
            );
        }
        registry.replicas.insert(
            me.admin,
            Entry {
                host: host.clone(),
                pid: std::process::id(),
                instance: me.instance.clone(),
                since_ms: me.since_ms,
                seen_ms: now,
            },
        );
    })?;
    Ok(listed(registry))
}

/// Removes this process's entry, if it is still its own. Blocks.
pub fn leave(store: &FileStore, me: &Me) -> Result<(), StoreError> {
    edit(store, |registry| {
        if registry
            .replicas
            .get(&me.admin)
            .is_some_and(|e| e.instance == me.instance)
        {
            registry.replicas.remove(&me.admin);
        }
    })
    .map(drop)
}

/// The registered replicas, in address order. Blocks.
pub fn read(store: &FileStore) -> Result<Vec<Registered>, StoreError> {
    Ok(listed(read_registry(&path_of(store))?))
}

fn listed(registry: Registry) -> Vec<Registered> {
    registry
        .replicas
        .into_iter()
        .map(|(admin, entry)| Registered {
            name: format!("{} pid {}", entry.host, entry.pid),
            admin,
        })
        .collect()
}

fn edit(store: &FileStore, change: impl FnOnce(&mut Registry)) -> Result<Registry, StoreError> {
    let path = path_of(store);
    let lock = store.lock()?;
    // An invalid registry is started again rather than kept: it holds nothing that the
    // proxies' next heartbeats do not write again. One that cannot be read is left alone.
    let mut registry = match read_registry(&path) {
        Ok(registry) => registry,
        Err(StoreError::Invalid { place, message }) => {
            tracing::warn!(
                "the replica registry {place} is invalid and is written again: {message}"
            );
            Registry::default()
        }
        Err(error) => return Err(error),
    };
    change(&mut registry);
    let text = serde_json::to_string_pretty(&registry).map_err(|e| StoreError::Write {
        place: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomically(&path, &text)?;
    drop(lock);
    Ok(registry)
}

fn read_registry(path: &Path) -> Result<Registry, StoreError> {
    match read_bounded(path, MAX_FILE)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
            place: path.display().to_string(),
            message: e.to_string(),
        }),
        None => Ok(Registry::default()),
    }
}

/// This host's name (the kernel's, as `hostname` prints it), for people to tell entries
/// apart; "localhost" when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().chars().take(64).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(port: u16, instance: &str) -> Me {
        Me::new(SocketAddr::from(([127, 0, 0, 1], port)), instance)
    }

    #[test]
    fn concurrent_registrations_are_all_kept_and_leaving_takes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        let starts: Vec<_> = (0..8u16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = FileStore::new(path);
                    heartbeat(&store, &me(9900 + i, &format!("i{i}"))).unwrap();
                })
            })
            .collect();
        for start in starts {
            start.join().unwrap();
        }
        let store = FileStore::new(path);
        assert_eq!(read(&store).unwrap().len(), 8);
        leave(&store, &me(9903, "i3")).unwrap();
        // A late leave of an earlier process at a restarted proxy's address changes nothing.
        heartbeat(&store, &me(9904, "new")).unwrap();
        leave(&store, &me(9904, "i4")).unwrap();
        let left: Vec<u16> = read(&store)
            .unwrap()
            .iter()
            .map(|r| r.admin.port())
            .collect();
        assert_eq!(left, [9900, 9901, 9902, 9904, 9905, 9906, 9907]);
    }

    #[test]
    fn a_stale_entry_is_dropped_by_the_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("overrides.json"));
        let old = crate::member::wall_ms() - FORGET_AFTER.as_millis() as u64 - 1000;
        std::fs::write(
            path_of(&store),
            format!(
                r#"{{"replicas": {{"127.0.0.9:9900": {{"host": "gone", "pid": 1, "since_ms": {old}, "seen_ms": {old}, "from_a_newer_version": 1}}}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(read(&store).unwrap().len(), 1, "unknown fields are read");
        let listed = heartbeat(&store, &me(9900, "a")).unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|r| r.admin.to_string())
                .collect::<Vec<_>>(),
            ["127.0.0.1:9900"]
        );
    }

    #[test]
    fn a_bad_registry_names_its_file_and_the_next_heartbeat_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("overrides.json"));
        std::fs::write(path_of(&store), "{\"replicas\": [}").unwrap();
        let error = read(&store).unwrap_err().to_string();
        assert!(error.contains("overrides.json.replicas"), "{error}");
        heartbeat(&store, &me(9900, "a")).unwrap();
        assert_eq!(read(&store).unwrap().len(), 1);
    }

    #[test]
    fn an_unspecified_admin_address_is_registered_as_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9900".parse().unwrap()),
            "127.0.0.1:9900".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:9900".parse().unwrap()),
            "[::1]:9900".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("127.0.0.7:9900".parse().unwrap()),
            "127.0.0.7:9900".parse::<SocketAddr>().unwrap()
        );
    }
}
