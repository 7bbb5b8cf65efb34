//! The agent's counters, rendered for Prometheus on scrape.

use crate::inject::Reason;
use routemap::MapStatus;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use stickyroute_relay::admin::map_metrics;
use stickyroute_relay::metrics::PromText;
use stickyroute_relay::upstream::forward::ForwardError;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    injected: [AtomicU64; 3],
    lookup_misses: AtomicU64,
    default_route_used: AtomicU64,
    upstream_connect_errors: AtomicU64,
    upstream_timeouts: AtomicU64,
    upstream_other_errors: AtomicU64,
}

impl Metrics {
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn injected(&self, reason: Reason) {
        self.injected[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn lookup_missed(&self) {
        self.lookup_misses.fetch_add(1, Relaxed);
    }

    pub fn default_route_used(&self) {
        self.default_route_used.fetch_add(1, Relaxed);
    }

    pub fn upstream_error(&self, error: &ForwardError) {
        let counter = match error {
            ForwardError::Connect { .. } => &self.upstream_connect_errors,
            ForwardError::Timeout { .. } => &self.upstream_timeouts,
            _ => &self.upstream_other_errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn render(&self, map: &MapStatus, draining: bool) -> PromText {
        let mut out = PromText::default();
        out.single(
            "stickyroute_agent_requests_total",
            "counter",
            "Requests received.",
            self.requests.load(Relaxed),
        );
        out.family(
            "stickyroute_agent_cookies_injected_total",
            "counter",
            "Sticky cookies set, by what triggered them.",
        );
        for reason in Reason::ALL {
            out.sample(
                "stickyroute_agent_cookies_injected_total",
                &[("reason", reason.as_str())],
                self.injected[reason as usize].load(Relaxed),
            );
        }
        out.single(
            "stickyroute_agent_route_lookup_misses_total",
            "counter",
            "Requests for which this instance's keys were not in the route map.",
            self.lookup_misses.load(Relaxed),
        );
        out.single(
            "stickyroute_agent_default_route_used_total",
            "counter",
            "Lookups that fell back to --default-route.",
            self.default_route_used.load(Relaxed),
        );
        out.family(
            "stickyroute_agent_upstream_errors_total",
            "counter",
            "Requests the app did not answer.",
        );
        for (kind, counter) in [
            ("connect", &self.upstream_connect_errors),
            ("timeout", &self.upstream_timeouts),
            ("other", &self.upstream_other_errors),
        ] {
            out.sample(
                "stickyroute_agent_upstream_errors_total",
                &[("kind", kind)],
                counter.load(Relaxed),
            );
        }
        out.single(
            "stickyroute_agent_draining",
            "gauge",
            "1 while shutting down.",
            u8::from(draining),
        );
        map_metrics(&mut out, map);
        out
    }
}
