//! The proxy's counters, rendered for Prometheus on scrape.

use crate::table::MemberTable;
use routemap::MapStatus;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use stickyroute_relay::admin::map_metrics;
use stickyroute_relay::clock::now_ms;
use stickyroute_relay::metrics::PromText;
use stickyroute_relay::serve::stats::STATUS_CLASSES;
use stickyroute_relay::upstream::forward::UpstreamFailure;

/// How a request's member was chosen (or why none was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No sticky value: a weighted pick.
    New,
    /// The sticky member served it.
    Hit,
    /// A draining member served one of its sessions.
    DrainedHit,
    /// The route is not in the map: a weighted pick (or 503 with `--unknown-route reject`).
    UnknownRoute,
    /// A sticky value without a route: a weighted pick.
    Malformed,
    /// The sticky member was unusable: another member took the session.
    Failover,
    /// The sticky member was unusable and `--nofailover`: 503.
    NofailoverRefused,
    /// No member at all could take the request: 503.
    NoMember,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::New,
        Outcome::Hit,
        Outcome::DrainedHit,
        Outcome::UnknownRoute,
        Outcome::Malformed,
        Outcome::Failover,
        Outcome::NofailoverRefused,
        Outcome::NoMember,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Hit => "hit",
            Outcome::DrainedHit => "drained_hit",
            Outcome::UnknownRoute => "unknown_route",
            Outcome::Malformed => "malformed",
            Outcome::Failover => "failover",
            Outcome::NofailoverRefused => "nofailover_503",
            Outcome::NoMember => "no_member_503",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 8],
    retries: AtomicU64,
}

impl Metrics {
    pub fn outcome(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn render(
        &self,
        table: Option<&MemberTable>,
        map: &MapStatus,
        swaps: u64,
        draining: bool,
    ) -> PromText {
        let mut out = PromText::default();
        out.family(
            "stickyroute_proxy_sticky_total",
            "counter",
            "Requests by how their member was chosen.",
        );
        for outcome in Outcome::ALL {
            out.sample(
                "stickyroute_proxy_sticky_total",
                &[("outcome", outcome.as_str())],
                self.outcomes[outcome as usize].load(Relaxed),
            );
        }
        out.single(
            "stickyroute_proxy_retries_total",
            "counter",
            "Requests sent to another member after a failed connection attempt.",
            self.retries.load(Relaxed),
        );
        out.single(
            "stickyroute_proxy_table_swaps_total",
            "counter",
            "Member tables swapped in.",
            swaps,
        );
        out.single(
            "stickyroute_proxy_draining",
            "gauge",
            "1 while shutting down.",
            u8::from(draining),
        );
        if let Some(table) = table {
            member_metrics(&mut out, table);
        }
        map_metrics(&mut out, map);
        out
    }
}

fn member_metrics(out: &mut PromText, table: &MemberTable) {
    let now = now_ms();
    type Read = fn(&crate::member::Member, u64) -> i64;
    let families: [(&str, &str, &str, Read); 8] = [
        (
            "stickyroute_member_requests_total",
            "counter",
            "Requests sent to the member.",
            |m, _| m.state.requests.load(Relaxed) as i64,
        ),
        (
            "stickyroute_member_errors_total",
            "counter",
            "Failed requests (connect, timeout, failonstatus).",
            |m, _| m.state.errors.load(Relaxed) as i64,
        ),
        (
            "stickyroute_member_bytes_in_total",
            "counter",
            "Request body bytes sent to the member.",
            |m, _| m.state.bytes_in.load(Relaxed) as i64,
        ),
        (
            "stickyroute_member_bytes_out_total",
            "counter",
            "Response body bytes from the member.",
            |m, _| m.state.bytes_out.load(Relaxed) as i64,
        ),
        (
            "stickyroute_member_sticky_hits_total",
            "counter",
            "Requests routed to the member by their sticky value.",
            |m, _| m.state.sticky_hits.load(Relaxed) as i64,
        ),
        (
            "stickyroute_member_busy",
            "gauge",
            "Requests in flight.",
            |m, _| m.state.busy.load(Relaxed),
        ),
        (
            "stickyroute_member_healthy",
            "gauge",
            "1 when reachable and not in error.",
            |m, now| i64::from(m.is_healthy(now)),
        ),
        (
            "stickyroute_member_loadfactor",
            "gauge",
            "Effective loadfactor.",
            |m, _| i64::from(m.loadfactor()),
        ),
    ];
    for (name, kind, help, read) in families {
        out.family(name, kind, help);
        for m in table.members() {
            out.sample(name, &[("route", m.route.as_str())], read(m, now));
        }
    }
    let responses = "stickyroute_member_responses_total";
    out.family(responses, "counter", "Member responses by status class.");
    for m in table.members() {
        for (class, counter) in STATUS_CLASSES.iter().zip(&m.state.statuses) {
            out.sample(
                responses,
                &[("route", m.route.as_str()), ("class", class)],
                counter.load(Relaxed),
            );
        }
    }
    let failures = "stickyroute_member_failures_total";
    out.family(
        failures,
        "counter",
        "Failed exchanges with the member by kind (connect, timeout, reset, protocol, failonstatus).",
    );
    for m in table.members() {
        for kind in UpstreamFailure::ALL {
            out.sample(
                failures,
                &[("route", m.route.as_str()), ("kind", kind.as_str())],
                m.state.failures[kind as usize].load(Relaxed),
            );
        }
    }
    let head = "stickyroute_member_response_head_seconds";
    out.family(
        head,
        "histogram",
        "From sending a request to the member's response head (time to first byte).",
    );
    for m in table.members() {
        out.histogram(head, &[("route", m.route.as_str())], &m.state.head_time);
    }
    out.family(
        "stickyroute_member_info",
        "gauge",
        "Member address and effective status.",
    );
    for m in table.members() {
        let address = m
            .address
            .map_or_else(|| "unresolved".to_owned(), |a| a.to_string());
        out.sample(
            "stickyroute_member_info",
            &[
                ("route", m.route.as_str()),
                ("key", &m.key.to_string()),
                ("address", &address),
                ("status", m.status().as_str()),
            ],
            1,
        );
    }
}
