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

use super::store::{Followed, StoreError, StoreStatus, parse_set, render_set};
use crate::balancer::Balancer;
use crate::overrides::{Edit, OverrideSet};
use routemap::source::{FileWatchOptions, PathWatch, read_regular_file};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest overrides file read: far more than any fleet's overrides need.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// How long a change waits for another process's change to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The store, and what its follower last saw of it (for the balancer-manager).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    followed: Followed,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self {
            path,
            lock_path: PathBuf::from(lock),
            followed: Followed::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> StoreStatus {
        self.followed.status(self.path.display().to_string())
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
        write_atomically(&self.path, &render_set(&next))?;
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
                place: self.place(),
                message: e.to_string(),
            })??;
        self.followed.applied(&written, balancer, &self.place());
        Ok(())
    }

    fn place(&self) -> String {
        self.path.display().to_string()
    }

    /// Takes the lock, waiting at most [`LOCK_WAIT`] for a change in another process. The
    /// replica registry beside the file (see [`crate::replicas::registry`]) takes it too.
    pub(crate) fn lock(&self) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|source| StoreError::Lock {
                place: self.lock_path.display().to_string(),
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
                        place: self.lock_path.display().to_string(),
                        waited_ms: LOCK_WAIT.as_millis() as u64,
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(StoreError::Lock {
                        place: self.lock_path.display().to_string(),
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
                Ok(set) => self.followed.applied(&set, &balancer, &self.place()),
                Err(message) => self.followed.failed(message),
            }
        }
    }
}

fn read_set(path: &Path) -> Result<OverrideSet, StoreError> {
    match read_bounded(path, MAX_FILE)? {
        Some(bytes) => parse_set(&bytes, &path.display().to_string()),
        None => Ok(OverrideSet::default()),
    }
}

/// The whole file at `path` if it holds at most `max` bytes; `None` when there is no file
/// (an empty store). Shared with the replica registry beside it.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let place = path.display().to_string();
    match read_regular_file(path, max) {
        Ok(bytes) if bytes.len() as u64 > max => Err(StoreError::Invalid {
            place,
            message: format!("larger than {max} bytes"),
        }),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Read {
            place,
            message: e.to_string(),
        }),
    }
}

/// Writes `text` to a temporary file in the same directory, flushes it to disk and renames
/// it over `path`, so a reader sees the old file or the new one, never half.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), StoreError> {
    let failed = |source: std::io::Error| StoreError::Write {
        place: path.display().to_string(),
        message: source.to_string(),
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = File::create(&temporary).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
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
