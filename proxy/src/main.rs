//! Starts the proxy: configuration, logging, the route map, the live member table, the
//! listeners, then waits for SIGTERM/SIGINT and drains.
#![forbid(unsafe_code)]

use clap::Parser;
use routemap::RouteMap;
use routemap::source::MapLocation;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use stickyroute_proxy::admin::ProxyAdmin;
use stickyroute_proxy::balancer::{Addressing, Balancer, follow};
use stickyroute_proxy::config::{Command, ProxyOptions, Settings};
use stickyroute_proxy::handler::Proxy;
use stickyroute_proxy::health;
use stickyroute_proxy::import_apache;
use stickyroute_proxy::manager::access::Access;
use stickyroute_proxy::manager::agents;
use stickyroute_proxy::manager::hosts::AllowedHosts;
use stickyroute_proxy::metrics::Metrics;
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
    let mut options = ProxyOptions::parse();
    if let Some(Command::ImportApache {
        files,
        rewrite_map,
        balancer,
        out,
        force,
    }) = options.command.take()
    {
        return import_apache(
            &files,
            rewrite_map.as_deref(),
            balancer.as_deref(),
            &out,
            force,
        );
    }
    let check_only = options.check_config;
    let settings = match options.settings(std::env::var("STICKYROUTE_ADMIN_TOKEN").ok()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("stickyroute-proxy: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        return check(&settings);
    }
    if let Err(error) = settings.log.init() {
        eprintln!("stickyroute-proxy: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    run_main(run(settings))
}

/// `import-apache`: writes `routemap` and `proxy.json` into `out`, warnings to stderr.
fn import_apache(
    files: &[PathBuf],
    rewrite_map: Option<&Path>,
    balancer: Option<&str>,
    out: &Path,
    force: bool,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("stickyroute-proxy import-apache: {message}");
        ExitCode::FAILURE
    };
    let mut texts = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => texts.push((file.display().to_string(), text)),
            Err(e) => return fail(format!("{}: {e}", file.display())),
        }
    }
    let inputs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let map_text = match rewrite_map.map(|p| (p, std::fs::read_to_string(p))) {
        Some((p, Err(e))) => return fail(format!("{}: {e}", p.display())),
        Some((p, Ok(t))) => Some((p.display().to_string(), t)),
        None => None,
    };
    let imported = match import_apache::import(
        &inputs,
        map_text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        balancer,
    ) {
        Ok(imported) => imported,
        Err(error) => return fail(error.to_string()),
    };
    let (routemap_path, config_path) = (out.join("routemap"), out.join("proxy.json"));
    if !force && (routemap_path.exists() || config_path.exists()) {
        return fail(format!(
            "{} or {} exists; give --force to overwrite",
            routemap_path.display(),
            config_path.display()
        ));
    }
    let mut config = imported.config;
    let absolute = std::path::absolute(&routemap_path).unwrap_or_else(|_| routemap_path.clone());
    config.insert(
        "routemap".into(),
        serde_json::Value::String(absolute.display().to_string()),
    );
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&routemap_path, &imported.routemap))
        .and_then(|()| {
            std::fs::write(
                &config_path,
                serde_json::to_string_pretty(&config).unwrap_or_default() + "\n",
            )
        });
    if let Err(e) = written {
        return fail(format!("cannot write into {}: {e}", out.display()));
    }
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "wrote {} and {}",
        routemap_path.display(),
        config_path.display()
    );
    println!(
        "run:   stickyroute-proxy --config {}",
        config_path.display()
    );
    if let Some(agent) = imported.agent_hint {
        println!("on each backend, instead of the RewriteRule: {agent}");
    }
    ExitCode::SUCCESS
}

/// `--check-config`: the settings are valid; the route map, if readable, is checked too.
fn check(settings: &Settings) -> ExitCode {
    let origin = settings.routemap.to_string();
    let path = match &settings.routemap {
        MapLocation::File(path) => path,
        MapLocation::ConfigMap(_) => {
            println!(
                "configuration ok; route map {origin} is read through the Kubernetes API at start (check the map itself with `routemap check`)"
            );
            return ExitCode::SUCCESS;
        }
    };
    match routemap::source::read_map_file(path) {
        Ok(bytes) => match RouteMap::load(&origin, &bytes) {
            Ok(map) => println!(
                "configuration ok; route map {origin}: {} members, hash {}",
                map.len(),
                map.hash()
            ),
            Err(error) => {
                for line in error.details() {
                    eprintln!("{line}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Err(error) => println!(
            "configuration ok; route map {origin} not readable here ({error}); it will be followed once it appears"
        ),
    }
    ExitCode::SUCCESS
}

async fn run(settings: Settings) -> anyhow::Result<bool> {
    let open_files = raise_open_file_limit();
    let max_connections = fit_to_descriptors(settings.max_connections, open_files);
    let settings = Arc::new(settings);
    let lifecycle = Arc::new(Lifecycle::default());
    let (live, _source) = start_map(&settings.routemap, settings.routemap_debounce).await?;
    let balancer = Arc::new(Balancer::default());
    tokio::spawn(follow(
        balancer.clone(),
        live.clone(),
        Addressing {
            member_port: settings.member_port,
            domain_suffix: settings.member_domain_suffix.clone(),
            dns_refresh: settings.dns_refresh,
        },
    ));
    // Health checks and agent polling get a pool of their own, on this runtime.
    let probes = Upstreams::new(settings.upstream, lifecycle.tunnels());
    if let Some(check) = settings.health.clone() {
        tokio::spawn(health::run(balancer.clone(), probes.clone(), check));
    }
    if let Some(port) = settings.agent_admin_port {
        tokio::spawn(agents::poll(
            balancer.clone(),
            probes,
            port,
            settings.agent_poll_interval,
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let listeners = workers::bind_for_workers(&settings.listen, settings.workers)?;
    let admin_listener = bind(settings.admin_listen).await?;
    let bound: Vec<String> = listeners[0]
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    tracing::info!(
        listen = %bound.join(","),
        admin = %admin_listener.local_addr()?,
        workers = settings.workers,
        routemap = %settings.routemap,
        stickysession = %settings.sticky.describe(),
        nofailover = settings.nofailover,
        lbmethod = settings.lbmethod.as_str(),
        max_connections,
        open_file_limit = open_files,
        version = env!("CARGO_PKG_VERSION"),
        "stickyroute-proxy started"
    );
    let traffic_stats = Arc::new(ServeStats::default());
    let admin_stats = Arc::new(ServeStats::default());
    let admin = ProxyAdmin {
        settings: settings.clone(),
        balancer: balancer.clone(),
        live,
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        access: Access::new(settings.admin_allow.clone(), settings.admin_tokens.clone()),
        hosts: AllowedHosts::new(settings.admin_hosts.clone()),
        admin_stats: admin_stats.clone(),
        traffic_stats: traffic_stats.clone(),
    };
    let grace = settings.shutdown.grace;
    let admin_task = tokio::spawn(serve(
        admin_listener,
        Arc::new(admin),
        settings.limits,
        Admission::new(ADMIN_MAX_CONNECTIONS, admin_stats),
        lifecycle.admin_stop(),
        grace,
    ));
    // Each worker gets its own member connection pool, on its own event loop.
    let (shared, tunnels, stats) = (settings.clone(), lifecycle.tunnels(), traffic_stats.clone());
    let servers = workers::spawn(
        listeners,
        move |_| {
            Arc::new(Proxy {
                settings: shared.clone(),
                balancer: balancer.clone(),
                upstreams: Upstreams::new(shared.upstream, tunnels.clone()),
                metrics: metrics.clone(),
                stats: stats.clone(),
            })
        },
        settings.limits,
        Admission::new(max_connections, traffic_stats),
        lifecycle.traffic_stop(),
        grace,
    )?;
    Ok(lifecycle
        .run_until_shutdown(settings.shutdown, servers, Some(admin_task))
        .await)
}
