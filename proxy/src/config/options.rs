//! The proxy's options, from the command line and from a JSON config file.
//!
//! One struct serves both, so a key of the file is always spelled like its flag (with `_`
//! for `-`), and unknown keys are rejected so a typo cannot silently do nothing. Every field
//! is optional here: flags override the file, and defaults apply last ([`super::Settings`]).

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use stickyroute_relay::cli::{LogFormat, duration};

/// How new sessions are spread over members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMethod {
    /// Apache's weighted request counting: over any window of sum(loadfactor) picks each
    /// member gets exactly its share.
    Byrequests,
    /// The member with the fewest requests in flight (weighted ties), for uneven request costs.
    Bybusyness,
}

/// What a sticky route that no member has gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, serde::Serialize)]
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
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "stickyroute-proxy",
    version,
    args_conflicts_with_subcommands = true
)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyOptions {
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
    /// A JSON config file with the same settings (keys spelled like the flags, `_` for `-`);
    /// flags given on the command line override it.
    #[arg(long, env = "STICKYROUTE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Validate the configuration (and the route map) and exit: 0 when valid, 64 otherwise.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Address to accept client traffic on; repeatable. Default 0.0.0.0:8080.
    #[arg(
        long,
        env = "STICKYROUTE_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub listen: Vec<SocketAddr>,
    /// The route map file, followed live. Each entry is a member at http://KEY:PORT.
    #[arg(long, env = "STICKYROUTE_ROUTEMAP", value_name = "PATH")]
    pub routemap: Option<PathBuf>,
    /// Instead of a file: watch this ConfigMap through the Kubernetes API (in-cluster
    /// service account, or KUBECONFIG). Needs get/list/watch on that one ConfigMap.
    #[arg(
        long,
        env = "STICKYROUTE_ROUTEMAP_CONFIGMAP",
        value_name = "NAMESPACE/NAME"
    )]
    pub routemap_configmap: Option<String>,
    /// The ConfigMap key that holds the map. Default routemap.
    #[arg(long, env = "STICKYROUTE_ROUTEMAP_KEY", value_name = "KEY")]
    pub routemap_key: Option<String>,
    /// Quiet time after the last file event before the map is read again. Default 150ms.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub routemap_debounce: Option<Duration>,
    /// Port of members whose map entry has no `port=`. Default 80.
    #[arg(long, value_name = "PORT")]
    pub member_port: Option<u16>,
    /// Appended to name keys before they are resolved, so a map keyed by StatefulSet pod
    /// names (`web-0`) reaches the pods through their headless Service:
    /// `.web.NAMESPACE.svc.cluster.local`. Default none.
    #[arg(long, env = "STICKYROUTE_MEMBER_DOMAIN_SUFFIX", value_name = "SUFFIX")]
    pub member_domain_suffix: Option<String>,
    /// The sticky cookie, or COOKIE|PARAM to also read a `;PARAM=` path parameter or
    /// `?PARAM=` query parameter, which wins over the cookie (as Apache's stickysession).
    /// Default balanceid.
    #[arg(long, value_name = "COOKIE[|PARAM]")]
    pub stickysession: Option<String>,
    /// A request header carrying a sticky value in the same format, for API and WebSocket
    /// clients that drop cookies. Off by default.
    #[arg(long, value_name = "NAME")]
    pub affinity_header: Option<String>,
    /// When a session's member is down or disabled, answer 503 (with Retry-After) instead of
    /// sending the user to a member that does not know the session.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub nofailover: Option<bool>,
    /// What a sticky route that no member has gets: a weighted pick (Apache's behaviour) or
    /// a 503. Default balance.
    #[arg(long, value_enum, value_name = "balance|reject")]
    pub unknown_route: Option<UnknownRoute>,
    /// How new sessions are balanced. Default byrequests.
    #[arg(long, value_enum)]
    pub lbmethod: Option<LbMethod>,
    /// How long a member that failed stays in error before real traffic tries it again.
    /// Default 60s (Apache's retry).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub retry: Option<Duration>,
    /// Response statuses that put a member in error (the response is still passed on),
    /// e.g. 503 or 500,503. Off by default.
    #[arg(long, value_delimiter = ',', value_name = "CODES")]
    pub failonstatus: Vec<u16>,

    /// Enables active health checks: GET this path on every member.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Interval between active checks. Default 5s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub health_interval: Option<Duration>,
    /// Timeout of one active check. Default 2s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub health_timeout: Option<Duration>,
    /// Consecutive passing checks that bring a member back. Default 2.
    #[arg(long, value_name = "COUNT")]
    pub health_rise: Option<u32>,
    /// Consecutive failing checks that take a member out. Default 3.
    #[arg(long, value_name = "COUNT")]
    pub health_fall: Option<u32>,
    /// How often member host names are resolved again (also on every map change).
    /// Default 30s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub dns_refresh: Option<Duration>,

    /// Worker threads, each with its own event loop and member connection pool (like
    /// nginx's worker_processes). Default: one per core.
    #[arg(long, env = "STICKYROUTE_WORKERS", value_name = "COUNT")]
    pub workers: Option<usize>,
    /// Time allowed to connect to a member. Default 5s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    /// How long a member may leave a request unanswered: its response headers must come
    /// within this time of the request, or of the last upload bytes that moved, so a long
    /// upload runs as long as it keeps moving. Default 60s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub response_timeout: Option<Duration>,
    /// How long idle keep-alive connections to members are pooled. Default 90s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub upstream_idle_timeout: Option<Duration>,
    /// Once a request is under way, the longest time no byte may move where one is
    /// awaited: a client's upload that stops gets 408, a response body the member stops
    /// sending or the client stops reading ends with the client's connection. Default 60s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// The longest a WebSocket (or other upgraded) connection may carry no byte either
    /// way. Default 1h.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Time a client has, after connecting or after its last response, to send a complete
    /// request head; then the connection is closed (HTTP/2 connections with no open stream
    /// too). Default 10s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Option<Duration>,
    /// Largest accepted request head in bytes. Default 65536.
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields in one request. Default 100.
    #[arg(long, value_name = "COUNT")]
    pub max_headers: Option<usize>,
    /// Most client connections open at once on the traffic listeners; more are closed at
    /// once. Lowered to what the open file limit allows. Default 10000.
    #[arg(long, value_name = "COUNT")]
    pub max_connections: Option<usize>,

    /// Address of the admin endpoints (/healthz, /readyz, /metrics, /status).
    /// Default 127.0.0.1:9900.
    #[arg(long, env = "STICKYROUTE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
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
    #[arg(long, env = "STICKYROUTE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The port of each member's agent admin listener: the balancer-manager then shows the
    /// map hash every agent runs, and marks those that differ from the proxy's.
    #[arg(long, value_name = "PORT")]
    pub agent_admin_port: Option<u16>,
    /// How often agents' /status is read. Default 10s.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub agent_poll_interval: Option<Duration>,
    /// Log filter: a level or tracing directives. Default info.
    #[arg(long, env = "STICKYROUTE_LOG")]
    pub log_level: Option<String>,
    /// Log line format. Default text.
    #[arg(long, env = "STICKYROUTE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// After SIGTERM, how long to keep serving while unready. Default 5s.
    #[arg(long, env = "STICKYROUTE_DRAIN_DELAY", value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub drain_delay: Option<Duration>,
    /// Then, how long in-flight requests and tunnels get to finish. Default 20s.
    #[arg(long, env = "STICKYROUTE_GRACE_PERIOD", value_parser = duration, value_name = "DURATION")]
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Option<Duration>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Translate an Apache mod_proxy_balancer configuration (BalancerMember, ProxySet,
    /// ProxyPass with stickysession/nofailover, the balancer-manager's Allow from, and the
    /// backends' RewriteMap/RewriteCond/RewriteRule cookie trick) into a route map and a
    /// proxy config. Everything not translated is listed as a warning.
    ImportApache {
        /// Apache configuration files (the proxy's, and optionally a backend's).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The RewriteMap txt: file, to check it against the BalancerMembers.
        #[arg(long, value_name = "FILE")]
        rewrite_map: Option<PathBuf>,
        /// The balancer to import (balancer://NAME or NAME), when the configuration has
        /// several: one stickyroute-proxy serves one balancer.
        #[arg(long, value_name = "NAME")]
        balancer: Option<String>,
        /// Where to write `routemap` and `proxy.json`.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// A duration in the file: `"250ms"`, `"5s"`, or a number of seconds.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Some(Duration::from_secs(s))),
        Raw::Text(t) => duration(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::Byrequests => "byrequests",
            LbMethod::Bybusyness => "bybusyness",
        }
    }
}

impl ProxyOptions {
    /// Flags (`self`) over the file's values.
    pub fn over(self, file: ProxyOptions) -> ProxyOptions {
        fn list<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
            if flag.is_empty() { file } else { flag }
        }
        let map_on_command_line = self.routemap.is_some() || self.routemap_configmap.is_some();
        ProxyOptions {
            command: self.command,
            config: self.config,
            check_config: self.check_config,
            listen: list(self.listen, file.listen),
            // A map location on the command line replaces the file's, whichever kind each is.
            routemap: if map_on_command_line {
                self.routemap
            } else {
                file.routemap
            },
            routemap_configmap: if map_on_command_line {
                self.routemap_configmap
            } else {
                file.routemap_configmap
            },
            routemap_key: self.routemap_key.or(file.routemap_key),
            routemap_debounce: self.routemap_debounce.or(file.routemap_debounce),
            member_port: self.member_port.or(file.member_port),
            member_domain_suffix: self.member_domain_suffix.or(file.member_domain_suffix),
            stickysession: self.stickysession.or(file.stickysession),
            affinity_header: self.affinity_header.or(file.affinity_header),
            nofailover: self.nofailover.or(file.nofailover),
            unknown_route: self.unknown_route.or(file.unknown_route),
            lbmethod: self.lbmethod.or(file.lbmethod),
            retry: self.retry.or(file.retry),
            failonstatus: list(self.failonstatus, file.failonstatus),
            health_path: self.health_path.or(file.health_path),
            health_interval: self.health_interval.or(file.health_interval),
            health_timeout: self.health_timeout.or(file.health_timeout),
            health_rise: self.health_rise.or(file.health_rise),
            health_fall: self.health_fall.or(file.health_fall),
            dns_refresh: self.dns_refresh.or(file.dns_refresh),
            workers: self.workers.or(file.workers),
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            response_timeout: self.response_timeout.or(file.response_timeout),
            upstream_idle_timeout: self.upstream_idle_timeout.or(file.upstream_idle_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            tunnel_idle_timeout: self.tunnel_idle_timeout.or(file.tunnel_idle_timeout),
            header_read_timeout: self.header_read_timeout.or(file.header_read_timeout),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
            max_headers: self.max_headers.or(file.max_headers),
            max_connections: self.max_connections.or(file.max_connections),
            admin_listen: self.admin_listen.or(file.admin_listen),
            admin_allow: list(self.admin_allow, file.admin_allow),
            admin_host: list(self.admin_host, file.admin_host),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            agent_admin_port: self.agent_admin_port.or(file.agent_admin_port),
            agent_poll_interval: self.agent_poll_interval.or(file.agent_poll_interval),
            log_level: self.log_level.or(file.log_level),
            log_format: self.log_format.or(file.log_format),
            drain_delay: self.drain_delay.or(file.drain_delay),
            grace_period: self.grace_period.or(file.grace_period),
        }
    }
}
