//! The proxy as a library: [`run`] serves with validated settings on listeners bound
//! beforehand, until its controls say stop. `main` only reads the settings, sets up logging,
//! binds and calls it; tests, the demo and the benchmarks call it in-process the same way.

use crate::admin::ProxyAdmin;
use crate::balancer::{Addressing, Balancer, Names, follow};
use crate::config::OverridesAt;
use crate::config::{self, ProxyOptions, Settings};
use crate::handler::Proxy;
use crate::health;
use crate::manager::access::Nonce;
use crate::manager::agents;
use crate::metrics::Metrics;
use crate::overrides::file_store::FileStore;
use crate::overrides::store::Store;
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
use stickyroute_relay::settings::{Changes, Layered, SettingsError};
use stickyroute_relay::tls::TlsServer;
use stickyroute_relay::upstream::forward::Upstreams;

/// The variable holding balancer-manager tokens (`NAME:SECRET`, comma-separated): a secret,
/// so never a flag.
pub const ADMIN_TOKEN_ENV: &str = "STICKYROUTE_ADMIN_TOKEN";

/// Reads and validates the settings from `argv` (program name first), the config file it
/// names and the environment, tokens included.
pub fn settings(argv: &[std::ffi::OsString]) -> Result<Settings, SettingsError> {
    let layered = config::read(argv)?;
    Settings::new(layered, std::env::var(ADMIN_TOKEN_ENV).ok())
}

/// Serves until a shutdown control, then drains. Returns whether everything finished
/// within the grace period.
pub async fn run(
    settings: Settings,
    mut listeners: Listeners,
    controls: Controls,
) -> anyhow::Result<bool> {
    // The certificates first: a proxy that cannot serve TLS as configured does not start.
    let tls = match &settings.tls {
        Some(config) => {
            let server = Arc::new(config.load(&settings.source)?);
            if listeners.tls_addrs().is_empty() {
                listeners.bind_tls(&config.listen)?;
            }
            Some(server)
        }
        None => None,
    };
    let tls_bound = listeners.tls_addrs();
    // Redirects name the configured port, else the first TLS listener's as bound (a test
    // binds port 0).
    let https_redirect = settings
        .https_redirect
        .then(|| {
            settings
                .https_redirect_port
                .or_else(|| tls_bound.first().map(|a| a.port()))
        })
        .flatten();
    let access_log = match &settings.access_log {
        Some(config) => Some(config.open()?),
        None => None,
    };
    let follower = tls
        .as_ref()
        .map(|tls| tokio::spawn(tls.follow(settings.routemap_debounce)));
    let open_files = raise_open_file_limit();
    let max_connections = fit_to_descriptors(settings.max_connections, open_files);
    let settings = Arc::new(settings);
    let lifecycle = Arc::new(Lifecycle::default());
    let map = start_map(&settings.routemap, settings.routemap_debounce).await?;
    let (balancer, overrides_store) = match open_overrides(&settings).await? {
        None => (Arc::new(Balancer::default()), None),
        Some(store) => (Arc::new(Balancer::with_shared_overrides()), Some(store)),
    };
    if let Some(store) = &overrides_store {
        follow_overrides(store, &balancer, &settings).await?;
    }
    tokio::spawn(follow(
        balancer.clone(),
        map.live.clone(),
        Addressing {
            member_port: settings.member_port,
            names: names(&settings).await?,
        },
    ));
    tokio::spawn(crate::manager::rates::sample(balancer.clone()));
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
    let bound: Vec<String> = listeners
        .traffic_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let tls_lists = listeners.take_tls();
    let (traffic, admin_listener) = listeners.into_parts()?;
    {
        let routing = settings.routing.load();
        tracing::info!(
            listen = %bound.join(","),
            tls_listen = %tls_bound.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            admin = %admin_listener.local_addr()?,
            workers = settings.workers,
            routemap = %settings.routemap,
            stickysession = %routing.sticky.describe(),
            nofailover = routing.nofailover,
            lbmethod = routing.lbmethod.as_str(),
            max_connections,
            open_file_limit = open_files,
            version = env!("CARGO_PKG_VERSION"),
            "stickyroute-proxy started"
        );
    }
    let replicas = start_replicas(
        &settings,
        overrides_store.as_ref(),
        admin_listener.local_addr()?,
        Upstreams::new(settings.upstream, lifecycle.tunnels()),
    )
    .await?;
    let traffic_stats = Arc::new(ServeStats::default());
    let admin_stats = Arc::new(ServeStats::default());
    let admin = ProxyAdmin {
        settings: settings.clone(),
        balancer: balancer.clone(),
        live: map.live.clone(),
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        nonce: Nonce::random(),
        admin_stats: admin_stats.clone(),
        traffic_stats: traffic_stats.clone(),
        tls: tls.clone(),
        access_log: access_log.clone(),
        overrides_store,
        replicas: replicas.list.clone(),
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
    let log = access_log.clone();
    let servers = workers::spawn_with_tls(
        traffic,
        tls.clone().map(|tls| (tls_lists, tls)),
        move |_| {
            Arc::new(Proxy {
                settings: shared.clone(),
                balancer: balancer.clone(),
                upstreams: Upstreams::new(shared.upstream, tunnels.clone()),
                metrics: metrics.clone(),
                stats: stats.clone(),
                https_redirect,
                access_log: log.clone(),
            })
        },
        settings.limits,
        Admission::new(max_connections, traffic_stats),
        lifecycle.traffic_stop(),
        grace,
    )?;
    let mut last_read = settings.source.clone();
    let drained = lifecycle
        .run_until_shutdown(
            settings.shutdown,
            servers,
            Some(admin_task),
            controls,
            || reload(&settings, &map, tls.as_deref(), &mut last_read),
        )
        .await;
    if let Some(follower) = follower {
        follower.abort();
    }
    replicas.leave().await;
    if let Some(log) = access_log {
        // The writer thread's last batch is written on the caller's thread's time: off
        // the runtime, as it blocks.
        tokio::task::spawn_blocking(move || log.close()).await?;
    }
    Ok(drained)
}

/// SIGHUP: the map and the TLS certificate files are read again, and so are the
/// configuration and the token file; the routing, balancer-manager access and log level
/// settings are applied at once, and any other change is logged as needing a restart. An
/// invalid configuration changes nothing.
fn reload(
    running: &Settings,
    map: &FollowedMap,
    tls: Option<&TlsServer>,
    last_read: &mut Layered<ProxyOptions>,
) {
    tracing::info!(routemap = %running.routemap, "reload: reading the route map and the configuration again");
    map.reread();
    if let Some(tls) = tls {
        tls.reread();
    }
    // The token variable as the process was given it (see `TokenVariable`).
    let read = match config::read(&running.source.argv)
        .and_then(|layered| Settings::with_token(layered, running.admin_token.clone()))
    {
        Ok(read) => read,
        Err(error) => {
            tracing::error!("reload: invalid configuration, nothing changed: {error}");
            return;
        }
    };
    let live = config::reloadable();
    let mut changes = Changes::on_reload(&running.source, last_read, &read.source, &live);
    let access = read.access.load_full();
    let token_file = "admin_token_file".to_owned();
    if !running.access.load().access.same_tokens(&access.access)
        && !changes.applied.contains(&token_file)
    {
        // The same file, with other tokens in it.
        changes.applied.push(token_file);
        changes.applied.sort();
    }
    running.routing.store(read.routing.load_full());
    running.access.store(access);
    // Before the report, so that it and every line after it are at the new level.
    if let Err(error) = logging::set_filter(&read.log_level) {
        tracing::warn!("reload: {error}");
    }
    changes.log(&read.source);
    *last_read = read.source;
}

/// The store `--overrides-file` or `--overrides-configmap` name, if any.
async fn open_overrides(settings: &Settings) -> anyhow::Result<Option<Store>> {
    Ok(match &settings.overrides {
        None => None,
        Some(OverridesAt::File(path)) => Some(Store::File(Arc::new(FileStore::new(path.clone())))),
        #[cfg(feature = "kubernetes")]
        Some(OverridesAt::ConfigMap(target)) => Some(Store::ConfigMap(Arc::new(
            crate::overrides::configmap_store::ConfigMapStore::new(
                routemap::source::kube_client().await?,
                target,
            ),
        ))),
        #[cfg(not(feature = "kubernetes"))]
        Some(OverridesAt::ConfigMap(_)) => {
            return Err(routemap::source::StartError::NoKubernetes.into());
        }
    })
}

/// Starts following the store. The file is read once first, so that no request is routed
/// without its overrides (a drained member taking new sessions); there is no last good set
/// to keep yet, so a bad file stops the start. The ConfigMap's first list is waited for
/// the same way, for a while: an API that does not answer must not keep the proxy down.
async fn follow_overrides(
    store: &Store,
    balancer: &Arc<Balancer>,
    settings: &Settings,
) -> anyhow::Result<()> {
    match store {
        Store::File(file) => {
            let set = file
                .read()
                .map_err(|e| anyhow::anyhow!("--overrides-file: {e}"))?;
            tracing::info!(store = %file.path().display(), version = set.version, overrides = set.overrides.len(), "overrides read");
            balancer.set_overrides(set);
            tokio::spawn(file.clone().follow(
                balancer.clone(),
                routemap::source::FileWatchOptions {
                    debounce: settings.routemap_debounce,
                    ..Default::default()
                },
            ));
        }
        #[cfg(feature = "kubernetes")]
        Store::ConfigMap(configmap) => {
            let first = configmap.first_read();
            tokio::spawn(configmap.clone().follow(balancer.clone()));
            if tokio::time::timeout(OVERRIDES_FIRST_READ, first)
                .await
                .is_err()
            {
                tracing::warn!(store = %configmap.status().location, "overrides not read within {OVERRIDES_FIRST_READ:?}; starting without them, they apply when read");
            }
        }
    }
    Ok(())
}

/// The replicas' list and poller, and this proxy's entry in the file store's registry.
struct StartedReplicas {
    list: Arc<crate::replicas::Replicas>,
    registered: Option<(Arc<FileStore>, crate::replicas::registry::Me)>,
}

impl StartedReplicas {
    /// Removes this proxy's registry entry, so the others stop listing it; at most
    /// [`LEAVE_TIMEOUT`], so a hung shared volume does not hold the exit.
    async fn leave(self) {
        if let Some((store, me)) = self.registered {
            let removed = tokio::time::timeout(
                LEAVE_TIMEOUT,
                tokio::task::spawn_blocking(move || crate::replicas::registry::leave(&store, &me)),
            )
            .await;
            match removed {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!("could not remove this proxy from the replica registry: {error}")
                }
                Ok(Err(error)) => {
                    tracing::warn!("removing this proxy from the replica registry: {error}")
                }
                Err(_) => tracing::warn!(
                    "the replica registry did not answer within {LEAVE_TIMEOUT:?}; the others drop this proxy's entry when it grows stale"
                ),
            }
        }
    }
}

/// How long the exit waits to remove this proxy from the replica registry.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where this balancer's replicas are listed (`--proxy-service`, else the overrides file's
/// registry, where this proxy registers), and their poller.
async fn start_replicas(
    settings: &Settings,
    store: Option<&Store>,
    admin: std::net::SocketAddr,
    upstreams: Upstreams,
) -> anyhow::Result<StartedReplicas> {
    use crate::replicas::{Replicas, poll, registry};
    let file = match store {
        Some(Store::File(file)) => Some(file.clone()),
        _ => None,
    };
    let (source, peers, registered) = match (&settings.proxy_service, file) {
        #[cfg(feature = "kubernetes")]
        (Some(service), _) => {
            let endpoints = crate::membership::endpoint_slices::start(service.clone()).await?;
            let peers = poll::Peers::Service {
                endpoints,
                admin_port: admin.port(),
            };
            (Some(service.to_string()), Some(peers), None)
        }
        #[cfg(not(feature = "kubernetes"))]
        (Some(_), _) => return Err(routemap::source::StartError::NoKubernetes.into()),
        (None, Some(file)) => (
            Some(format!("file:{}", registry::path_of(&file).display())),
            None,
            Some(file),
        ),
        (None, None) => (None, None, None),
    };
    let list = Arc::new(Replicas::new(source));
    let (peers, registered) = match (peers, registered) {
        (Some(peers), _) => (Some(peers), None),
        (None, Some(file)) => {
            // The first heartbeat before serving, so the others list this proxy at once. A
            // registry that cannot be written leaves it off their lists, nothing more:
            // changes, which fail the same way, say so where they are made.
            let me = registry::Me::new(admin, list.instance());
            let (writing, first) = (file.clone(), me.clone());
            let written =
                tokio::task::spawn_blocking(move || registry::heartbeat(&writing, &first)).await?;
            if let Err(error) = &written {
                tracing::warn!("this proxy is not listed among the replicas yet: {error}");
            }
            (
                Some(poll::Peers::file(file.clone(), me.clone())),
                Some((file, me)),
            )
        }
        (None, None) => (None, None),
    };
    if let Some(peers) = peers {
        tokio::spawn(poll::poll(list.clone(), peers, upstreams));
    }
    Ok(StartedReplicas { list, registered })
}

/// How long the start waits for the overrides ConfigMap's first read.
#[cfg(feature = "kubernetes")]
const OVERRIDES_FIRST_READ: std::time::Duration = std::time::Duration::from_secs(5);

/// Where name keys' addresses come from: the `--member-service` EndpointSlices, else DNS.
async fn names(settings: &Settings) -> Result<Names, routemap::source::StartError> {
    match &settings.member_service {
        None => Ok(Names::Dns {
            suffix: settings.member_domain_suffix.clone(),
            refresh: settings.dns_refresh,
        }),
        #[cfg(feature = "kubernetes")]
        Some(service) => {
            tracing::info!(%service, "member addresses come from the Service's EndpointSlices");
            Ok(Names::EndpointSlices(
                crate::membership::endpoint_slices::start(service.clone()).await?,
            ))
        }
        #[cfg(not(feature = "kubernetes"))]
        Some(_) => Err(routemap::source::StartError::NoKubernetes),
    }
}
