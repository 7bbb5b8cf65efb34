//! The proxy's options: each declared once, here or in the shared groups of
//! [`stickyroute_relay::settings::shared`], with its flag, help text and default constant.
//! Its environment variable (`STICKYROUTE_` and the key in capitals) and its config-file key
//! (the flag's name with `_` for `-`) follow from the flag, and the layering rule (defaults <
//! config file < environment < flags) is [`stickyroute_relay::settings::load`]'s. Whether a
//! reload can change a setting is which group it is in: [`RoutingOptions`],
//! [`AccessOptions`] and the log level ([`LogLevelOptions`]) are applied on SIGHUP (see
//! [`reloadable`]), everything else needs a restart.

use clap::{Args, Parser, ValueEnum};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use stickyroute_relay::settings::shared::{
    AGENT_PORT, AccessLogOptions, AdminOptions, ClientLimitOptions, LogFormatOptions,
    LogLevelOptions, MapOptions, ShutdownOptions, UpstreamOptions, WorkerOptions,
};
use stickyroute_relay::settings::{Span, keys_of};

pub const LISTEN: &str = "0.0.0.0:8080";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9900";
pub const MEMBER_PORT: u16 = AGENT_PORT;
pub const STICKYSESSION: &str = "balanceid";
pub const RETRY: Span = Span::from_secs(60);
pub const HEALTH_INTERVAL: Span = Span::from_secs(5);
pub const HEALTH_TIMEOUT: Span = Span::from_secs(2);
pub const HEALTH_RISE: u32 = 2;
pub const HEALTH_FALL: u32 = 3;
pub const DNS_REFRESH: Span = Span::from_secs(30);
pub const AGENT_POLL_INTERVAL: Span = Span::from_secs(10);
pub const TLS_HANDSHAKE_TIMEOUT: Span = Span::from_secs(10);

/// How new sessions are spread over members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMethod {
    /// Apache's weighted request counting: over any window of sum(loadfactor) picks each
    /// member gets exactly its share.
    Byrequests,
    /// The member with the fewest requests in flight (weighted ties), for uneven request costs.
    Bybusyness,
}

/// What a sticky route that no member has gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownRoute {
    /// A weighted pick, as Apache does (the agent there then issues its own route).
    Balance,
    /// 503: for setups where landing on the wrong member is worse than an error.
    Reject,
}

/// The sticky load balancer: routes each request by the route suffix of its sticky cookie
/// (`balanceid=route.www1` → member www1), balances new sessions by loadfactor, and follows
/// the route map live, with no restart.
///
/// Every option can also be set in the config file (`--config`; the key is the option's
/// name with `_` for `-`) or in its environment variable; flags win over the environment,
/// which wins over the file. SIGHUP re-reads the route map, the config file and the token
/// file and applies the options under the headings marked "applied on reload"; the others
/// need a restart.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stickyroute-proxy",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct ProxyOptions {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A JSON config file of settings (keys spelled like the flags, `_` for `-`); the
    /// environment and flags override it.
    #[arg(long, env = "STICKYROUTE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration (and the route map) and exit: 0 when valid, 64 otherwise.
    #[arg(long)]
    pub check_config: bool,

    /// Address to accept client traffic on; repeatable.
    #[arg(long, value_delimiter = ',', default_value = LISTEN, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    #[command(flatten)]
    pub map: MapOptions,
    #[command(flatten)]
    pub members: MemberOptions,
    #[command(flatten)]
    pub health: HealthOptions,
    #[command(flatten)]
    pub workers: WorkerOptions,
    #[command(flatten)]
    pub upstream: UpstreamOptions,
    #[command(flatten)]
    pub limits: ClientLimitOptions,
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(flatten)]
    pub manager: ManagerOptions,
    #[command(flatten)]
    pub log_format: LogFormatOptions,
    #[command(flatten)]
    pub access_log: AccessLogOptions,
    #[command(flatten)]
    pub shutdown: ShutdownOptions,
    #[command(flatten)]
    pub tls: TlsOptions,
    // The groups a reload applies, last: each one's help heading carries over to the
    // groups after it.
    #[command(flatten)]
    pub routing: RoutingOptions,
    #[command(flatten)]
    pub access: AccessOptions,
    #[command(flatten)]
    pub log_level: LogLevelOptions,
}

/// The config-file keys of the settings a reload applies: those of the groups whose
/// values are read where they are used (every request, every log line) rather than built
/// into what runs.
pub fn reloadable() -> BTreeSet<String> {
    let mut keys = keys_of::<RoutingOptions>();
    keys.extend(keys_of::<AccessOptions>());
    keys.extend(keys_of::<LogLevelOptions>());
    keys
}

/// TLS termination: the listeners are bound and the configuration built once, so these
/// need a restart; the certificate files' contents are followed live (and read again on
/// reload).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsOptions {
    /// Address to accept TLS client traffic on; repeatable. Needs --tls-cert and --tls-key.
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// A PEM certificate file (the server's certificate first, then its chain);
    /// repeatable, each paired with the --tls-key in the same position. The certificate
    /// for a connection is picked by SNI from each certificate's DNS names; the first pair
    /// is the default. Followed live: a renewed file is served without a restart.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Vec<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of the --tls-cert in the same
    /// position; repeatable.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Vec<PathBuf>,
    /// Time a client has after connecting to complete its TLS handshake.
    #[arg(long, default_value_t = TLS_HANDSHAKE_TIMEOUT, value_name = "DURATION")]
    pub tls_handshake_timeout: Span,
    /// Answer every request on the plain --listen addresses with a 308 redirect to the
    /// same URL on https (the first --tls-listen's port, or --https-redirect-port). The
    /// admin listener never redirects.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub https_redirect: bool,
    /// The port clients reach the TLS listener on, for --https-redirect, when it is not the
    /// listener's own (a Service or load balancer forwarding 443 to 8443, say). Default: the
    /// first --tls-listen's port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub https_redirect_port: Option<u16>,
}

/// How map entries become member addresses.
#[derive(Debug, Clone, Args)]
pub struct MemberOptions {
    /// Port of members whose map entry has no `port=`: the agent's default listen port.
    #[arg(long, default_value_t = MEMBER_PORT, value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub member_port: u16,
    /// Appended to name keys before they are resolved, so a map keyed by StatefulSet pod
    /// names (`web-0`) reaches the pods through their headless Service:
    /// `.web.NAMESPACE.svc.cluster.local`. Default none.
    #[arg(long, value_name = "SUFFIX")]
    pub member_domain_suffix: Option<String>,
    /// How often member host names are resolved again (also on every map change).
    #[arg(long, default_value_t = DNS_REFRESH, value_name = "DURATION")]
    pub dns_refresh: Span,
    /// Take name keys' addresses from this Service's EndpointSlices, watched through the
    /// Kubernetes API, instead of DNS: a key is a pod name (or endpoint hostname). A pod
    /// that comes back with a new address is routed at once, and one that is terminating
    /// but still serving keeps its sessions and gets no new ones. Needs get, list and watch
    /// on endpointslices in that namespace.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub member_service: Option<String>,
}

/// How requests are routed: read for every request, so a reload (SIGHUP) applies them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Routing (applied on reload)")]
pub struct RoutingOptions {
    /// The sticky cookie, or COOKIE|PARAM to also read a `;PARAM=` path parameter or
    /// `?PARAM=` query parameter, which wins over the cookie (as Apache's stickysession).
    #[arg(long, default_value = STICKYSESSION, value_name = "COOKIE[|PARAM]")]
    pub stickysession: String,
    /// A request header carrying a sticky value in the same format, for API and WebSocket
    /// clients that drop cookies. Off by default.
    #[arg(long, value_name = "NAME")]
    pub affinity_header: Option<String>,
    /// When a session's member is down or disabled, answer 503 (with Retry-After) instead of
    /// sending the user to a member that does not know the session.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub nofailover: bool,
    /// With --nofailover: once a session's member has been unusable for this long, its
    /// sessions go to a weighted pick after all (the new member's agent gives them its
    /// route). Before that, they get 503 with Retry-After set to the time left, so a member
    /// that restarts keeps its users. Default: never.
    #[arg(long, value_name = "DURATION")]
    pub failover_after: Option<Span>,
    /// What a sticky route that no member has gets: a weighted pick (Apache's behaviour) or
    /// a 503.
    #[arg(long, value_enum, default_value_t = UnknownRoute::Balance)]
    pub unknown_route: UnknownRoute,
    /// How new sessions are balanced.
    #[arg(long, value_enum, default_value_t = LbMethod::Byrequests)]
    pub lbmethod: LbMethod,
    /// How long a member that failed stays in error before real traffic tries it again
    /// (Apache's retry).
    #[arg(long, default_value_t = RETRY, value_name = "DURATION")]
    pub retry: Span,
    /// Response statuses that put a member in error (the response is still passed on),
    /// e.g. 503 or 500,503. Off by default.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(100..600), value_name = "CODES")]
    pub failonstatus: Vec<u16>,
    /// A proxy or load balancer in front whose X-Forwarded-For, -Proto and -Host are
    /// believed: an address or CIDR block; repeatable. From it, X-Forwarded-For is appended
    /// to and -Proto/-Host are kept; from any other peer all three are replaced. Default none.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxy: Vec<String>,
    /// Connections from a --trusted-proxy peer must start with a PROXY protocol header (v1
    /// or v2, as HAProxy and cloud L4 load balancers send it): its client address is then
    /// the connection's. Connections from other peers are served as they are, so a client
    /// cannot claim an address. Needs --trusted-proxy.
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// Active health checks, on when `--health-path` is given.
#[derive(Debug, Clone, Args)]
pub struct HealthOptions {
    /// Enables active health checks: GET this path on every member.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Interval between active checks.
    #[arg(long, default_value_t = HEALTH_INTERVAL, value_name = "DURATION")]
    pub health_interval: Span,
    /// Timeout of one active check.
    #[arg(long, default_value_t = HEALTH_TIMEOUT, value_name = "DURATION")]
    pub health_timeout: Span,
    /// Consecutive passing checks that bring a member back.
    #[arg(long, default_value_t = HEALTH_RISE, value_parser = clap::value_parser!(u32).range(1..), value_name = "COUNT")]
    pub health_rise: u32,
    /// Consecutive failing checks that take a member out.
    #[arg(long, default_value_t = HEALTH_FALL, value_parser = clap::value_parser!(u32).range(1..), value_name = "COUNT")]
    pub health_fall: u32,
}

/// Who may use the balancer-manager: checked on every request to it, so a reload (SIGHUP)
/// applies them, as `systemctl reload` applies Apache's `Require ip` or nginx's `allow`.
/// The token file is read again on every reload too.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Balancer-manager access (applied on reload)")]
pub struct AccessOptions {
    /// Who may use /balancer-manager: an address or CIDR block; repeatable. Default
    /// loopback only. (/healthz, /readyz, /metrics and /status are not restricted.)
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub admin_allow: Vec<String>,
    /// A name the balancer-manager may be reached by (a Service name, say), besides the
    /// admin listener's address, localhost and loopback addresses; repeatable. Requests
    /// naming any other host are refused, so that a web page cannot reach the
    /// balancer-manager through a name of its own (DNS rebinding).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub admin_host: Vec<String>,
    /// A file of balancer-manager tokens, one `NAME:SECRET` per line; when tokens are
    /// configured (here or in the STICKYROUTE_ADMIN_TOKEN environment variable) every
    /// balancer-manager request needs one. Never give a token on the command line.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// What the balancer-manager shows of the agents: the task that polls them is started
/// once, so these need a restart.
#[derive(Debug, Clone, Args)]
pub struct ManagerOptions {
    /// The port of each member's agent admin listener: the balancer-manager then shows the
    /// map hash every agent runs, and marks those that differ from the proxy's.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub agent_admin_port: Option<u16>,
    /// How often agents' /status is read.
    #[arg(long, default_value_t = AGENT_POLL_INTERVAL, value_name = "DURATION")]
    pub agent_poll_interval: Span,
    /// Keep balancer-manager changes in this JSON file, which every proxy given the same
    /// path follows and applies within about a second (proxies on one host or on a shared
    /// volume); they survive restarts. A change that cannot be written is refused. Without
    /// it, changes live in this process only.
    #[arg(long, value_name = "FILE", conflicts_with = "overrides_configmap")]
    pub overrides_file: Option<PathBuf>,
    /// Keep balancer-manager changes in the `overrides.json` key of this ConfigMap
    /// (NAMESPACE/NAME, created beforehand), which every replica follows through the
    /// Kubernetes API and applies within about a second; they survive restarts. A change
    /// that cannot be written is refused.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub overrides_configmap: Option<String>,
    /// The proxies' own Service (NAMESPACE/NAME): the balancer-manager lists its endpoints
    /// as the replicas of this balancer, reads each one's /status on this proxy's admin
    /// port, and shows whether each applies the latest route map and overrides. Without
    /// it, --overrides-file lists the proxies sharing the file (from a registry beside it).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub proxy_service: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Translate an Apache mod_proxy_balancer configuration (BalancerMember, ProxySet,
    /// ProxyPass with stickysession/nofailover, the balancer-manager's Allow from, and the
    /// backends' RewriteMap/RewriteCond/RewriteRule cookie trick) into a route map and a
    /// proxy config. Everything not translated is listed as a warning.
    ImportApache(crate::import_apache::cli::ImportArgs),
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::Byrequests => "byrequests",
            LbMethod::Bybusyness => "bybusyness",
        }
    }
}
