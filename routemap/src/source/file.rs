//! A map file on disk, followed live.
//!
//! Files get replaced in many ways, and a watch on the file itself misses most of them:
//! editors write a temporary file and rename it over the original, deploy tools delete and
//! re-create, and the kubelet updates a mounted ConfigMap by writing a new timestamped
//! directory and renaming a `..data` symlink, never touching the visible file (an inotify
//! watch on the file follows the symlink to the old copy, fires once when it is deleted,
//! and is silent forever after).
//!
//! So this source watches the file's *directory*, treats every event that can concern the
//! map as a mere hint that something may have changed, waits until the events stop
//! (debounce), re-reads the path through its symlinks, and publishes only a valid map whose
//! content hash changed. A timer re-reads the file as well, in case inotify is unavailable
//! or its queue overflowed.
//!
//! Nothing else in the directory can hold the map back. Only events naming the map, the
//! file its symlink points to, the kubelet's `..data`, or the directory itself count (and
//! rescans and watcher errors): a log written next to the map every few milliseconds is
//! ignored. The debounce waits at most [`FileWatchOptions::max_wait`], and the periodic
//! re-read runs on its own clock, whatever events arrive. Opening the file never blocks:
//! only a regular file is read (a FIFO or a device at the map's path is an error), and at
//! most [`MAX_MAP_BYTES`] of it.
//!
//! A read that overlaps a write could see a torn file. After each read the source waits a
//! moment and reads again if any event arrived meanwhile; two reads that agree are taken
//! as whole, so a file rewritten with the same content over and over is still read.

use super::{Source, SourceFuture};
use crate::error::LoadError;
use crate::live::Publisher;
use crate::map::RouteMap;
use crate::parse::MAX_MAP_BYTES;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The default quiet time after the last file event before the map is read.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// Timing of the file source. The defaults suit both hand edits and kubelet updates.
#[derive(Debug, Clone)]
pub struct FileWatchOptions {
    /// Quiet time after the last event before the file is read: long enough for an editor
    /// or the kubelet to finish its sequence of steps.
    pub debounce: Duration,
    /// The longest the debounce waits, however often events keep coming.
    pub max_wait: Duration,
    /// How long after a read no event may arrive for the read to count as whole.
    pub settle: Duration,
    /// The safety-net re-read interval.
    pub poll_interval: Duration,
    /// Notified to read the file now (a reload asked for it), whatever the events say.
    pub reread: Arc<Notify>,
}

impl Default for FileWatchOptions {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            max_wait: Duration::from_secs(1),
            settle: Duration::from_millis(30),
            poll_interval: Duration::from_secs(30),
            reread: Arc::default(),
        }
    }
}

/// Without a working watch (the directory is missing, or inotify is out of watches) the
/// file is polled this often, so the map still follows within seconds.
const POLL_WITHOUT_WATCH: Duration = Duration::from_secs(2);

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

/// Reads a map file as every consumer must (the sources, `routemap check`, a proxy's
/// `--check-config`): through its symlinks, without ever blocking on a FIFO or a device,
/// regular files only, and at most one byte more than a map may have (the parser then
/// reports the size), so a wrong path to a huge file cannot exhaust memory.
pub fn read_map_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let origin = || path.display().to_string();
    let failed = |error: std::io::Error| match error.kind() {
        ErrorKind::NotFound => LoadError::NotFound { origin: origin() },
        _ => LoadError::Read {
            origin: origin(),
            reason: error.to_string(),
        },
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(LoadError::Read {
            origin: origin(),
            reason: "not a regular file (a directory, FIFO, socket or device); a route map is a plain file".to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_MAP_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    Ok(bytes)
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

/// The names in the watched directory whose events can concern the map: its own, the
/// kubelet's `..data`, and the name its symlink resolves to when that is in the directory
/// too (updated after every read).
struct Relevant {
    dir: PathBuf,
    names: Mutex<Vec<OsString>>,
}

impl Relevant {
    fn new(path: &Path, dir: &Path) -> Self {
        let relevant = Self {
            dir: dir.to_owned(),
            names: Mutex::new(Vec::new()),
        };
        relevant.refresh(path);
        relevant
    }

    fn refresh(&self, path: &Path) {
        let mut names: Vec<OsString> = vec![OsString::from("..data")];
        names.extend(path.file_name().map(ToOwned::to_owned));
        if let (Ok(target), Ok(dir)) = (
            std::fs::canonicalize(path),
            std::fs::canonicalize(&self.dir),
        ) && target.parent() == Some(dir.as_path())
        {
            names.extend(target.file_name().map(ToOwned::to_owned));
        }
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names;
    }

    /// Whether `event` may mean that the map changed.
    fn concerns(&self, event: &notify::Event) -> bool {
        if event.need_rescan() || event.paths.is_empty() {
            return true;
        }
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        event.paths.iter().any(|path| {
            path == &self.dir
                || path
                    .file_name()
                    .is_some_and(|name| names.iter().any(|n| n == name))
        })
    }
}

async fn follow(path: PathBuf, options: FileWatchOptions, publisher: Publisher) {
    let origin = path.display().to_string();
    let dir = watch_dir(&path);
    let hints = Arc::new(Hints::default());
    let relevant = Arc::new(Relevant::new(&path, &dir));
    let mut watch = Watch::default();
    watch.start(&dir, &hints, &relevant);
    let mut next_poll = Instant::now();
    loop {
        let poll = if watch.watcher.is_some() {
            options.poll_interval
        } else {
            options.poll_interval.min(POLL_WITHOUT_WATCH)
        };
        tokio::select! {
            () = hints.wake.notified() => debounce(&hints, &options).await,
            () = tokio::time::sleep_until(next_poll) => next_poll = Instant::now() + poll,
            () = options.reread.notified() => {}
        }
        load_whole(&path, &origin, &options, &hints, &publisher).await;
        relevant.refresh(&path);
        if watch.watcher.is_none() {
            watch.start(&dir, &hints, &relevant);
        }
    }
}

/// Waits until no hint arrived for the debounce time, or the longest wait is over.
async fn debounce(hints: &Hints, options: &FileWatchOptions) {
    let give_up = Instant::now() + options.max_wait;
    loop {
        let quiet = (Instant::now() + options.debounce).min(give_up);
        match tokio::time::timeout_at(quiet, hints.wake.notified()).await {
            Ok(()) if Instant::now() < give_up => {}
            _ => return,
        }
    }
}

/// Reads the file until a read is not overlapped by a change (or two reads agree), then
/// publishes or reports.
async fn load_whole(
    path: &Path,
    origin: &str,
    options: &FileWatchOptions,
    hints: &Hints,
    publisher: &Publisher,
) {
    let mut previous: Option<Result<Vec<u8>, LoadError>> = None;
    loop {
        let before = hints.seen();
        let read = read_blocking(path.to_owned()).await;
        tokio::time::sleep(options.settle).await;
        let agrees = previous.as_ref() == Some(&read);
        if hints.seen() != before && !agrees {
            previous = Some(read);
            debounce(hints, options).await;
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

async fn read_blocking(path: PathBuf) -> Result<Vec<u8>, LoadError> {
    let origin = path.display().to_string();
    tokio::task::spawn_blocking(move || read_map_file(&path))
        .await
        .unwrap_or_else(|join| {
            Err(LoadError::Read {
                origin,
                reason: join.to_string(),
            })
        })
}

/// The directory to watch: the file's parent, `.` for a bare file name.
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The directory watch, and the last reason it could not be set up (reported once).
#[derive(Default)]
struct Watch {
    watcher: Option<RecommendedWatcher>,
    failing: Option<String>,
}

impl Watch {
    fn start(&mut self, dir: &Path, hints: &Arc<Hints>, relevant: &Arc<Relevant>) {
        let (sink, filter) = (hints.clone(), relevant.clone());
        let handler = move |event: notify::Result<notify::Event>| match event {
            // Opening or reading a file (our own reads included) cannot change it.
            Ok(event) if is_read_only(&event.kind) => {}
            Ok(event) if !filter.concerns(&event) => {}
            // Everything else, errors and overflow included, may mean a change.
            _ => sink.hint(),
        };
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match started {
            Ok(watcher) => {
                if self.failing.take().is_some() {
                    tracing::info!(dir = %dir.display(), "watching the route map directory");
                }
                self.watcher = Some(watcher);
            }
            Err(error) => {
                let reason = error.to_string();
                if self.failing.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(dir = %dir.display(), error = %reason, "cannot watch the route map directory; polling every {POLL_WITHOUT_WATCH:?} instead");
                }
                self.failing = Some(reason);
            }
        }
    }
}

fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}
