//! The app behind the agent, as the agent finds it: from its traffic (a connection the app
//! refused, or that timed out, means the app is unreachable until one succeeds) and, with
//! `--app-health-path`, from an active check. While the check fails the agent forwards
//! nothing: it answers at once as for an unreachable app (so the proxy sends the request to
//! another member, see [`agent_status::MEMBER_STATE_HEADER`]) and reports unready, so that
//! Kubernetes takes the pod out of its Service's endpoints too.
//!
//! Kept in atomics: every request reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stickyroute_relay::agent_status;
use stickyroute_relay::upstream::forward::Upstreams;

/// Failed checks in a row that take the app out, and passes that bring it back.
pub const FALL: u32 = 2;
pub const RISE: u32 = 2;

#[derive(Debug, Default)]
pub struct AppHealth {
    /// Wall-clock milliseconds since the epoch when it became unreachable; 0 while reachable.
    unreachable_since_ms: AtomicU64,
    unreachable_total: AtomicU64,
    /// The active check failed `FALL` times in a row (and has not passed `RISE` since).
    check_failing: AtomicBool,
    streak: AtomicU32,
}

impl AppHealth {
    /// An exchange with the app worked.
    pub fn reached(&self) {
        if self.unreachable_since_ms.load(Relaxed) != 0 && !self.check_failing.load(Relaxed) {
            self.unreachable_since_ms.store(0, Relaxed);
            tracing::info!("the app answers again");
        }
    }

    /// A request could not be delivered to the app: refused, timed out, or held back
    /// because the app fails its check.
    pub fn unreachable(&self, why: &dyn std::fmt::Display) {
        self.unreachable_total.fetch_add(1, Relaxed);
        if self.went_down() {
            tracing::warn!(error = %why, "the app cannot be reached; the proxy is told with each answer");
        }
    }

    /// Marks it unreachable from now, unless it already was; whether it was not.
    fn went_down(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.unreachable_since_ms
            .compare_exchange(0, now, Relaxed, Relaxed)
            .is_ok()
    }

    /// Whether the active check says the app is down (requests are then not forwarded).
    pub fn check_failing(&self) -> bool {
        self.check_failing.load(Relaxed)
    }

    /// One active check's result; returns the new state when it flipped.
    fn record_check(&self, passed: bool) -> Option<bool> {
        let failing = self.check_failing.load(Relaxed);
        if passed != failing {
            self.streak.store(0, Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Relaxed) + 1;
        if streak < if passed { RISE } else { FALL } {
            return None;
        }
        self.streak.store(0, Relaxed);
        self.check_failing.store(!passed, Relaxed);
        if passed {
            self.unreachable_since_ms.store(0, Relaxed);
        } else {
            self.went_down();
        }
        Some(passed)
    }

    /// For `/status`.
    pub fn report(&self) -> agent_status::AppReport {
        let since = self.unreachable_since_ms.load(Relaxed);
        agent_status::AppReport {
            reachable: since == 0,
            unreachable_since: (since != 0).then(|| UNIX_EPOCH + Duration::from_millis(since)),
            unreachable_total: self.unreachable_total.load(Relaxed),
            check_failing: self.check_failing(),
        }
    }
}

/// `--app-health-path` and its timing.
#[derive(Debug, Clone)]
pub struct AppCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Checks the app every `check.interval` until the process ends.
pub async fn run(
    health: Arc<AppHealth>,
    upstreams: Upstreams,
    upstream: http::uri::Authority,
    check: AppCheck,
) {
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = upstreams
            .get(&upstream, &check.path, check.timeout)
            .await
            .map(|response| response.status());
        let passed =
            matches!(&result, Ok(status) if status.is_success() || status.is_redirection());
        match (health.record_check(passed), &result) {
            (Some(true), _) => {
                tracing::info!(path = %check.path, "the app passes its health check again; forwarding")
            }
            (Some(false), Ok(status)) => {
                tracing::warn!(path = %check.path, %status, "the app fails its health check; not forwarding, unready")
            }
            (Some(false), Err(error)) => {
                tracing::warn!(path = %check.path, %error, "the app fails its health check; not forwarding, unready")
            }
            (None, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_needs_fall_failures_and_rise_passes_in_a_row() {
        let health = AppHealth::default();
        assert_eq!(health.record_check(false), None);
        assert_eq!(health.record_check(true), None, "a pass resets the streak");
        assert_eq!(health.record_check(false), None);
        assert_eq!(health.record_check(false), Some(false));
        assert!(health.check_failing() && !health.report().reachable);
        health.reached();
        assert!(
            !health.report().reachable,
            "traffic does not override the check"
        );
        assert_eq!(health.record_check(true), None);
        assert_eq!(health.record_check(true), Some(true));
        assert!(!health.check_failing() && health.report().reachable);
    }

    #[test]
    fn traffic_marks_it_unreachable_until_an_exchange_works() {
        let health = AppHealth::default();
        health.unreachable(&"refused");
        health.unreachable(&"refused");
        let report = health.report();
        assert!(!report.reachable && report.unreachable_since.is_some());
        assert_eq!(report.unreachable_total, 2);
        health.reached();
        assert!(health.report().reachable);
    }
}
