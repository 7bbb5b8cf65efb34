//! The agent's drain: its member takes no new sessions but keeps serving the ones it has,
//! until they go quiet.
//!
//! A drain begins on SIGTERM, on `POST /drain` or on `GET /prestop` (Kubernetes' `preStop`
//! hook can only send GET). While it lasts every answer carries
//! `stickyroute-member: draining` ([`stickyroute_relay::agent_status::DRAINING`]), so the proxy puts
//! the member in drain at the next response it forwards; `/status` says so too. It is done
//! once no request of a session has arrived for `--drain-idle`, or `--drain-timeout` after it
//! began, whichever comes first. Only a shutdown ends the process: after `POST /drain` the
//! agent keeps serving (drained) until SIGTERM, or until `DELETE /drain` takes it back.
//!
//! Kept in atomics: every request reads whether a drain is on, and while one is, writes when
//! a session's request arrived.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};
use stickyroute_relay::agent_status::DrainReport;
use stickyroute_relay::clock::{instant_of, now_ms};

/// How a drain ends, from `--drain-idle` and `--drain-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    /// Done once no session's request arrived for this long.
    pub idle: Duration,
    /// Done this long after it began, sessions or not.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Drain {
    limits: DrainLimits,
    /// [`now_ms`] when the drain began; 0 while there is none.
    since_ms: AtomicU64,
    /// [`now_ms`] of the last request that belonged to a session, during the drain.
    last_session_ms: AtomicU64,
    /// Wall clock at the start and what started it, for `/status`.
    started: Mutex<Option<(SystemTime, String)>>,
}

impl Drain {
    pub fn new(limits: DrainLimits) -> Self {
        Self {
            limits,
            since_ms: AtomicU64::new(0),
            last_session_ms: AtomicU64::new(0),
            started: Mutex::new(None),
        }
    }

    /// Begins draining unless it already is; returns whether this call began it.
    pub fn start(&self, reason: &str) -> bool {
        let now = now_ms();
        if self
            .since_ms
            .compare_exchange(0, now, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.last_session_ms.store(now, Relaxed);
        if let Ok(mut started) = self.started.lock() {
            *started = Some((SystemTime::now(), reason.to_owned()));
        }
        tracing::info!(
            reason,
            idle = ?self.limits.idle,
            timeout = ?self.limits.timeout,
            "draining: new sessions go to other members; this one's are served until they go quiet"
        );
        true
    }

    /// Takes the drain back (`DELETE /drain`); returns whether there was one.
    pub fn cancel(&self) -> bool {
        if self.since_ms.swap(0, Relaxed) == 0 {
            return false;
        }
        if let Ok(mut started) = self.started.lock() {
            *started = None;
        }
        tracing::info!("drain cancelled: taking new sessions again");
        true
    }

    pub fn is_draining(&self) -> bool {
        self.since_ms.load(Relaxed) != 0
    }

    /// A request of a session arrived (only recorded during a drain).
    pub fn session_seen(&self) {
        if self.is_draining() {
            self.last_session_ms.store(now_ms(), Relaxed);
        }
    }

    /// When the drain is done, as a [`now_ms`] value; `None` when there is no drain.
    fn done_at(&self) -> Option<u64> {
        let since = self.since_ms.load(Relaxed);
        if since == 0 {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let quiet = self
            .last_session_ms
            .load(Relaxed)
            .max(since)
            .saturating_add(ms(self.limits.idle));
        Some(quiet.min(since.saturating_add(ms(self.limits.timeout))))
    }

    /// Resolves once the drain is done, and no sooner than `at_least` after it began (the
    /// drain delay: Kubernetes' endpoints take a moment to drop a terminating pod). Starts a
    /// drain for `reason` if none is on.
    pub async fn until_done(&self, reason: &str, at_least: Duration) {
        self.start(reason);
        loop {
            let Some(done) = self.done_at() else {
                // Cancelled while waiting: only a shutdown waits here, and it cannot be.
                return;
            };
            let since = self.since_ms.load(Relaxed);
            let min = since.saturating_add(u64::try_from(at_least.as_millis()).unwrap_or(0));
            let until = done.max(min);
            if now_ms() >= until {
                tracing::info!(idle = ?Duration::from_millis(self.idle_ms()), "drain done");
                return;
            }
            tokio::time::sleep_until(instant_of(until).into()).await;
        }
    }

    /// Since the last session's request (or the start), in milliseconds; 0 without a drain.
    fn idle_ms(&self) -> u64 {
        let since = self.since_ms.load(Relaxed);
        if since == 0 {
            return 0;
        }
        now_ms().saturating_sub(self.last_session_ms.load(Relaxed).max(since))
    }

    pub fn report(&self) -> DrainReport {
        let started = self.started.lock().ok().and_then(|s| s.clone());
        DrainReport {
            since: started.as_ref().map(|(at, _)| *at),
            reason: started.map(|(_, reason)| reason),
            idle_ms: self.idle_ms(),
            done: self.done_at().is_some_and(|done| now_ms() >= done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(idle_ms: u64, timeout_ms: u64) -> Drain {
        Drain::new(DrainLimits {
            idle: Duration::from_millis(idle_ms),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    #[tokio::test]
    async fn a_drain_is_done_once_sessions_go_quiet() {
        let d = drain(150, 60_000);
        assert!(!d.is_draining());
        assert!(d.start("test"));
        assert!(!d.start("again"), "one drain at a time");
        let began = std::time::Instant::now();
        let keep_busy = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.session_seen();
            }
        };
        tokio::join!(keep_busy, d.until_done("test", Duration::ZERO));
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(390),
            "waited for 150 ms without a session after the last one (took {took:?})"
        );
        assert!(d.report().done);
        assert_eq!(d.report().reason.as_deref(), Some("test"));
    }

    #[tokio::test]
    async fn the_timeout_ends_a_drain_whose_sessions_never_stop() {
        let d = drain(100, 300);
        let began = std::time::Instant::now();
        let busy = async {
            loop {
                d.session_seen();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = d.until_done("SIGTERM", Duration::ZERO) => {}
            () = busy => unreachable!(),
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_drain_delay_is_a_minimum() {
        let d = drain(0, 60_000);
        let began = std::time::Instant::now();
        d.until_done("SIGTERM", Duration::from_millis(200)).await;
        assert!(began.elapsed() >= Duration::from_millis(190));
    }

    #[test]
    fn a_cancelled_drain_reports_nothing() {
        let d = drain(100, 1000);
        assert!(!d.cancel());
        d.start("POST /drain");
        assert!(d.is_draining());
        assert!(d.cancel());
        assert!(!d.is_draining());
        assert_eq!(d.report(), DrainReport::default());
    }
}
