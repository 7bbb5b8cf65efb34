//! A deadline on one wait at a time, for the places where bytes are awaited from someone
//! who may never send them: a client's upload, a member's response body, a client that
//! does not read what is written to it.
//!
//! The timer is armed when a wait begins and disarmed when anything moves, so only time
//! spent waiting counts; it is allocated the first time something has to wait and reused
//! after that, so exchanges that never wait (most small ones) cost nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug, Default)]
pub struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    pub const fn new() -> Self {
        Self {
            timer: None,
            armed: false,
        }
    }

    /// Something moved: the next wait starts afresh.
    pub fn moved(&mut self) {
        self.armed = false;
    }

    /// A wait is under way (the caller got `Pending`): `Ready` once it has lasted `limit`.
    pub fn poll_waited(&mut self, cx: &mut Context<'_>, limit: Duration) -> Poll<()> {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_time_spent_waiting_counts() {
        let mut stall = Stall::new();
        let limit = Duration::from_secs(10);
        let waited = |stall: &mut Stall| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            stall.poll_waited(&mut cx, limit).is_ready()
        };
        assert!(!waited(&mut stall));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!waited(&mut stall));
        stall.moved();
        assert!(!waited(&mut stall), "a new wait");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!waited(&mut stall), "6 s into the new wait");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(waited(&mut stall));
    }
}
