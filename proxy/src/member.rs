//! A member: one route map entry the proxy forwards to, plus its runtime state.
//!
//! The split matters for live reloads: a [`Member`] is rebuilt with every member table,
//! while its [`MemberState`] (health, counters, balancing score, operator overrides) is
//! carried over to the new table whenever the entry's key and route are unchanged.

use http::uri::Authority;
use routemap::{Key, LoadFactor, RouteId, Status};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};
use stickyroute_relay::body::Meter;
use stickyroute_relay::clock::now_ms;
use stickyroute_relay::metrics::Histogram;
use stickyroute_relay::upstream::forward::UpstreamFailure;

/// Runtime state of a member; shared by every table that has this member.
#[derive(Debug)]
pub struct MemberState {
    /// Apache's `lbstatus`: the weighted request counting score.
    pub lbstatus: AtomicI64,
    /// Requests in flight.
    pub busy: AtomicI64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub sticky_hits: AtomicU64,
    /// Responses by status class (`1xx`..`5xx`).
    pub statuses: [AtomicU64; 5],
    /// Failures by [`UpstreamFailure`].
    pub failures: [AtomicU64; 5],
    /// From sending a request to the member's response head.
    pub head_time: Histogram,
    /// Passive health: in error until this [`now_ms`] instant; 0 when not in error.
    error_until: AtomicU64,
    /// Wall-clock milliseconds since the epoch when the current health state began.
    health_since: AtomicU64,
    /// Active health: false once `fall` checks failed in a row, true again after `rise`.
    active_up: AtomicBool,
    active_streak: AtomicU32,
    /// The member's agent said it is draining: in drain until this [`now_ms`] instant (each
    /// answer that says so again moves it on); 0 when it has not.
    agent_drain_until: AtomicU64,
    /// [`now_ms`] since which the member has been unusable for its sessions (in error, taken
    /// out by checks, or found unusable by a session's request); 0 while usable. What
    /// `--failover-after` counts from.
    unusable_since: AtomicU64,
    /// The last failure's kind (its index in [`UpstreamFailure::ALL`] + 1; 0: none yet) and
    /// wall-clock time, for the balancer-manager.
    last_failure: AtomicU8,
    last_failure_at: AtomicU64,
    /// Requests in the last whole second, and the count it was measured from (see
    /// [`MemberState::sample_rate`]).
    rate: AtomicU64,
    rate_mark: AtomicU64,
    /// Operator overrides (balancer-manager); 0 means "as in the map".
    status_override: AtomicU8,
    loadfactor_override: AtomicU8,
    /// Who set the overrides above and when; `None` without overrides.
    pub override_origin: arc_swap::ArcSwapOption<crate::overrides::Origin>,
    /// What this member's agent last reported (when `--agent-admin-port` is set).
    pub agent: arc_swap::ArcSwapOption<AgentReport>,
}

/// How long an agent's word that it drains holds without being said again. Every answer of
/// a draining agent says it, so a member with sessions is refreshed all the time; one whose
/// sessions went quiet is offered new sessions again after this, unless its agent (asked by
/// `--health-path` checks, `--agent-admin-port` reads or that new session's answer) still
/// says it drains.
pub const AGENT_DRAIN_HOLD: Duration = Duration::from_secs(30);

/// An agent's `/status`, as far as the proxy cares: which map it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentReport {
    /// The agent's map hash; `None` when it could not be read.
    pub map_hash: Option<String>,
    pub map_generation: Option<u64>,
    /// Whether the agent drains; `None` when the status could not be read.
    pub draining: Option<bool>,
    /// Why the status could not be read.
    pub error: Option<String>,
    /// Wall-clock milliseconds since the epoch.
    pub at_ms: u64,
}

impl Default for MemberState {
    fn default() -> Self {
        Self {
            lbstatus: AtomicI64::new(0),
            busy: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            sticky_hits: AtomicU64::new(0),
            statuses: Default::default(),
            failures: Default::default(),
            head_time: Histogram::default(),
            error_until: AtomicU64::new(0),
            health_since: AtomicU64::new(wall_ms()),
            active_up: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            agent_drain_until: AtomicU64::new(0),
            unusable_since: AtomicU64::new(0),
            last_failure: AtomicU8::new(0),
            last_failure_at: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            rate_mark: AtomicU64::new(0),
            status_override: AtomicU8::new(0),
            loadfactor_override: AtomicU8::new(0),
            override_origin: arc_swap::ArcSwapOption::empty(),
            agent: arc_swap::ArcSwapOption::empty(),
        }
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MemberState {
    /// A failed exchange: counted in `errors` and by its kind.
    pub fn failed(&self, failure: UpstreamFailure) {
        self.errors.fetch_add(1, Relaxed);
        self.failures[failure as usize].fetch_add(1, Relaxed);
        self.last_failure.store(failure as u8 + 1, Relaxed);
        self.last_failure_at.store(wall_ms(), Relaxed);
    }

    /// The last failure and its wall-clock time.
    pub fn last_failure(&self) -> Option<(UpstreamFailure, u64)> {
        let kind = usize::from(self.last_failure.load(Relaxed)).checked_sub(1)?;
        Some((
            *UpstreamFailure::ALL.get(kind)?,
            self.last_failure_at.load(Relaxed),
        ))
    }

    /// Called once a second: the requests since the last call become the rate.
    pub fn sample_rate(&self) {
        let now = self.requests.load(Relaxed);
        let before = self.rate_mark.swap(now, Relaxed);
        self.rate.store(now.saturating_sub(before), Relaxed);
    }

    /// Requests in the last whole second.
    pub fn rate(&self) -> u64 {
        self.rate.load(Relaxed)
    }

    /// Apache's "force recovery": out of passive error and taken as up by active checks
    /// at once (the next failed exchange or `fall` failed checks put it back).
    pub fn clear_error(&self) {
        self.error_until.store(0, Relaxed);
        self.active_up.store(true, Relaxed);
        self.active_streak.store(0, Relaxed);
        self.unusable_since.store(0, Relaxed);
        self.health_since.store(wall_ms(), Relaxed);
    }

    /// Since when the member has been in its current health state (wall-clock ms): a
    /// passive error whose retry time has passed ended then, even before an answer
    /// confirms it.
    pub fn health_since_at(&self, now: u64) -> u64 {
        let until = self.error_until.load(Relaxed);
        if until != 0 && until <= now && self.active_up.load(Relaxed) {
            return wall_ms().saturating_sub(now - until);
        }
        self.health_since.load(Relaxed)
    }

    /// Passive health: puts the member in error for `retry` (connect failure, timeout,
    /// `failonstatus`). After that, real traffic tries it again.
    pub fn mark_error(&self, retry: Duration) {
        let now = now_ms();
        let was_ok = self
            .error_until
            .swap(now + retry.as_millis() as u64, Relaxed)
            == 0;
        if was_ok {
            self.health_since.store(wall_ms(), Relaxed);
        }
        self.found_unusable(now);
    }

    /// A request succeeded: clears a passive error whose retry time has passed.
    pub fn mark_ok(&self) {
        if self.error_until.load(Relaxed) != 0 && self.error_until.swap(0, Relaxed) != 0 {
            self.health_since.store(wall_ms(), Relaxed);
        }
        self.found_usable();
    }

    /// The member cannot serve its sessions from `now` on, unless it already could not.
    pub fn found_unusable(&self, now: u64) {
        let _ = self
            .unusable_since
            .compare_exchange(0, now, Relaxed, Relaxed);
    }

    /// The member serves its sessions again: a response came, or a request found it usable
    /// without a passive error behind it (one whose retry time has passed is tried again,
    /// but still counts as unusable until it answers).
    pub fn found_usable(&self) {
        if self.unusable_since.load(Relaxed) != 0 && self.error_until.load(Relaxed) == 0 {
            self.unusable_since.store(0, Relaxed);
        }
    }

    /// How long the member has been unusable for its sessions, at `now`.
    pub fn unusable_for(&self, now: u64) -> Option<Duration> {
        match self.unusable_since.load(Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now.saturating_sub(since))),
        }
    }

    /// What the member's agent said about draining: `true` puts the member in drain for
    /// [`AGENT_DRAIN_HOLD`] from now, `false` takes it out at once. Returns whether that
    /// changed whether it drains.
    pub fn agent_says_draining(&self, draining: bool) -> bool {
        let until = if draining {
            now_ms() + AGENT_DRAIN_HOLD.as_millis() as u64
        } else {
            0
        };
        // Written only when it changes or moves on by a second: every answer of a draining
        // agent says so, from every worker.
        let before = self.agent_drain_until.load(Relaxed);
        if (until == 0 && before != 0) || until > before + 1000 {
            self.agent_drain_until.store(until, Relaxed);
            return (before <= now_ms()) == draining;
        }
        false
    }

    /// Whether the member's agent says it drains, at `now`.
    pub fn agent_draining(&self, now: u64) -> bool {
        self.agent_drain_until.load(Relaxed) > now
    }

    /// Not in passive error at `now` and not taken out by active checks.
    pub fn is_healthy(&self, now: u64) -> bool {
        let until = self.error_until.load(Relaxed);
        (until == 0 || until <= now) && self.active_up.load(Relaxed)
    }

    /// Seconds until the passive error ends (for `Retry-After`), if in error.
    pub fn error_remaining(&self, now: u64) -> Option<Duration> {
        let until = self.error_until.load(Relaxed);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// One active check result; flips the state after `rise` passes or `fall` failures in
    /// a row. Returns the new state when it changed.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let up = self.active_up.load(Relaxed);
        if passed == up {
            self.active_streak.store(0, Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Relaxed) + 1;
        if streak >= if passed { rise } else { fall } {
            self.active_up.store(passed, Relaxed);
            self.active_streak.store(0, Relaxed);
            self.health_since.store(wall_ms(), Relaxed);
            if !passed {
                self.found_unusable(now_ms());
            }
            return Some(passed);
        }
        None
    }

    pub fn status_override(&self) -> Option<Status> {
        match self.status_override.load(Relaxed) {
            0 => None,
            n => Status::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    pub fn set_status_override(&self, status: Option<Status>) {
        let code = status.map_or(0, |s| {
            Status::ALL
                .iter()
                .position(|x| *x == s)
                .map_or(0, |i| i as u8 + 1)
        });
        self.status_override.store(code, Relaxed);
    }

    pub fn loadfactor_override(&self) -> Option<LoadFactor> {
        LoadFactor::new(u32::from(self.loadfactor_override.load(Relaxed)))
    }

    pub fn set_loadfactor_override(&self, loadfactor: Option<LoadFactor>) {
        self.loadfactor_override
            .store(loadfactor.map_or(0, LoadFactor::get), Relaxed);
    }
}

/// One request in flight on a member: counted in `busy` from its creation until the last
/// holder drops it (the request path, the upload, the response body), so the count ends
/// on every path, a cancelled request included (the client went away, an HTTP/2 stream
/// was reset). It also meters the exchange's bytes, and takes the member's failures in
/// the middle of a response body as member errors.
#[derive(Debug)]
pub struct InFlight {
    member: Arc<Member>,
    retry: Duration,
    /// This attempt's uploaded bytes, for the request's access log line.
    uploaded: AtomicU64,
}

impl InFlight {
    /// A request is sent to `member`; `retry` is how long a failure puts it in error.
    pub fn start(member: &Arc<Member>, retry: Duration) -> Arc<Self> {
        member.state.requests.fetch_add(1, Relaxed);
        member.state.busy.fetch_add(1, Relaxed);
        Arc::new(Self {
            member: member.clone(),
            retry,
            uploaded: AtomicU64::new(0),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.member.state.busy.fetch_sub(1, Relaxed);
    }
}

impl Meter for InFlight {
    fn received(&self, bytes: u64) {
        self.member.state.bytes_in.fetch_add(bytes, Relaxed);
        self.uploaded.fetch_add(bytes, Relaxed);
    }

    fn sent(&self, bytes: u64) {
        self.member.state.bytes_out.fetch_add(bytes, Relaxed);
    }

    fn failed(&self, error: &std::io::Error) {
        let state = &self.member.state;
        state.failed(UpstreamFailure::of_io(error));
        state.mark_error(self.retry);
        tracing::warn!(route = %self.member.route, %error, retry = ?self.retry, "member failed in the middle of a response body; in error for the retry time");
    }

    fn uploaded(&self) -> u64 {
        self.uploaded.load(Relaxed)
    }
}

/// One member of one member table.
#[derive(Debug)]
pub struct Member {
    pub route: RouteId,
    pub key: Key,
    pub port: u16,
    /// Where to connect; `None` while a name key does not resolve (the member is unusable).
    pub address: Option<SocketAddr>,
    pub authority: Option<Authority>,
    /// As in the map; see [`Member::loadfactor`] for the effective value.
    pub map_loadfactor: LoadFactor,
    pub map_status: Status,
    /// Its endpoint is terminating but still serving (`--member-service`): in drain.
    pub terminating: bool,
    pub state: Arc<MemberState>,
}

impl Member {
    /// The status requests are routed by: the operator's override, else the map's; a
    /// member whose agent drains, or whose pod is terminating, is in drain unless it is
    /// disabled.
    pub fn status_at(&self, now: u64) -> Status {
        let status = self.state.status_override().unwrap_or(self.map_status);
        if status != Status::Disabled && (self.terminating || self.state.agent_draining(now)) {
            return Status::Drain;
        }
        status
    }

    pub fn status(&self) -> Status {
        self.status_at(now_ms())
    }

    /// What the member's agent said about draining (see [`MemberState::agent_says_draining`]).
    pub fn agent_says_draining(&self, draining: bool) {
        if self.state.agent_says_draining(draining) {
            if draining {
                tracing::info!(route = %self.route, "the member's agent is draining: its sessions stay, new ones go elsewhere");
            } else {
                tracing::info!(route = %self.route, "the member's agent no longer drains: it takes new sessions again");
            }
        }
    }

    /// The status as the operator set it (or the map), before the agent's drain.
    pub fn configured_status(&self) -> Status {
        self.state.status_override().unwrap_or(self.map_status)
    }

    pub fn loadfactor(&self) -> u8 {
        self.state
            .loadfactor_override()
            .unwrap_or(self.map_loadfactor)
            .get()
    }

    /// Reachable and not in error.
    pub fn is_healthy(&self, now: u64) -> bool {
        self.authority.is_some() && self.state.is_healthy(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_errors_expire_after_the_retry_time() {
        let state = MemberState::default();
        let now = now_ms();
        assert!(state.is_healthy(now));
        state.mark_error(Duration::from_secs(60));
        assert!(!state.is_healthy(now_ms()));
        assert!(state.error_remaining(now_ms()).unwrap() > Duration::from_secs(59));
        assert!(
            state.is_healthy(now_ms() + 60_001),
            "usable again once retry has passed"
        );
        state.mark_ok();
        assert!(state.is_healthy(now_ms()));
    }

    #[test]
    fn active_checks_need_fall_failures_and_rise_passes_in_a_row() {
        let state = MemberState::default();
        assert_eq!(state.record_check(false, 2, 3), None);
        assert_eq!(state.record_check(false, 2, 3), None);
        assert_eq!(
            state.record_check(true, 2, 3),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(state.record_check(false, 2, 3), None);
        assert_eq!(state.record_check(false, 2, 3), None);
        assert_eq!(state.record_check(false, 2, 3), Some(false));
        assert!(!state.is_healthy(now_ms()));
        assert_eq!(state.record_check(true, 2, 3), None);
        assert_eq!(state.record_check(true, 2, 3), Some(true));
        assert!(state.is_healthy(now_ms()));
    }

    #[test]
    fn overrides_round_trip() {
        let state = MemberState::default();
        assert_eq!(state.status_override(), None);
        for s in Status::ALL {
            state.set_status_override(Some(s));
            assert_eq!(state.status_override(), Some(s));
        }
        state.set_status_override(None);
        assert_eq!(state.status_override(), None);
        state.set_loadfactor_override(LoadFactor::new(42));
        assert_eq!(state.loadfactor_override().map(LoadFactor::get), Some(42));
    }
}
