//! What the serving side counts about clients: connections opened, refused beyond the
//! limit and closed for silence, and the client mistakes that end requests (a broken or
//! stalled upload, a client that stops reading). Shared by every worker of one listener
//! group, rendered on scrape by the binary's admin listener.

use crate::metrics::{Histogram, PromText};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A client mistake that ended a request; never counted against a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body broke off or its framing was invalid: 400.
    UploadBroken,
    /// The request body stopped arriving for the idle timeout: 408.
    UploadStalled,
    /// The client stopped reading its response for the idle timeout: connection closed.
    NotReading,
    /// The request was refused before anything was forwarded (bad Host, CONNECT, ...).
    Refused,
    /// The request head could not be parsed: 400, answered by the HTTP layer.
    HeadInvalid,
    /// The request head was over the size or header count limit: 431.
    HeadTooLarge,
    /// A peer that must send a PROXY protocol header sent none, a broken one, or not in
    /// time: connection closed.
    ProxyHeader,
}

impl ClientFault {
    const ALL: [ClientFault; 7] = [
        ClientFault::UploadBroken,
        ClientFault::UploadStalled,
        ClientFault::NotReading,
        ClientFault::Refused,
        ClientFault::HeadInvalid,
        ClientFault::HeadTooLarge,
        ClientFault::ProxyHeader,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ClientFault::UploadBroken => "upload_broken",
            ClientFault::UploadStalled => "upload_stalled",
            ClientFault::NotReading => "not_reading",
            ClientFault::Refused => "refused_request",
            ClientFault::HeadInvalid => "head_invalid",
            ClientFault::HeadTooLarge => "head_too_large",
            ClientFault::ProxyHeader => "proxy_header",
        }
    }
}

/// `1xx` to `5xx`: the `class` label of the status counters.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`].
pub fn status_class(status: http::StatusCode) -> usize {
    usize::from((status.as_u16() / 100).clamp(1, 5) - 1)
}

/// Why a connection was closed for silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// No complete request within the header read timeout of the accept.
    FirstRequest,
    /// No new request within the header read timeout of the last response.
    KeepAlive,
}

#[derive(Debug, Default)]
pub struct ServeStats {
    pub(super) open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    silent_first: AtomicU64,
    silent_keep_alive: AtomicU64,
    faults: [AtomicU64; 7],
    /// Responses by [`STATUS_CLASSES`].
    responses: [AtomicU64; 5],
    /// From a complete request head to the end of its response body.
    pub request_duration: Histogram,
}

impl ServeStats {
    pub(super) fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    pub(super) fn silent(&self, silence: Silence) {
        match silence {
            Silence::FirstRequest => &self.silent_first,
            Silence::KeepAlive => &self.silent_keep_alive,
        }
        .fetch_add(1, Relaxed);
    }

    /// A response head was sent.
    pub fn responded(&self, status: http::StatusCode) {
        self.responses[status_class(status)].fetch_add(1, Relaxed);
    }

    pub fn client_fault(&self, fault: ClientFault) {
        self.faults[fault as usize].fetch_add(1, Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Connections refused beyond the limit since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Adds the families for several listener groups, each labelled with its name
    /// (`traffic`, `admin`).
    pub fn render_all(out: &mut PromText, groups: &[(&str, &ServeStats)]) {
        type Read = fn(&ServeStats) -> u64;
        let families: [(&str, &str, &str, Read); 3] = [
            (
                "stickyroute_connections_open",
                "gauge",
                "Client connections open now (WebSocket tunnels included).",
                |s| s.open() as u64,
            ),
            (
                "stickyroute_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |s| s.accepted.load(Relaxed),
            ),
            (
                "stickyroute_connections_refused_total",
                "counter",
                "Client connections closed at once because the connection limit was reached.",
                |s| s.refused_total(),
            ),
        ];
        for (name, kind, help, read) in families {
            out.family(name, kind, help);
            for (listener, stats) in groups {
                out.sample(name, &[("listener", listener)], read(stats));
            }
        }
        let silent = "stickyroute_connections_silent_closed_total";
        out.family(
            silent,
            "counter",
            "Client connections closed after the header read timeout without a complete request.",
        );
        for (listener, stats) in groups {
            for (phase, counter) in [
                ("first_request", &stats.silent_first),
                ("keep_alive", &stats.silent_keep_alive),
            ] {
                out.sample(
                    silent,
                    &[("listener", listener), ("phase", phase)],
                    counter.load(Relaxed),
                );
            }
        }
        let responses = "stickyroute_responses_total";
        out.family(
            responses,
            "counter",
            "Responses by status class (those answered here included: 503s, 400s, redirects).",
        );
        for (listener, stats) in groups {
            for (class, counter) in STATUS_CLASSES.iter().zip(&stats.responses) {
                out.sample(
                    responses,
                    &[("listener", listener), ("class", class)],
                    counter.load(Relaxed),
                );
            }
        }
        let duration = "stickyroute_request_duration_seconds";
        out.family(
            duration,
            "histogram",
            "From a complete request head to the end of its response body.",
        );
        for (listener, stats) in groups {
            out.histogram(duration, &[("listener", listener)], &stats.request_duration);
        }
        let faults = "stickyroute_client_faults_total";
        out.family(
            faults,
            "counter",
            "Requests ended by a client's mistake (never counted against a member).",
        );
        for (listener, stats) in groups {
            for fault in ClientFault::ALL {
                out.sample(
                    faults,
                    &[("listener", listener), ("kind", fault.as_str())],
                    stats.faults[fault as usize].load(Relaxed),
                );
            }
        }
    }
}
