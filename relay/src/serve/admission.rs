//! How many client connections a listener group holds at once, and the file descriptors
//! that makes possible.
//!
//! A connection beyond the limit is accepted and closed at once: left in the kernel's
//! backlog it would wait, unanswered, and fill the backlog for everyone. Each admitted
//! connection holds a [`Slot`] for as long as its socket is open, through a protocol
//! upgrade too (the slot lives in the socket wrapper the tunnel ends up holding).
//!
//! Every client connection may need a second descriptor for its member or app, so the
//! limit is kept at half of what the open-file limit leaves after a reserve for the rest of
//! the process (the admin listener, the map, health checks, DNS). Without that, a flood of
//! silent clients would use every descriptor and the admin listener (probes, metrics)
//! would go dark with the traffic.

use super::stats::ServeStats;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Descriptors kept for everything but traffic connections and their upstreams.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Connections the admin listener holds at once: probes, scrapers and operators need few;
/// the limit keeps a flood of the admin port from using the descriptors traffic needs.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Raises the soft limit on open files to the hard limit, as HAProxy and nginx do (the
/// default soft limit of 1,024 is far below what a load balancer needs). Returns the soft
/// limit in effect afterwards.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The traffic connection limit that fits `open_files`: `wanted` (the default when
/// `None`), or less when each connection and its upstream would not get a descriptor. A
/// limit the operator set and that cannot be kept is warned about; the default is just
/// fitted.
pub fn fit_to_descriptors(wanted: Option<usize>, open_files: u64) -> usize {
    let fits = open_files.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    let Some(wanted) = wanted else {
        return DEFAULT_MAX_CONNECTIONS.min(fits);
    };
    if wanted > fits {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = open_files,
            using = fits,
            "the open file limit is too low for --max-connections (each connection may need a second descriptor for its upstream); raise the limit (LimitNOFILE=, ulimit -n) or lower --max-connections"
        );
        fits
    } else {
        wanted
    }
}

/// `--max-connections` when not given (lowered to what the open file limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The connection limit of one listener group, shared by its workers.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    stats: Arc<ServeStats>,
}

/// One admitted connection; the count goes down when it is dropped.
#[derive(Debug)]
pub struct Slot {
    stats: Arc<ServeStats>,
}

impl Admission {
    pub fn new(max: usize, stats: Arc<ServeStats>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<ServeStats> {
        &self.stats
    }

    /// A slot, unless `max` connections are open already (which is counted).
    pub fn admit(&self) -> Option<Slot> {
        let admitted = self
            .stats
            .open
            .fetch_update(Relaxed, Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if admitted {
            self.stats.accepted();
            Some(Slot {
                stats: self.stats.clone(),
            })
        } else {
            self.stats.refused();
            None
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_counts_the_rest() {
        let admission = Admission::new(2, Arc::default());
        let a = admission.admit();
        let b = admission.admit();
        assert!(a.is_some() && b.is_some());
        assert!(admission.admit().is_none());
        assert_eq!(admission.stats().refused_total(), 1);
        drop(a);
        assert!(
            admission.admit().is_some(),
            "a closed connection frees its slot"
        );
        assert_eq!(admission.stats().open(), 1);
    }

    #[test]
    fn the_limit_fits_the_descriptors() {
        assert_eq!(fit_to_descriptors(None, 1_048_576), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(fit_to_descriptors(None, 1024), 384);
        assert_eq!(fit_to_descriptors(Some(50_000), 1_048_576), 50_000);
        assert_eq!(fit_to_descriptors(Some(10_000), 1024), 384);
        assert_eq!(fit_to_descriptors(Some(10_000), 100), 1);
    }
}
