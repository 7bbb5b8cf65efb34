//! A cheap monotonic clock in milliseconds, for deadlines and timestamps kept in atomics
//! (member error deadlines, when a connection went idle).

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started using this clock; never 0, so 0 can mean "none".
pub fn now_ms() -> u64 {
    u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// The instant `ms` (a value of [`now_ms`]) stands for.
pub fn instant_of(ms: u64) -> Instant {
    start() + std::time::Duration::from_millis(ms.saturating_sub(1))
}
