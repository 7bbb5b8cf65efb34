//! Where a shared override set is kept — a file ([`FileStore`]) or a ConfigMap
//! ([`ConfigMapStore`](super::configmap_store::ConfigMapStore)) — and what both report.

use super::OverrideSet;
use super::file_store::FileStore;
use crate::balancer::Balancer;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// The ConfigMap key a set is kept under (`--overrides-configmap`).
pub const CONFIGMAP_KEY: &str = "overrides.json";

/// Why a change could not be stored, or a stored set not read. `place` names the file or
/// the ConfigMap.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{place}: cannot take the lock: {source}")]
    Lock {
        place: String,
        source: std::io::Error,
    },
    #[error("{place}: still locked by another change after {waited_ms} ms")]
    Busy { place: String, waited_ms: u64 },
    #[error("{place}: cannot read it: {message}")]
    Read { place: String, message: String },
    #[error("{place}: {message}")]
    Invalid { place: String, message: String },
    #[error("{place}: cannot write it: {message}")]
    Write { place: String, message: String },
    #[error("{place}: does not exist; create it (the Helm chart and the kustomize base do)")]
    Missing { place: String },
    #[error("{place}: changed by others {attempts} times in a row while this change was made")]
    Conflict { place: String, attempts: u32 },
}

/// A set as a store holds it: JSON text, empty meaning no overrides.
pub fn parse_set(bytes: &[u8], place: &str) -> Result<OverrideSet, StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        place: place.to_owned(),
        message,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(OverrideSet::default());
    }
    let set: OverrideSet = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("line {} column {}: {e}", e.line(), e.column())))?;
    set.check().map_err(invalid)?;
    Ok(set)
}

/// The set as stored: pretty JSON, one line per field, so that a diff of it reads well.
pub fn render_set(set: &OverrideSet) -> String {
    let mut text = serde_json::to_string_pretty(set).unwrap_or_default();
    text.push('\n');
    text
}

/// What the balancer-manager shows of the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    /// The file's path, or `NAMESPACE/NAME` of the ConfigMap.
    pub location: String,
    /// The version of the set this proxy applies.
    pub applied_version: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    /// Writes that found the store changed by another proxy and were made again.
    pub conflicts_retried: u64,
}

/// What a store's follower saw last, shared by both kinds.
#[derive(Debug, Default)]
pub struct Followed {
    applied_version: AtomicU64,
    conflicts: AtomicU64,
    /// The last read's error and its wall-clock time; `None` once a read succeeds.
    last_error: Mutex<Option<(String, u64)>>,
}

impl Followed {
    /// Applies `set` read from or written to `place`.
    pub fn applied(&self, set: &OverrideSet, balancer: &Balancer, place: &str) {
        if self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
        {
            tracing::info!(
                store = place,
                version = set.version,
                "overrides store readable again"
            );
        }
        if balancer.overrides().as_ref() != set {
            tracing::info!(
                store = place,
                version = set.version,
                overrides = set.overrides.len(),
                "overrides applied from the store"
            );
        }
        self.applied_version.store(set.version, Relaxed);
        balancer.set_overrides(set.clone());
    }

    /// Records a failed read (logged once per distinct error); the last set stays.
    pub fn failed(&self, message: String) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().map(|e| &e.0) != Some(&message) {
            tracing::error!("overrides not applied, the last good set stays: {message}");
        }
        *last = Some((message, crate::member::wall_ms()));
    }

    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Relaxed);
    }

    pub fn status(&self, location: String) -> StoreStatus {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StoreStatus {
            location,
            applied_version: self.applied_version.load(Relaxed),
            last_error_at_ms: error.as_ref().map(|e| e.1),
            last_error: error.map(|e| e.0),
            conflicts_retried: self.conflicts.load(Relaxed),
        }
    }
}

/// The store a proxy's overrides are kept in (`--overrides-file`, `--overrides-configmap`).
#[derive(Clone)]
pub enum Store {
    File(Arc<FileStore>),
    #[cfg(feature = "kubernetes")]
    ConfigMap(Arc<super::configmap_store::ConfigMapStore>),
}

impl Store {
    /// Writes the change to the store, then applies the set written here (the other
    /// proxies apply it when they read it). Nothing is applied when the write fails.
    pub async fn change(&self, edit: super::Edit, balancer: &Balancer) -> Result<(), StoreError> {
        match self {
            Store::File(store) => store.change(edit, balancer).await,
            #[cfg(feature = "kubernetes")]
            Store::ConfigMap(store) => store.change(&edit, balancer).await,
        }
    }

    /// `"file"` or `"configmap"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            #[cfg(feature = "kubernetes")]
            Store::ConfigMap(_) => "configmap",
        }
    }

    pub fn status(&self) -> StoreStatus {
        match self {
            Store::File(store) => store.status(),
            #[cfg(feature = "kubernetes")]
            Store::ConfigMap(store) => store.status(),
        }
    }
}
