//! `--overrides-file PATH`: the override set in a JSON file that every proxy given the same
//! path follows (several proxies on one host, or on a shared volume).
//!
//! A change is a read-modify-write under an exclusive lock on `PATH.lock` (an advisory
//! `flock`, so concurrent changes from any process are serialized and none is lost), and
//! the new file is written beside the old one and renamed over it, so a reader sees the
//! old set or the new one, never half. Every proxy follows the file with the same watcher
//! as the route map file (directory events, a periodic re-read) and applies what it reads.
//! A file that cannot be read or is invalid is reported (with its path, and line and column
//! for JSON errors) and the last good set stays applied; a missing file is the empty set.

use crate::balancer::Balancer;
use crate::overrides::{Edit, OverrideSet};
use routemap::source::{FileWatchOptions, PathWatch, read_regular_file};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The largest overrides file read: far more than any fleet's overrides need.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// How long a change waits for another process's change to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} stayed locked by another change for {LOCK_WAIT:?}")]
    Busy { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The store, and what its follower last saw of it (for the balancer-manager).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    applied_version: AtomicU64,
    /// The last read's error and its wall-clock time; `None` once a read succeeds.
    last_error: Mutex<Option<(String, u64)>>,
}

/// What the balancer-manager shows of the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    pub path: String,
    /// The version of the set this proxy applies.
    pub applied_version: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self {
            path,
            lock_path: PathBuf::from(lock),
            applied_version: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> StoreStatus {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StoreStatus {
            path: self.path.display().to_string(),
            applied_version: self.applied_version.load(Relaxed),
            last_error_at_ms: error.as_ref().map(|e| e.1),
            last_error: error.map(|e| e.0),
        }
    }

    /// Reads the set as it is now (the empty set when there is no file yet).
    pub fn read(&self) -> Result<OverrideSet, StoreError> {
        read_set(&self.path)
    }

    /// Makes `edit` in the stored set and returns the set written. Blocks (the lock, the
    /// disk): run it off the event loop, see [`FileStore::change`].
    pub fn update(&self, edit: &Edit) -> Result<OverrideSet, StoreError> {
        let lock = self.lock()?;
        let next = read_set(&self.path)?.edited(edit);
        write_atomically(&self.path, &next)?;
        drop(lock);
        Ok(next)
    }

    /// [`FileStore::update`] on the blocking pool, and the result applied here at once
    /// (the other proxies apply it when their follower reads it).
    pub async fn change(
        self: &Arc<Self>,
        edit: Edit,
        balancer: &Balancer,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        let written = tokio::task::spawn_blocking(move || store.update(&edit))
            .await
            .map_err(|e| StoreError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        self.applied(&written, balancer);
        Ok(())
    }

    fn applied(&self, set: &OverrideSet, balancer: &Balancer) {
        self.applied_version.store(set.version, Relaxed);
        balancer.set_overrides(set.clone());
    }

    /// Takes the lock, waiting at most [`LOCK_WAIT`] for a change in another process.
    fn lock(&self) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|source| StoreError::Lock {
                path: self.lock_path.clone(),
                source,
            })?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::Busy {
                        path: self.lock_path.clone(),
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(StoreError::Lock {
                        path: self.lock_path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Follows the file for the life of the process: every set read is applied to
    /// `balancer`; a bad read is logged once per distinct error and keeps the last set.
    pub async fn follow(self: Arc<Self>, balancer: Arc<Balancer>, options: FileWatchOptions) {
        let mut watch = PathWatch::new("overrides file", std::slice::from_ref(&self.path), options);
        loop {
            watch.changed().await;
            let path = self.path.clone();
            let read = watch
                .read_whole(move || read_set(&path).map_err(|e| e.to_string()))
                .await;
            match read {
                Ok(set) => {
                    if self
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                        .is_some()
                    {
                        tracing::info!(path = %self.path.display(), version = set.version, "overrides file readable again");
                    }
                    if balancer.overrides().as_ref() != &set {
                        tracing::info!(path = %self.path.display(), version = set.version, overrides = set.overrides.len(), "overrides applied from the file");
                    }
                    self.applied(&set, &balancer);
                }
                Err(message) => {
                    let mut last = self
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if last.as_ref().map(|e| &e.0) != Some(&message) {
                        tracing::error!(
                            "overrides file not applied, the last good set stays: {message}"
                        );
                    }
                    *last = Some((message, crate::member::wall_ms()));
                }
            }
        }
    }
}

fn read_set(path: &Path) -> Result<OverrideSet, StoreError> {
    let bytes = match read_regular_file(path, MAX_FILE) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(OverrideSet::default()),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let invalid = |message: String| StoreError::Invalid {
        path: path.to_owned(),
        message,
    };
    if bytes.len() as u64 > MAX_FILE {
        return Err(invalid(format!("larger than {MAX_FILE} bytes")));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(OverrideSet::default());
    }
    let set: OverrideSet = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("line {} column {}: {e}", e.line(), e.column())))?;
    set.check().map_err(invalid)?;
    Ok(set)
}

/// Writes `set` to a temporary file in the same directory, flushes it to disk and renames
/// it over `path`.
fn write_atomically(path: &Path, set: &OverrideSet) -> Result<(), StoreError> {
    let failed = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(set).map_err(|e| failed(std::io::Error::other(e)))?;
    text.push(b'\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = File::create(&temporary).and_then(|mut file| {
        file.write_all(&text)?;
        file.sync_all()
    });
    if let Err(source) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(failed(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemap::Status;

    fn drain(route: &str, at_ms: u64) -> Edit {
        Edit {
            route: route.to_owned(),
            key: "10.0.0.1".to_owned(),
            status: Some(Status::Drain),
            loadfactor: None,
            reset: false,
            by: "127.0.0.1".to_owned(),
            at_ms,
        }
    }

    #[test]
    fn concurrent_changes_from_many_writers_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // A store of its own, as another process would have.
                    let store = FileStore::new(path);
                    for i in 0..10 {
                        store.update(&drain(&format!("w{w}-{i}"), i)).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let set = FileStore::new(path).read().unwrap();
        assert_eq!(set.overrides.len(), 80);
        assert_eq!(set.version, 80);
    }

    #[test]
    fn a_bad_file_names_where_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        let store = FileStore::new(path.clone());
        assert_eq!(store.read().unwrap(), OverrideSet::default());
        std::fs::write(&path, "{\"version\": 1,\n \"overrides\": [}\n").unwrap();
        let error = store.read().unwrap_err().to_string();
        assert!(error.contains("overrides.json: line 2 column"), "{error}");
        // A change refuses to build on a file it cannot read, rather than replace it.
        assert!(store.update(&drain("a", 1)).is_err());
        assert!(std::fs::read_to_string(&path).unwrap().contains("[}"));
    }

    #[test]
    fn an_unwritable_store_fails_the_change() {
        let store = FileStore::new(PathBuf::from("/nonexistent-dir/overrides.json"));
        assert!(matches!(
            store.update(&drain("a", 1)),
            Err(StoreError::Lock { .. })
        ));
    }
}
