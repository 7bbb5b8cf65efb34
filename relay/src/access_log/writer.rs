//! Where access log lines go: buffered where they are made, written by a thread of their
//! own, so a request never waits on the disk.
//!
//! A worker formats its line into one of a few buffers (the first it can lock without
//! waiting; in practice its own, since the writer holds a buffer only to swap it for an
//! empty one). The writer thread swaps every buffer out every [`FLUSH_EVERY`], or sooner
//! when one passes 64 KiB, and writes them. A buffer is bounded ([`BUFFER_LIMIT`]):
//! when the disk cannot keep up, lines are dropped and counted, never queued without end
//! and never waited for.
//!
//! A file is reopened when it was renamed or removed (logrotate's default `create` mode),
//! checked every second, and at once on [`reopen_all`] (SIGUSR1), which is
//! process-wide as the signal is.

use super::format::{self, Format};
use super::record::Record;
use crate::metrics::PromText;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How often buffered lines are written at the latest.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full wakes the writer.
const FLUSH_AT: usize = 64 * 1024;
/// A buffer this full takes no more lines until the writer has emptied it.
pub const BUFFER_LIMIT: usize = 1024 * 1024;
/// How often a log file's name is checked for a rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(1);
const BUFFERS: usize = 16;

/// Bumped by [`reopen_all`]; each writer reopens its file when it sees a new value.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every access log of the process to reopen its file (SIGUSR1, after logrotate
/// renamed it).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Relaxed);
}

/// Where the lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// `-` is standard output; anything else a file, appended to.
    pub fn parse(text: &str) -> Destination {
        if text == "-" {
            Destination::Stdout
        } else {
            Destination::File(PathBuf::from(text))
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stdout => f.write_str("standard output"),
            Destination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    path: String,
    source: io::Error,
}

struct Shared {
    format: Format,
    buffers: Vec<Mutex<Vec<u8>>>,
    writer: OnceLock<Thread>,
    stop: AtomicBool,
    lines: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    reopens: AtomicU64,
}

/// An open access log. Cloned into every worker's handler; [`AccessLog::close`] writes
/// what is buffered and stops the writer.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.shared.format)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `destination` (a file is created if missing, and appended to) and starts its
    /// writer thread. A file that cannot be opened is an error at once, so a mistyped path
    /// stops the start rather than losing every line.
    pub fn open(destination: Destination, format: Format) -> Result<AccessLog, OpenError> {
        let sink = Sink::open(destination)?;
        let shared = Arc::new(Shared {
            format,
            buffers: (0..BUFFERS)
                .map(|_| Mutex::new(Vec::with_capacity(FLUSH_AT)))
                .collect(),
            writer: OnceLock::new(),
            stop: AtomicBool::new(false),
            lines: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        // Taken here, not when the thread gets going: a reopen asked for in between would
        // otherwise be missed.
        let reopen_seen = REOPEN.load(Relaxed);
        let thread = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_loop(&for_thread, sink, reopen_seen))
            .map_err(|source| OpenError {
                path: "(writer thread)".to_owned(),
                source,
            })?;
        let _ = shared.writer.set(thread.thread().clone());
        Ok(AccessLog {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Adds one line; never waits. Dropped (and counted) when every buffer is busy or full.
    pub fn submit(&self, record: &Record) {
        let shared = &*self.shared;
        let start = thread_slot() % shared.buffers.len();
        for i in 0..shared.buffers.len() {
            let slot = &shared.buffers[(start + i) % shared.buffers.len()];
            let mut buffer = match slot.try_lock() {
                Ok(buffer) => buffer,
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            };
            if buffer.len() >= BUFFER_LIMIT {
                break;
            }
            format::write(shared.format, record, &mut buffer);
            shared.lines.fetch_add(1, Relaxed);
            if buffer.len() >= FLUSH_AT
                && let Some(writer) = shared.writer.get()
            {
                writer.unpark();
            }
            return;
        }
        shared.dropped.fetch_add(1, Relaxed);
    }

    /// Writes what is buffered and stops the writer thread.
    pub fn close(&self) {
        self.shared.stop.store(true, Relaxed);
        let handle = self
            .thread
            .lock()
            .map_or_else(|poisoned| poisoned.into_inner().take(), |mut t| t.take());
        if let Some(handle) = handle {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }

    /// `stickyroute_access_log_*`.
    pub fn render(&self, out: &mut PromText) {
        let s = &*self.shared;
        for (name, help, value) in [
            (
                "stickyroute_access_log_lines_total",
                "Access log lines made.",
                &s.lines,
            ),
            (
                "stickyroute_access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up.",
                &s.dropped,
            ),
            (
                "stickyroute_access_log_write_errors_total",
                "Failed writes of access log lines (the lines are lost).",
                &s.write_errors,
            ),
            (
                "stickyroute_access_log_reopens_total",
                "Times the access log file was reopened (rotation, SIGUSR1).",
                &s.reopens,
            ),
        ] {
            out.single(name, "counter", help, value.load(Relaxed));
        }
    }
}

/// A small number per thread, to spread workers over the buffers.
fn thread_slot() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Relaxed) as usize;
    }
    SLOT.with(|slot| *slot)
}

/// The open destination.
enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        /// Device and inode of the file opened, to notice a rename.
        identity: (u64, u64),
    },
}

impl Sink {
    fn open(destination: Destination) -> Result<Sink, OpenError> {
        match destination {
            Destination::Stdout => Ok(Sink::Stdout),
            Destination::File(path) => {
                let (file, identity) = open_file(&path).map_err(|source| OpenError {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(Sink::File {
                    path,
                    file,
                    identity,
                })
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    /// Whether the name now leads elsewhere (renamed, removed, replaced).
    fn rotated(&self) -> bool {
        match self {
            Sink::Stdout => false,
            Sink::File { path, identity, .. } => {
                std::fs::metadata(path).map_or(true, |meta| (meta.dev(), meta.ino()) != *identity)
            }
        }
    }

    /// Opens the name again; on failure the old file stays in use.
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File {
            path,
            file,
            identity,
        } = self
        {
            let (new, new_identity) = open_file(path)?;
            *file = new;
            *identity = new_identity;
        }
        Ok(())
    }
}

fn open_file(path: &PathBuf) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

fn write_loop(shared: &Shared, mut sink: Sink, mut reopen_seen: u64) {
    let mut batch: Vec<u8> = Vec::with_capacity(FLUSH_AT);
    let mut checked = Instant::now();
    let mut failing = false;
    loop {
        let stopping = shared.stop.load(Relaxed);
        let reopen = REOPEN.load(Relaxed);
        let due = checked.elapsed() >= ROTATION_CHECK;
        if reopen != reopen_seen || (due && sink.rotated()) {
            reopen_seen = reopen;
            match sink.reopen() {
                Ok(()) => {
                    shared.reopens.fetch_add(1, Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reopen the access log; writing to the file already open");
                }
            }
        }
        if due {
            checked = Instant::now();
        }
        for slot in &shared.buffers {
            let mut buffer = match slot.lock() {
                Ok(buffer) => buffer,
                Err(poisoned) => poisoned.into_inner(),
            };
            if buffer.is_empty() {
                continue;
            }
            // Swapped rather than copied: the worker gets an empty buffer with capacity.
            std::mem::swap(&mut *buffer, &mut batch);
            drop(buffer);
            match sink.write_all(&batch) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the access log is written again");
                }
                Ok(()) => {}
                Err(error) => {
                    shared.write_errors.fetch_add(1, Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, "cannot write the access log; its lines are lost until it can");
                    }
                }
            }
            batch.clear();
            if batch.capacity() > BUFFER_LIMIT {
                batch.shrink_to(FLUSH_AT);
            }
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::record::Fields;
    use http::{Method, Version};
    use std::time::SystemTime;

    fn record(target: &str) -> Record {
        Record {
            time: SystemTime::now(),
            client: "127.0.0.1".parse().unwrap(),
            method: Method::GET,
            uri: target.parse().unwrap(),
            version: Version::HTTP_11,
            status: 200,
            response_bytes: 5,
            duration: Duration::from_millis(1),
            tls: None,
            user_agent: None,
            referer: None,
            fields: Fields::default(),
        }
    }

    fn read_until(path: &std::path::Path, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn lines_reach_the_file_soon_and_a_renamed_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Format::Combined).unwrap();
        log.submit(&record("/one"));
        assert!(read_until(&path, 1).contains("\"GET /one HTTP/1.1\" 200 5"));
        // logrotate's default: rename, then the program must write to a new file.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        std::thread::sleep(ROTATION_CHECK + FLUSH_EVERY * 3);
        log.submit(&record("/two"));
        assert!(
            read_until(&path, 1).contains("/two"),
            "a new file under the old name"
        );
        assert!(!std::fs::read_to_string(&rotated).unwrap().contains("/two"));
        log.close();
        assert!(log.shared.reopens.load(Relaxed) >= 1);
    }

    #[test]
    fn reopen_all_switches_files_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Format::Json).unwrap();
        // Renamed and recreated by someone else: same name, another file, before the
        // rotation check would notice.
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::fs::write(&path, b"").unwrap();
        reopen_all();
        std::thread::sleep(FLUSH_EVERY * 3);
        log.submit(&record("/after"));
        assert!(read_until(&path, 1).contains("/after"));
        log.close();
    }

    #[test]
    fn close_writes_what_is_buffered_and_a_full_buffer_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Format::Combined).unwrap();
        // Hold every buffer full, as a writer that cannot keep up would leave them.
        let held: Vec<_> = log
            .shared
            .buffers
            .iter()
            .map(|slot| slot.lock().unwrap())
            .collect();
        log.submit(&record("/lost"));
        assert_eq!(
            log.shared.dropped.load(Relaxed),
            1,
            "never waits for a buffer"
        );
        drop(held);
        for i in 0..100 {
            log.submit(&record(&format!("/{i}")));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert!(!text.contains("/lost"));
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_naming_it() {
        let error = AccessLog::open(
            Destination::File("/nonexistent-dir/access.log".into()),
            Format::Combined,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-dir/access.log"),
            "{error}"
        );
    }
}
