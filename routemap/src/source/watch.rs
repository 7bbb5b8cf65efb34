//! Following files on disk, whatever way they are replaced: the piece the map file source
//! and the TLS certificate follower share.
//!
//! Files get replaced in many ways, and a watch on the file itself misses most of them:
//! editors write a temporary file and rename it over the original, deploy tools delete and
//! re-create, and the kubelet updates a mounted ConfigMap or Secret by writing a new
//! timestamped directory and renaming a `..data` symlink, never touching the visible file
//! (an inotify watch on the file follows the symlink to the old copy, fires once when it is
//! deleted, and is silent forever after).
//!
//! So [`PathWatch`] watches each file's *directory*, treats every event that can concern
//! one of the files as a mere hint that something may have changed, waits until the events
//! stop (debounce), and leaves the reading to its caller, who re-reads the paths through
//! their symlinks. A timer wakes the caller as well, in case inotify is unavailable or its
//! queue overflowed.
//!
//! Nothing else in a directory can hold the caller back. Only events naming a watched file,
//! the file its symlink points to, the kubelet's `..data`, or the directory itself count
//! (and rescans and watcher errors): a log written next to the file every few milliseconds
//! is ignored. The debounce waits at most [`FileWatchOptions::max_wait`], and the periodic
//! re-read runs on its own clock, whatever events arrive.
//!
//! A read that overlaps a write could see a torn file. [`PathWatch::read_whole`] waits a
//! moment after each read and reads again if any event arrived meanwhile; two reads that
//! agree are taken as whole, so a file rewritten with the same content over and over is
//! still read.

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

/// The default quiet time after the last file event before a file is read.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// Timing of a watch. The defaults suit both hand edits and kubelet updates.
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
    /// Notified to read the files now (a reload asked for it), whatever the events say.
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

/// Without a working watch (a directory is missing, or inotify is out of watches) the
/// files are polled this often, so they are still followed within seconds.
pub const POLL_WITHOUT_WATCH: Duration = Duration::from_secs(2);

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

/// The names in one watched directory whose events can concern its files: their own, the
/// kubelet's `..data`, and the names their symlinks resolve to when those are in the
/// directory too (updated after every read).
struct Relevant {
    dir: PathBuf,
    files: Vec<PathBuf>,
    names: Mutex<Vec<OsString>>,
}

impl Relevant {
    fn new(dir: PathBuf, files: Vec<PathBuf>) -> Self {
        let relevant = Self {
            dir,
            files,
            names: Mutex::new(Vec::new()),
        };
        relevant.refresh();
        relevant
    }

    fn refresh(&self) {
        let mut names: Vec<OsString> = vec![OsString::from("..data")];
        let dir = std::fs::canonicalize(&self.dir).ok();
        for path in &self.files {
            names.extend(path.file_name().map(ToOwned::to_owned));
            if let (Ok(target), Some(dir)) = (std::fs::canonicalize(path), &dir)
                && target.parent() == Some(dir.as_path())
            {
                names.extend(target.file_name().map(ToOwned::to_owned));
            }
        }
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names;
    }

    /// Whether `event` may mean that one of the files changed.
    fn concerns(&self, event: &notify::Event) -> bool {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        event.paths.iter().any(|path| {
            path == &self.dir
                || path
                    .file_name()
                    .is_some_and(|name| names.iter().any(|n| n == name))
        })
    }
}

/// Watches the directories of a set of files and says when the files may have changed. See
/// the module documentation for how.
pub struct PathWatch {
    /// What is followed, for log lines: "route map", "certificate".
    what: &'static str,
    options: FileWatchOptions,
    hints: Arc<Hints>,
    dirs: Arc<Vec<Relevant>>,
    watcher: Option<RecommendedWatcher>,
    /// The last reason the watch could not be set up (reported once).
    failing: Option<String>,
    next_poll: Instant,
}

impl PathWatch {
    /// Starts watching the directories of `paths`. The first [`PathWatch::changed`]
    /// returns at once, so the caller reads the files a first time.
    pub fn new(what: &'static str, paths: &[PathBuf], options: FileWatchOptions) -> Self {
        let mut by_dir: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
        for path in paths {
            let dir = watch_dir(path);
            match by_dir.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, files)) => files.push(path.clone()),
                None => by_dir.push((dir, vec![path.clone()])),
            }
        }
        let dirs = by_dir
            .into_iter()
            .map(|(dir, files)| Relevant::new(dir, files))
            .collect();
        let mut watch = Self {
            what,
            options,
            hints: Arc::default(),
            dirs: Arc::new(dirs),
            watcher: None,
            failing: None,
            next_poll: Instant::now(),
        };
        watch.start();
        watch
    }

    /// Waits until the files may have changed (events then quiet, the periodic re-read, or
    /// a reload's request).
    pub async fn changed(&mut self) {
        let poll = if self.watcher.is_some() {
            self.options.poll_interval
        } else {
            self.options.poll_interval.min(POLL_WITHOUT_WATCH)
        };
        tokio::select! {
            () = self.hints.wake.notified() => self.debounce().await,
            () = tokio::time::sleep_until(self.next_poll) => self.next_poll = Instant::now() + poll,
            () = self.options.reread.notified() => {}
        }
    }

    /// Runs the blocking `read` until one read is not overlapped by a change (or two reads
    /// agree), and returns it. Then notes where the files' symlinks point now, and tries
    /// again to set up a watch that could not be.
    pub async fn read_whole<T, F>(&mut self, read: F) -> T
    where
        T: PartialEq + Send + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        let read = Arc::new(read);
        let mut previous: Option<T> = None;
        let whole = loop {
            let before = self.hints.seen();
            let once = read.clone();
            let Ok(value) = tokio::task::spawn_blocking(move || once()).await else {
                // The blocking pool is shutting down (the runtime is going away), or the
                // read panicked: try again later rather than spin.
                tokio::time::sleep(POLL_WITHOUT_WATCH).await;
                continue;
            };
            tokio::time::sleep(self.options.settle).await;
            let agrees = previous.as_ref() == Some(&value);
            if self.hints.seen() != before && !agrees {
                previous = Some(value);
                self.debounce().await;
                continue;
            }
            break value;
        };
        for dir in self.dirs.iter() {
            dir.refresh();
        }
        if self.watcher.is_none() {
            self.start();
        }
        whole
    }

    /// Waits until no hint arrived for the debounce time, or the longest wait is over.
    async fn debounce(&self) {
        let give_up = Instant::now() + self.options.max_wait;
        loop {
            let quiet = (Instant::now() + self.options.debounce).min(give_up);
            match tokio::time::timeout_at(quiet, self.hints.wake.notified()).await {
                Ok(()) if Instant::now() < give_up => {}
                _ => return,
            }
        }
    }

    fn start(&mut self) {
        let (sink, filter) = (self.hints.clone(), self.dirs.clone());
        let handler = move |event: notify::Result<notify::Event>| match event {
            // Opening or reading a file (our own reads included) cannot change it.
            Ok(event) if is_read_only(&event.kind) => {}
            Ok(event)
                if !event.need_rescan()
                    && !event.paths.is_empty()
                    && !filter.iter().any(|dir| dir.concerns(&event)) => {}
            // Everything else, errors and overflow included, may mean a change.
            _ => sink.hint(),
        };
        let dirs = self.dirs.clone();
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            for dir in dirs.iter() {
                watcher
                    .watch(&dir.dir, RecursiveMode::NonRecursive)
                    .map_err(|e| e.add_path(dir.dir.clone()))?;
            }
            Ok(watcher)
        });
        let shown = || {
            self.dirs
                .iter()
                .map(|d| d.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match started {
            Ok(watcher) => {
                if self.failing.take().is_some() {
                    tracing::info!(dir = %shown(), "watching the {} directory", self.what);
                }
                self.watcher = Some(watcher);
            }
            Err(error) => {
                let reason = error.to_string();
                if self.failing.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(dir = %shown(), error = %reason, "cannot watch the {} directory; polling every {POLL_WITHOUT_WATCH:?} instead", self.what);
                }
                self.failing = Some(reason);
            }
        }
    }
}

/// Reads a followed file: through its symlinks, without ever blocking on a FIFO or a
/// device, regular files only (anything else is an [`ErrorKind::InvalidInput`] error), and
/// at most `limit` + 1 bytes, so that the caller can report a file too large and a wrong
/// path to a huge file cannot exhaust memory.
pub fn read_regular_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device)",
        ));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The directory to watch: the file's parent, `.` for a bare file name.
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}
