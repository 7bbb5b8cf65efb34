//! Harness for stickyroute's end-to-end tests: real files, real servers, real binaries.
//!
//! - [`eventually`]: poll an assertion with a patience instead of sleeping a fixed time.
//! - [`kubelet::ConfigMapDir`]: a directory updated exactly the way the kubelet updates a
//!   mounted ConfigMap.
#![forbid(unsafe_code)]

pub mod kubelet;

use std::time::{Duration, Instant};

/// How long tests wait for something asynchronous to happen. Generous, because CI machines
/// are shared and noisy; a passing test returns as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after
/// `patience`.
pub async fn eventually<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
