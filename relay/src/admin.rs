//! What the agent's and the proxy's admin listeners answer the same way.

use crate::body::{self, Body};
use crate::metrics::PromText;
use crate::serve::stats::ServeStats;
use http::{Response, StatusCode};
use routemap::MapStatus;
use std::time::UNIX_EPOCH;

/// `/healthz`: the process is alive. Never depends on the map or the API server, so an
/// outage of either cannot turn into a restart storm.
pub fn healthz() -> Response<Body> {
    body::text(StatusCode::OK, "ok\n")
}

/// `/readyz`: 200 when there is nothing in `problems`, else 503 listing them.
pub fn readyz(problems: &[&str]) -> Response<Body> {
    if problems.is_empty() {
        body::text(StatusCode::OK, "ready\n")
    } else {
        body::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

pub fn metrics(text: PromText) -> Response<Body> {
    body::with_type(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text.finish().into(),
    )
}

pub fn not_found() -> Response<Body> {
    body::text(StatusCode::NOT_FOUND, "not found\n")
}

/// The route map's state as metrics, named alike in both binaries.
pub fn map_metrics(out: &mut PromText, status: &MapStatus) {
    out.single(
        "stickyroute_map_loaded",
        "gauge",
        "1 once a valid route map is loaded.",
        u8::from(status.hash.is_some()),
    );
    out.single(
        "stickyroute_map_generation",
        "gauge",
        "Generation of the route map in use (+1 per published change).",
        status.generation,
    );
    out.single(
        "stickyroute_map_entries",
        "gauge",
        "Entries in the route map in use.",
        status.entries,
    );
    out.single(
        "stickyroute_map_reload_errors_total",
        "counter",
        "Failed attempts to load the route map (the last good map kept serving).",
        status.reload_errors,
    );
    out.single(
        "stickyroute_map_last_error",
        "gauge",
        "1 while the most recent load attempt failed.",
        u8::from(status.last_error.is_some()),
    );
    if let Some(at) = status
        .loaded_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        out.single(
            "stickyroute_map_loaded_timestamp_seconds",
            "gauge",
            "When the route map in use was loaded.",
            at.as_secs(),
        );
    }
    if let Some(hash) = &status.hash {
        out.family(
            "stickyroute_map_info",
            "gauge",
            "The route map in use, by content hash.",
        )
        .sample(
            "stickyroute_map_info",
            &[("hash", hash), ("source", &status.source)],
            1,
        );
    }
}

/// The traffic and admin listeners' connection counters, as both binaries export them.
pub fn serve_metrics(out: &mut PromText, traffic: &ServeStats, admin: &ServeStats) {
    ServeStats::render_all(out, &[("traffic", traffic), ("admin", admin)]);
}
