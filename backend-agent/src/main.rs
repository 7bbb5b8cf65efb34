//! Starts the agent: configuration, logging, the route map, the listeners, then waits for
//! SIGTERM/SIGINT and drains.
#![forbid(unsafe_code)]

use clap::Parser;
use routemap::source::MapLocation;
use std::process::ExitCode;
use std::sync::Arc;
use stickyroute_agent::admin::AgentAdmin;
use stickyroute_agent::config::Settings;
use stickyroute_agent::config::{AgentArgs, host_name};
use stickyroute_agent::handler::{Agent, AgentShared};
use stickyroute_agent::metrics::Metrics;
use stickyroute_relay::cli::start_map;
use stickyroute_relay::forward::Upstreams;
use stickyroute_relay::lifecycle::{EXIT_CONFIG, Lifecycle, run_main};
use stickyroute_relay::serve::admission::{
    ADMIN_MAX_CONNECTIONS, Admission, fit_to_descriptors, raise_open_file_limit,
};
use stickyroute_relay::serve::stats::ServeStats;
use stickyroute_relay::serve::{bind, serve};
use stickyroute_relay::workers;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    if let Err(error) = args.log.init() {
        eprintln!("stickyroute-agent: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let settings = match args.settings(host_name()) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!("invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let location = match args.map.location() {
        Ok(location) => location,
        Err(error) => {
            tracing::error!("invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    run_main(run(args, settings, location))
}

async fn run(args: AgentArgs, settings: Settings, location: MapLocation) -> anyhow::Result<bool> {
    let open_files = raise_open_file_limit();
    let wanted = args
        .client_limits
        .max_connections
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let max_connections = fit_to_descriptors(wanted, open_files);
    let lifecycle = Arc::new(Lifecycle::default());
    let (live, _source) = start_map(&location, args.map.routemap_debounce).await?;
    let workers = args
        .workers
        .filter(|n| *n > 0)
        .unwrap_or_else(workers::default_count);
    let listeners = workers::bind_for_workers(&[args.listen], workers)?;
    let admin_listener = bind(args.admin_listen).await?;
    tracing::info!(
        listen = %listeners[0][0].local_addr()?,
        upstream = %settings.upstream,
        admin = %admin_listener.local_addr()?,
        workers,
        routemap = %location,
        max_connections,
        open_file_limit = open_files,
        version = env!("CARGO_PKG_VERSION"),
        "stickyroute-agent started"
    );
    let traffic_stats = Arc::new(ServeStats::default());
    let admin_stats = Arc::new(ServeStats::default());
    // Every worker has its own connection pool to the app; the settings, the map and the
    // counters are shared, so /status and /metrics see all of them.
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(AgentShared::new(settings, live));
    let timeouts = args.upstream_limits.timeouts();
    let limits = args.client_limits.limits(timeouts.inactivity);
    let grace = args.shutdown.grace_period;
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
        grace,
    ));
    let (tunnels, stats) = (lifecycle.tunnels(), traffic_stats.clone());
    let servers = workers::spawn(
        listeners,
        move |_| {
            Arc::new(Agent::new(
                shared.clone(),
                Upstreams::new(timeouts, tunnels.clone()),
                metrics.clone(),
                stats.clone(),
            ))
        },
        limits,
        Admission::new(max_connections, traffic_stats),
        lifecycle.traffic_stop(),
        grace,
    )?;
    Ok(lifecycle
        .run_until_shutdown(args.shutdown.timing(), servers, Some(admin_task))
        .await)
}
