//! The live handle every consumer reads the current map through.
//!
//! The current snapshot sits in an `ArcSwapOption`: the request path loads it without a
//! lock, and a request that took a snapshot keeps it for its whole life even if a newer one
//! is published meanwhile. Publishers are rare (a map edit), so they serialise on a mutex
//! that also guards the status.

use crate::error::LoadError;
use crate::map::RouteMap;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use tokio::sync::watch;

/// Read side: cheap to clone, shared by everything that needs the map.
#[derive(Clone)]
pub struct Live {
    shared: Arc<Shared>,
}

/// Write side, owned by the source that produces maps.
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwapOption<Snapshot>,
    status: Mutex<MapStatus>,
    changes: watch::Sender<u64>,
}

/// What an operator wants to know about a live map: where it comes from, which version is
/// served, and what went wrong last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapStatus {
    /// Where maps come from, e.g. `/etc/routemap/routemap` or `configmap:ns/name#key`.
    pub source: String,
    /// Hash of the served map; `None` until the first map is loaded.
    pub hash: Option<String>,
    /// 0 until the first map is loaded, then +1 for each published change.
    pub generation: u64,
    pub entries: usize,
    #[serde(serialize_with = "rfc3339_opt")]
    pub loaded_at: Option<SystemTime>,
    /// The most recent failed load, cleared when a load succeeds.
    pub last_error: Option<LastError>,
    /// Failed load attempts since start.
    pub reload_errors: u64,
}

/// A failed load as kept in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub message: String,
    /// `ORIGIN:LINE: message` per parse error.
    pub details: Vec<String>,
}

impl Live {
    /// A handle with no map yet, and the publisher that will fill it.
    pub fn new(source: impl Into<String>) -> (Live, Publisher) {
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            current: ArcSwapOption::empty(),
            status: Mutex::new(MapStatus {
                source: source.into(),
                hash: None,
                generation: 0,
                entries: 0,
                loaded_at: None,
                last_error: None,
                reload_errors: 0,
            }),
            changes,
        });
        (
            Live {
                shared: shared.clone(),
            },
            Publisher { shared },
        )
    }

    /// The current snapshot, or `None` before the first valid map. Lock-free; hold the
    /// returned `Arc` for as long as the work that uses it.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.shared.current.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.current.load().is_some()
    }

    /// Wakes whenever a new snapshot is published; the value is its generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Waits until a map has been loaded.
    pub async fn ready(&self) {
        let mut changes = self.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = changes.wait_for(|generation| *generation > 0).await;
    }

    pub fn status(&self) -> MapStatus {
        self.shared.lock_status().clone()
    }
}

impl Shared {
    fn lock_status(&self) -> MutexGuard<'_, MapStatus> {
        // The status stays consistent even if a holder panicked: every update is a plain
        // field assignment.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Publisher {
    /// Publishes `map` as a new snapshot unless it has the same content as the current one.
    /// Returns the snapshot when one was published. Clears the last error either way: the
    /// source is healthy again.
    pub fn publish(&self, map: RouteMap) -> Option<Arc<Snapshot>> {
        let mut status = self.shared.lock_status();
        if let Some(error) = status.last_error.take() {
            tracing::info!(source = %status.source, previous_error = %error.message, "route map source recovered");
        }
        if status.hash.as_deref() == Some(map.hash()) {
            return None;
        }
        let now = SystemTime::now();
        let generation = status.generation + 1;
        tracing::info!(
            source = %status.source,
            entries = map.len(),
            hash = map.short_hash(),
            generation,
            "route map loaded"
        );
        status.hash = Some(map.hash().to_owned());
        status.generation = generation;
        status.entries = map.len();
        status.loaded_at = Some(now);
        let snapshot = Arc::new(Snapshot::new(map, generation, now));
        self.shared.current.store(Some(snapshot.clone()));
        drop(status);
        self.shared.changes.send_replace(generation);
        Some(snapshot)
    }

    /// Records a failed load. The current snapshot keeps serving. The error is logged once
    /// per distinct error, not at every retry.
    pub fn fail(&self, error: &LoadError) {
        let mut status = self.shared.lock_status();
        status.reload_errors += 1;
        let message = error.to_string();
        let details = error.details();
        let repeated = status
            .last_error
            .as_ref()
            .is_some_and(|last| last.message == message && last.details == details);
        if !repeated {
            let serving = status
                .hash
                .as_deref()
                .map_or("nothing yet", crate::map::short);
            // Parse errors are listed one per line, `FILE:LINE: message`, like a compiler's.
            let listed = matches!(error, LoadError::Invalid { .. });
            tracing::error!(
                source = %status.source,
                serving,
                "route map not loaded, keeping the last good one: {message}{}{}",
                if listed { "\n" } else { "" },
                if listed { details.join("\n") } else { String::new() },
            );
        }
        status.last_error = Some(LastError {
            at: SystemTime::now(),
            message,
            details,
        });
    }
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn rfc3339_opt<S: serde::Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> RouteMap {
        RouteMap::parse(text.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn publishes_only_changed_content_and_counts_generations() {
        let (live, publisher) = Live::new("test");
        assert!(live.load().is_none());
        let mut changes = live.subscribe();
        assert!(publisher.publish(map("a www1")).is_some());
        assert_eq!(live.load().unwrap().generation(), 1);
        assert_eq!(*changes.borrow_and_update(), 1);
        assert!(publisher.publish(map("# same\na  www1")).is_none());
        assert!(
            !changes.has_changed().unwrap(),
            "no notification without a change"
        );
        let second = publisher.publish(map("a www2")).unwrap();
        assert_eq!(second.generation(), 2);
        assert_eq!(*changes.borrow_and_update(), 2);
        let status = live.status();
        assert_eq!(status.generation, 2);
        assert_eq!(status.hash.as_deref(), Some(second.hash()));
    }

    #[tokio::test]
    async fn a_failure_keeps_the_last_good_map_and_is_reported() {
        let (live, publisher) = Live::new("test");
        publisher.publish(map("a www1"));
        let held = live.load().unwrap();
        let error = LoadError::Invalid {
            origin: "m".into(),
            errors: RouteMap::parse(b"a www.1").unwrap_err(),
        };
        publisher.fail(&error);
        publisher.fail(&error);
        let status = live.status();
        assert_eq!(status.reload_errors, 2);
        let last = status.last_error.unwrap();
        assert_eq!(last.details.len(), 1);
        assert!(last.details[0].starts_with("m:1: route \"www.1\""));
        assert!(Arc::ptr_eq(&held, &live.load().unwrap()));
        publisher.publish(map("a www1"));
        assert!(live.status().last_error.is_none());
        let json = serde_json::to_value(live.status()).unwrap();
        assert_eq!(json["generation"], 1);
        let loaded_at = json["loaded_at"].as_str().unwrap();
        assert!(
            loaded_at.ends_with('Z') && loaded_at.contains('T'),
            "{loaded_at}"
        );
    }

    /// Captures what is logged on this thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_distinct_error_is_logged_once() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (_live, publisher) = Live::new("m");
        let missing = LoadError::NotFound { origin: "m".into() };
        let empty = LoadError::Empty { origin: "m".into() };
        for _ in 0..5 {
            publisher.fail(&missing);
        }
        publisher.fail(&empty);
        publisher.fail(&empty);
        publisher.fail(&missing);
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("m: not found").count(), 2, "{log}");
        assert_eq!(log.lines().count(), 3, "{log}");
        assert_eq!(log.matches("empty (0 bytes)").count(), 1, "{log}");
    }
}
