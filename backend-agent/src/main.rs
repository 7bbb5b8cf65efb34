//! Starts the agent: configuration, logging, the route map, the listeners, then waits for
//! SIGTERM/SIGINT and drains.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use stickyroute_agent::admin::AgentAdmin;
use stickyroute_agent::config::{AgentArgs, host_name};
use stickyroute_agent::handler::Agent;
use stickyroute_agent::metrics::Metrics;
use stickyroute_relay::forward::Upstreams;
use stickyroute_relay::lifecycle::Lifecycle;
use stickyroute_relay::serve::{bind, serve};

/// sysexits' EX_USAGE: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 64;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: AgentArgs,
    settings: stickyroute_agent::config::Settings,
) -> anyhow::Result<bool> {
    let lifecycle = Arc::new(Lifecycle::default());
    let (live, _source) = args.map.start();
    let traffic = bind(args.listen).await?;
    let admin_listener = bind(args.admin_listen).await?;
    let upstreams = Upstreams::new(args.upstream_limits.timeouts(), lifecycle.tunnels());
    let agent = Arc::new(Agent::new(
        settings,
        live,
        upstreams,
        Arc::new(Metrics::default()),
    ));
    tracing::info!(
        listen = %traffic.local_addr()?,
        upstream = %agent.settings.upstream,
        admin = %admin_listener.local_addr()?,
        routemap = %args.map.routemap.display(),
        version = env!("CARGO_PKG_VERSION"),
        "stickyroute-agent started"
    );
    let limits = args.client_limits.limits();
    let grace = args.shutdown.grace_period;
    let admin = AgentAdmin {
        agent: agent.clone(),
        lifecycle: lifecycle.clone(),
    };
    let admin_task = tokio::spawn(serve(
        admin_listener,
        Arc::new(admin),
        limits,
        lifecycle.admin_stop(),
        grace,
    ));
    let traffic_task = tokio::spawn(serve(
        traffic,
        agent,
        limits,
        lifecycle.traffic_stop(),
        grace,
    ));
    Ok(lifecycle
        .run_until_shutdown(args.shutdown.timing(), vec![traffic_task], Some(admin_task))
        .await)
}
