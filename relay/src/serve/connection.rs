//! What one client connection is doing: how many of its requests are in flight, how many
//! it has made, and since when it has been idle. The listener's sweeper (in
//! `super::serve`) asks a connection to close once it has been idle for the header read
//! timeout, whether it never completed a first request (silence after the accept, half a
//! request head, part of the HTTP/2 preface) or finished its last exchange and sent nothing
//! since (HTTP/1 keep-alive, an HTTP/2 connection with no open stream), and asks every
//! connection to close gracefully at shutdown.
//!
//! The sweeper runs on its own timer and wakes only the connections it closes: a
//! connection's own task does no timer or channel work per request (a `select!` on a
//! timer and a stop token there cost about a thousand instructions per request).
//!
//! A request counts as in flight from the moment its head is complete until its response
//! body is done or dropped, on every path: the count is kept by a guard that the response
//! body carries, so a handler that is cancelled (the client went away) ends it too.

use super::stats::ServeStats;
use crate::access_log::Pending;
use crate::clock::now_ms;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What the sweeper asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// Idle for too long: say goodbye (an HTTP/2 GOAWAY) and go.
    Idle,
    /// The process is shutting down: finish what is in flight, take nothing new.
    Shutdown,
}

#[derive(Debug)]
pub(super) struct ConnState {
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// [`now_ms`] when the connection last had nothing in flight (its accept at first).
    idle_since: AtomicU64,
    /// 0, or what was asked ([`Close`] + 1).
    close: AtomicU8,
    /// The connection task, to wake when a close is asked.
    task: OnceLock<Waker>,
}

impl ConnState {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(now_ms()),
            close: AtomicU8::new(0),
            task: OnceLock::new(),
        })
    }

    /// Asks the connection to close (a shutdown overrides an idle close).
    pub(super) fn ask(&self, close: Close) {
        self.close.fetch_max(close as u8 + 1, Relaxed);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }

    /// What was asked, if anything; the first call also notes the task to wake.
    pub(super) fn asked(&self, cx: &Context<'_>) -> Option<Close> {
        if self.task.get().is_none() {
            let _ = self.task.set(cx.waker().clone());
        }
        match self.close.load(Relaxed) {
            0 => None,
            1 => Some(Close::Idle),
            _ => Some(Close::Shutdown),
        }
    }

    /// A request's head is complete.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        let before = self.served.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight {
            state: self.clone(),
            first: before == 0,
        }
    }

    /// Whether a request was ever made on this connection.
    pub(super) fn served_any(&self) -> bool {
        self.served.load(Relaxed) > 0
    }

    /// How much longer the connection may stay idle before `timeout` is over; `None`
    /// while a request is in flight.
    pub(super) fn idle_left(&self, timeout: Duration) -> Option<Duration> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        let idle_for = now_ms().saturating_sub(self.idle_since.load(Relaxed));
        Some(timeout.saturating_sub(Duration::from_millis(idle_for)))
    }
}

/// One request in flight on its connection; ends when dropped.
#[derive(Debug)]
pub(super) struct InFlight {
    state: Arc<ConnState>,
    first: bool,
}

impl InFlight {
    /// The first request made on this connection.
    pub(super) fn is_first(&self) -> bool {
        self.first
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.idle_since.store(now_ms(), Relaxed);
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that ends its request's [`InFlight`] when it is done or dropped, and
/// then times the request and writes its access log line.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
    stats: Arc<ServeStats>,
    started: Instant,
    pending: Option<Pending>,
}

impl<B> Tracked<B> {
    pub(super) fn new(
        body: B,
        in_flight: InFlight,
        stats: Arc<ServeStats>,
        started: Instant,
        pending: Option<Pending>,
    ) -> Self {
        Self {
            body,
            _in_flight: in_flight,
            stats,
            started,
            pending,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.stats.request_duration.observe(self.started.elapsed());
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(pending), Poll::Ready(Some(Ok(frame)))) = (&mut this.pending, &polled)
            && let Some(data) = frame.data_ref()
        {
            pending.sent(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_nothing_in_flight_and_the_first_request_is_told() {
        let state = ConnState::new();
        let timeout = Duration::from_secs(10);
        assert!(
            state
                .idle_left(timeout)
                .is_some_and(|left| left > Duration::from_secs(9))
        );
        let first = state.begin();
        assert!(first.is_first());
        let second = state.begin();
        assert!(!second.is_first());
        assert_eq!(state.idle_left(timeout), None);
        drop(first);
        assert_eq!(state.idle_left(timeout), None, "one is still in flight");
        drop(second);
        assert!(state.idle_left(timeout).is_some());
        assert!(state.served_any());
    }
}
