//! The agent as a library: [`run`] serves with validated settings on listeners bound
//! beforehand, until its controls say stop. `main` only reads the settings, sets up logging,
//! binds and calls it; tests, the demo and the benchmarks call it in-process the same way.

use crate::admin::AgentAdmin;
use crate::config::{self, AgentOptions, Settings, host_name};
use crate::handler::{Agent, AgentShared};
use crate::metrics::Metrics;
use std::sync::Arc;
use stickyroute_relay::map::{FollowedMap, start_map};
use stickyroute_relay::process::lifecycle::{Controls, Lifecycle};
use stickyroute_relay::process::{logging, workers};
use stickyroute_relay::serve::admission::{
    ADMIN_MAX_CONNECTIONS, Admission, fit_to_descriptors, raise_open_file_limit,
};
use stickyroute_relay::serve::listeners::Listeners;
use stickyroute_relay::serve::serve;
use stickyroute_relay::serve::stats::ServeStats;
use stickyroute_relay::settings::{Changes, Layered};
use stickyroute_relay::upstream::forward::Upstreams;

/// Serves until a shutdown control, then drains. Returns whether everything finished
/// within the grace period.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    controls: Controls,
) -> anyhow::Result<bool> {
    let open_files = raise_open_file_limit();
    let max_connections = fit_to_descriptors(settings.max_connections, open_files);
    let lifecycle = Arc::new(Lifecycle::default());
    let map = start_map(&settings.routemap, settings.routemap_debounce).await?;
    let bound = listeners.traffic_addrs();
    let (traffic, admin_listener) = listeners.into_parts()?;
    tracing::info!(
        listen = %bound.first().map(ToString::to_string).unwrap_or_default(),
        upstream = %settings.upstream,
        admin = %admin_listener.local_addr()?,
        workers = settings.workers,
        routemap = %settings.routemap,
        max_connections,
        open_file_limit = open_files,
        version = env!("CARGO_PKG_VERSION"),
        "stickyroute-agent started"
    );
    let traffic_stats = Arc::new(ServeStats::default());
    let admin_stats = Arc::new(ServeStats::default());
    let (timeouts, limits, timing) = (settings.timeouts, settings.limits, settings.shutdown);
    // Every worker has its own connection pool to the app; the settings, the map and the
    // counters are shared, so /status and /metrics see all of them.
    let metrics = Arc::new(Metrics::default());
    let access_log = match &settings.access_log {
        Some(config) => Some(config.open()?),
        None => None,
    };
    let app_check = settings.app_check.clone();
    let upstream = settings.upstream.clone();
    let shared = Arc::new(AgentShared::new(
        settings,
        map.live.clone(),
        access_log.clone(),
    ));
    if let Some(check) = app_check {
        // A pool of its own on this runtime, as the proxy's health checks have.
        let probes = Upstreams::new(timeouts, lifecycle.tunnels());
        tokio::spawn(crate::app_health::run(
            shared.app.clone(),
            probes,
            upstream,
            check,
        ));
    }
    let admin = AgentAdmin {
        agent: Arc::new(Agent::new(
            shared.clone(),
            Upstreams::new(timeouts, lifecycle.tunnels()),
            metrics.clone(),
            traffic_stats.clone(),
        )),
        lifecycle: lifecycle.clone(),
        admin_stats: admin_stats.clone(),
    };
    let admin_task = tokio::spawn(serve(
        admin_listener,
        Arc::new(admin),
        limits,
        Admission::new(ADMIN_MAX_CONNECTIONS, admin_stats),
        lifecycle.admin_stop(),
        timing.grace,
    ));
    let (workers_shared, tunnels, stats) =
        (shared.clone(), lifecycle.tunnels(), traffic_stats.clone());
    let servers = workers::spawn(
        traffic,
        move |_| {
            Arc::new(Agent::new(
                workers_shared.clone(),
                Upstreams::new(timeouts, tunnels.clone()),
                metrics.clone(),
                stats.clone(),
            ))
        },
        limits,
        Admission::new(max_connections, traffic_stats),
        lifecycle.traffic_stop(),
        timing.grace,
    )?;
    let mut last_read = shared.settings.source.clone();
    let drain_shared = shared.clone();
    let drained = lifecycle
        .run_until_drained(
            timing,
            servers,
            Some(admin_task),
            controls,
            || reload(&shared.settings, &map, &mut last_read),
            // Serving its sessions until they go quiet, and at least the drain delay.
            |signal| async move {
                drain_shared
                    .drain
                    .until_done(signal, timing.drain_delay)
                    .await;
            },
        )
        .await;
    if let Some(log) = access_log {
        tokio::task::spawn_blocking(move || log.close()).await?;
    }
    Ok(drained)
}

/// SIGHUP: the map is read again, and so is the configuration; the cookie settings and the
/// log level are applied at once, and any other change is logged as needing a restart. An
/// invalid configuration changes nothing.
fn reload(running: &Settings, map: &FollowedMap, last_read: &mut Layered<AgentOptions>) {
    tracing::info!(routemap = %running.routemap, "reload: reading the route map and the configuration again");
    map.reread();
    let read = match Settings::read(&running.source.argv, host_name()) {
        Ok(read) => read,
        Err(error) => {
            tracing::error!("reload: invalid configuration, nothing changed: {error}");
            return;
        }
    };
    let live = config::reloadable();
    let changes = Changes::on_reload(&running.source, last_read, &read.source, &live);
    running.policy.store(read.policy.load_full());
    // Before the report, so that it and every line after it are at the new level.
    if let Err(error) = logging::set_filter(&read.log_level) {
        tracing::warn!("reload: {error}");
    }
    changes.log(&read.source);
    *last_read = read.source;
}
