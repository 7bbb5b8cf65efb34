//! A map file on disk, followed live.
//!
//! Files get replaced in many ways, and a watch on the file itself misses most of them:
//! editors write a temporary file and rename it over the original, deploy tools delete and
//! re-create, and the kubelet updates a mounted ConfigMap by writing a new timestamped
//! directory and renaming a `..data` symlink, never touching the visible file (an inotify
//! watch on the file follows the symlink to the old copy, fires once when it is deleted,
//! and is silent forever after).
//!
//! So this source watches the file's *directory*, treats every event as a mere hint that
//! something may have changed, waits until the events stop (debounce), re-reads the path
//! through its symlinks, and publishes only a valid map whose content hash changed. A timer
//! re-reads the file as well, in case inotify is unavailable or its queue overflowed.
//!
//! A read that overlaps a write could see a torn file. After each read the source waits a
//! moment and discards the read if any event arrived meanwhile; the write that caused it
//! triggers another round.

use super::{Source, SourceFuture};
use crate::error::LoadError;
use crate::live::Publisher;
use crate::map::RouteMap;
use crate::parse::MAX_MAP_BYTES;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Timing of the file source. The defaults suit both hand edits and kubelet updates.
#[derive(Debug, Clone)]
pub struct FileWatchOptions {
    /// Quiet time after the last event before the file is read: long enough for an editor
    /// or the kubelet to finish its sequence of steps.
    pub debounce: Duration,
    /// How long after a read no event may arrive for the read to count as whole.
    pub settle: Duration,
    /// The safety-net re-read interval.
    pub poll_interval: Duration,
}

impl Default for FileWatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(150),
            settle: Duration::from_millis(30),
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// Follows one map file. See the module documentation for how.
pub struct FileSource {
    path: PathBuf,
    options: FileWatchOptions,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            options: FileWatchOptions::default(),
        }
    }

    pub fn with_options(mut self, options: FileWatchOptions) -> Self {
        self.options = options;
        self
    }
}

impl Source for FileSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn run(self: Box<Self>, publisher: Publisher) -> SourceFuture {
        Box::pin(follow(self.path, self.options, publisher))
    }
}

/// Hints from the watcher: a counter (to tell whether anything happened during a read) and
/// a wake-up that coalesces bursts.
#[derive(Default)]
struct Hints {
    count: AtomicU64,
    wake: Notify,
}

impl Hints {
    fn hint(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn seen(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

async fn follow(path: PathBuf, options: FileWatchOptions, publisher: Publisher) {
    let origin = path.display().to_string();
    let dir = watch_dir(&path);
    let hints = Arc::new(Hints::default());
    let mut watcher = start_watcher(&dir, &hints);
    loop {
        load_whole(&path, &origin, &options, &hints, &publisher).await;
        if watcher.is_none() {
            watcher = start_watcher(&dir, &hints);
        }
        // Without a working watch (the directory is missing, or inotify is out of watches)
        // poll quickly so that the map still follows within seconds.
        let poll = if watcher.is_some() {
            options.poll_interval
        } else {
            options.poll_interval.min(Duration::from_secs(2))
        };
        tokio::select! {
            () = hints.wake.notified() => debounce(&hints, options.debounce).await,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Waits until no hint arrived for `quiet`.
async fn debounce(hints: &Hints, quiet: Duration) {
    while tokio::time::timeout(quiet, hints.wake.notified())
        .await
        .is_ok()
    {}
}

/// Reads the file until a read is not overlapped by a change, then publishes or reports.
async fn load_whole(
    path: &Path,
    origin: &str,
    options: &FileWatchOptions,
    hints: &Hints,
    publisher: &Publisher,
) {
    loop {
        let before = hints.seen();
        let read = read_capped(path.to_owned(), origin).await;
        tokio::time::sleep(options.settle).await;
        if hints.seen() != before {
            debounce(hints, options.debounce).await;
            continue;
        }
        match read.and_then(|bytes| RouteMap::load(origin, &bytes)) {
            Ok(map) => {
                publisher.publish(map);
            }
            Err(error) => publisher.fail(&error),
        }
        return;
    }
}

/// Reads at most one byte more than a map may have, so a wrong path to a huge file cannot
/// exhaust memory; the parser then reports the size.
async fn read_capped(path: PathBuf, origin: &str) -> Result<Vec<u8>, LoadError> {
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?
            .take(MAX_MAP_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await;
    let origin = origin.to_owned();
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.kind() == ErrorKind::NotFound => Err(LoadError::NotFound { origin }),
        Ok(Err(e)) => Err(LoadError::Read {
            origin,
            reason: e.to_string(),
        }),
        Err(join) => Err(LoadError::Read {
            origin,
            reason: join.to_string(),
        }),
    }
}

/// The directory to watch: the file's parent, `.` for a bare file name.
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn start_watcher(dir: &Path, hints: &Arc<Hints>) -> Option<RecommendedWatcher> {
    let sink = hints.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Opening or reading a file (our own reads included) cannot change it.
        Ok(event) if is_read_only(&event.kind) => {}
        // Everything else, errors and overflow included, may mean a change.
        _ => sink.hint(),
    };
    let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match started {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the route map directory; polling instead");
            None
        }
    }
}

fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}
