//! `PATH.replicas`: the proxies sharing the overrides file `PATH`, by admin address.
//!
//! Processes on one host (or on hosts sharing a volume) have no Service to list them, so
//! each one writes its own entry when it starts and removes it when it stops, with the
//! same lock and atomic rename as the overrides themselves: concurrent starts lose no entry.
//! The file is JSON:
//!
//! ```json
//! {"replicas": {"127.0.0.1:9900": {"host": "web1", "pid": 4242, "since_ms": 1764892800000}}}
//! ```
//!
//! An admin listener on an unspecified address (`0.0.0.0:9900`) is registered as the
//! loopback address on its port, which is right for proxies on one host; on a shared
//! volume across hosts, give each proxy's `--admin-listen` an address the others reach.

use crate::overrides::file_store::{FileStore, write_atomically};
use crate::overrides::store::StoreError;
use routemap::source::read_regular_file;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The largest registry read: room for thousands of replicas.
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registry {
    replicas: BTreeMap<SocketAddr, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    host: String,
    pid: u32,
    since_ms: u64,
}

/// A registered replica: its name and where its admin listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub admin: SocketAddr,
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

/// Adds (or renews) this process's entry. Blocks: run it off the event loop.
pub fn register(store: &FileStore, admin: SocketAddr) -> Result<(), StoreError> {
    let entry = Entry {
        host: host_name(),
        pid: std::process::id(),
        since_ms: crate::member::wall_ms(),
    };
    edit(store, |registry| {
        registry.replicas.insert(admin, entry);
    })
}

/// Removes the entry of `admin`, when there is one. Blocks.
pub fn remove(store: &FileStore, admin: SocketAddr) -> Result<(), StoreError> {
    edit(store, |registry| {
        registry.replicas.remove(&admin);
    })
}

/// The registered replicas, in address order. Blocks.
pub fn read(store: &FileStore) -> Result<Vec<Registered>, StoreError> {
    Ok(read_registry(&path_of(store))?
        .replicas
        .into_iter()
        .map(|(admin, entry)| Registered {
            name: format!("{} pid {}", entry.host, entry.pid),
            admin,
        })
        .collect())
}

fn edit(store: &FileStore, change: impl FnOnce(&mut Registry)) -> Result<(), StoreError> {
    let path = path_of(store);
    let lock = store.lock()?;
    // An unreadable registry is started again rather than kept: it holds nothing that is
    // not written again by the next start of each proxy.
    let mut registry = read_registry(&path).unwrap_or_default();
    change(&mut registry);
    let text = serde_json::to_string_pretty(&registry).map_err(|e| StoreError::Write {
        place: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomically(&path, &text)?;
    drop(lock);
    Ok(())
}

fn read_registry(path: &Path) -> Result<Registry, StoreError> {
    let place = path.display().to_string();
    match read_regular_file(path, MAX_FILE) {
        Ok(bytes) if bytes.len() as u64 > MAX_FILE => Err(StoreError::Invalid {
            place,
            message: format!("larger than {MAX_FILE} bytes"),
        }),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
            place,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Registry::default()),
        Err(e) => Err(StoreError::Read {
            place,
            message: e.to_string(),
        }),
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

    #[test]
    fn concurrent_registrations_are_all_kept_and_removal_takes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        let starts: Vec<_> = (0..8u16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = FileStore::new(path);
                    register(&store, SocketAddr::from(([127, 0, 0, 1], 9900 + i))).unwrap();
                })
            })
            .collect();
        for start in starts {
            start.join().unwrap();
        }
        let store = FileStore::new(path);
        assert_eq!(read(&store).unwrap().len(), 8);
        remove(&store, SocketAddr::from(([127, 0, 0, 1], 9903))).unwrap();
        let left: Vec<u16> = read(&store)
            .unwrap()
            .iter()
            .map(|r| r.admin.port())
            .collect();
        assert_eq!(left, [9900, 9901, 9902, 9904, 9905, 9906, 9907]);
    }

    #[test]
    fn a_bad_registry_names_its_file_and_the_next_start_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("overrides.json"));
        std::fs::write(path_of(&store), "{\"replicas\": [}").unwrap();
        let error = read(&store).unwrap_err().to_string();
        assert!(error.contains("overrides.json.replicas"), "{error}");
        register(&store, SocketAddr::from(([127, 0, 0, 2], 9900))).unwrap();
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
