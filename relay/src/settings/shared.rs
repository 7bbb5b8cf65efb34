//! The settings both binaries have, declared once: where the map comes from, the admin
//! listener, logging, workers, timeouts and limits. Each binary flattens these groups into
//! its own options, so a flag, its variable, its file key, its default and its help text are
//! the same in both.

use super::Span;
use crate::process::lifecycle::ShutdownTiming;
use crate::process::logging::LogFilter;
use crate::serve::ServerLimits;
use crate::upstream::forward::UpstreamTimeouts;
use clap::{Args, ValueEnum};
use routemap::source::{ConfigMapRef, DEFAULT_CONFIGMAP_KEY, MapLocation};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The port the agent listens on by default, and so the port the proxy reaches members on
/// by default: the plain-server setup then needs neither `--listen` nor `--member-port`.
pub const AGENT_PORT: u16 = 8080;
pub const ROUTEMAP_DEBOUNCE: Span = Span(routemap::source::DEFAULT_DEBOUNCE);
pub const HEADER_READ_TIMEOUT: Span = Span(crate::serve::DEFAULT_HEADER_READ_TIMEOUT);
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
pub const CONNECT_TIMEOUT: Span = Span::from_secs(5);
pub const RESPONSE_TIMEOUT: Span = Span::from_secs(60);
pub const UPSTREAM_IDLE_TIMEOUT: Span = Span::from_secs(90);
pub const IDLE_TIMEOUT: Span = Span::from_secs(60);
pub const TUNNEL_IDLE_TIMEOUT: Span = Span::from_secs(3600);
pub const DRAIN_DELAY: Span = Span::from_secs(5);
pub const GRACE_PERIOD: Span = Span::from_secs(20);
pub const LOG_LEVEL: &str = "info";

/// Where the route map comes from: a file, or a ConfigMap through the Kubernetes API.
#[derive(Debug, Clone, Args)]
pub struct MapOptions {
    /// The route map file, followed live (edits, renames, kubelet ConfigMap volume updates).
    #[arg(long, value_name = "PATH")]
    pub routemap: Option<PathBuf>,
    /// Instead of a file: watch this ConfigMap through the Kubernetes API (in-cluster
    /// service account, or KUBECONFIG). Needs get/list/watch on that one ConfigMap.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub routemap_configmap: Option<String>,
    /// The ConfigMap key that holds the map.
    #[arg(long, default_value = DEFAULT_CONFIGMAP_KEY, value_name = "KEY")]
    pub routemap_key: String,
    /// Quiet time after the last file event before the map is read again.
    #[arg(long, default_value_t = ROUTEMAP_DEBOUNCE, value_name = "DURATION")]
    pub routemap_debounce: Span,
}

impl MapOptions {
    /// The one place the map comes from. Given both ways, the one from the more specific
    /// layer wins (a `--routemap-configmap` flag over a file's `routemap`); both from the
    /// same layer is a mistake.
    pub fn location<T>(
        &self,
        layered: &super::Layered<T>,
    ) -> Result<MapLocation, super::SettingsError> {
        let (file, configmap) = (
            layered.origin("routemap").rank(),
            layered.origin("routemap_configmap").rank(),
        );
        let (path, object) = match (&self.routemap, &self.routemap_configmap) {
            (Some(_), Some(_)) if file > configmap => (self.routemap.as_ref(), None),
            (Some(_), Some(_)) if configmap > file => (None, self.routemap_configmap.as_ref()),
            both => (both.0.as_ref(), both.1.as_ref()),
        };
        match (path, object) {
            (Some(path), None) => Ok(MapLocation::File(path.clone())),
            (None, Some(object)) => ConfigMapRef::parse(object, &self.routemap_key)
                .map(MapLocation::ConfigMap)
                .map_err(|e| layered.invalid("routemap_configmap", e)),
            (Some(_), Some(_)) => Err(layered.invalid(
                "routemap",
                format!(
                    "give either it or {}, not both",
                    layered.name("routemap_configmap")
                ),
            )),
            (None, None) => Err(super::SettingsError::Value {
                origin: super::Origin::Default,
                message:
                    "no route map: give --routemap PATH or --routemap-configmap NAMESPACE/NAME"
                        .to_owned(),
            }),
        }
    }
}

/// The admin listener's address; each binary declares its own default.
#[derive(Debug, Clone, Args)]
pub struct AdminOptions {
    /// Address of the admin endpoints (/healthz, /readyz, /metrics, /status).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How log lines are written: fixed for the life of the process, since the writer is built
/// for it when the logger is installed.
#[derive(Debug, Clone, Args)]
pub struct LogFormatOptions {
    /// Log line format: human-readable text, or one JSON object per line for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The access log: fixed for the life of the process (its file is reopened on SIGUSR1
/// and when renamed, but not moved elsewhere by a reload).
#[derive(Debug, Clone, Args)]
pub struct AccessLogOptions {
    /// Write one line per request: `-` for standard output, or a file (created if
    /// missing, appended to, reopened when renamed or on SIGUSR1, as logrotate expects).
    /// Off by default.
    #[arg(long, value_name = "-|PATH")]
    pub access_log: Option<String>,
    /// Access log format: Apache's combined format followed by the sticky fields as
    /// key=value, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = crate::access_log::Format::Combined)]
    pub access_log_format: crate::access_log::Format,
}

impl AccessLogOptions {
    /// Where the log goes and how, if anywhere; opened when the server starts.
    pub fn config<T>(
        &self,
        layered: &super::Layered<T>,
    ) -> Result<Option<crate::access_log::AccessLogConfig>, super::SettingsError> {
        match self.access_log.as_deref() {
            None => Ok(None),
            Some("") => Err(layered.invalid("access_log", "give - or a file path")),
            Some(destination) => Ok(Some(crate::access_log::AccessLogConfig {
                destination: crate::access_log::Destination::parse(destination),
                format: self.access_log_format,
            })),
        }
    }
}

/// Which log lines are written: the filter can be swapped in a running logger, so a reload
/// (SIGHUP) applies it, and an operator can turn `debug` on and off without a restart.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging (applied on reload)")]
pub struct LogLevelOptions {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,stickyroute_relay=debug`.
    #[arg(long, env = "STICKYROUTE_LOG", default_value = LOG_LEVEL, value_name = "FILTER")]
    pub log_level: String,
}

impl LogLevelOptions {
    /// The filter, checked with the other settings so that a bad one (at start or on a
    /// reload) is reported naming where it was given.
    pub fn filter<T>(
        &self,
        layered: &super::Layered<T>,
    ) -> Result<LogFilter, super::SettingsError> {
        LogFilter::parse(&self.log_level).map_err(|e| layered.invalid("log_level", e))
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerOptions {
    /// Worker threads, each with its own event loop and upstream connection pool (like
    /// nginx's worker_processes). Default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "COUNT")]
    pub workers: Option<u16>,
}

impl WorkerOptions {
    pub fn count(&self) -> usize {
        self.workers
            .map_or_else(crate::process::workers::default_count, usize::from)
    }
}

#[derive(Debug, Clone, Args)]
pub struct UpstreamOptions {
    /// Time allowed to open a TCP connection to a member or the app.
    #[arg(long, default_value_t = CONNECT_TIMEOUT, value_name = "DURATION")]
    pub connect_timeout: Span,
    /// How long the upstream may leave a request unanswered: its response headers must come
    /// within this time of the request, or of the last upload bytes that moved, so a long
    /// upload runs as long as it keeps moving.
    #[arg(long, default_value_t = RESPONSE_TIMEOUT, value_name = "DURATION")]
    pub response_timeout: Span,
    /// How long an idle keep-alive connection to an upstream is kept in the pool.
    #[arg(long, default_value_t = UPSTREAM_IDLE_TIMEOUT, value_name = "DURATION")]
    pub upstream_idle_timeout: Span,
    /// Once a request is under way, the longest time no byte may move where one is awaited:
    /// a client's upload that stops gets 408, a response body the upstream stops sending or
    /// the client stops reading ends with the client's connection.
    #[arg(long, default_value_t = IDLE_TIMEOUT, value_name = "DURATION")]
    pub idle_timeout: Span,
    /// The longest a WebSocket (or other upgraded) connection may carry no byte either way.
    #[arg(long, default_value_t = TUNNEL_IDLE_TIMEOUT, value_name = "DURATION")]
    pub tunnel_idle_timeout: Span,
}

impl UpstreamOptions {
    pub fn timeouts(&self) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.connect_timeout.get(),
            response_header: self.response_timeout.get(),
            pool_idle: self.upstream_idle_timeout.get(),
            inactivity: self.idle_timeout.get(),
            tunnel_idle: self.tunnel_idle_timeout.get(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClientLimitOptions {
    /// Time a client has, after connecting or after its last response, to send a complete
    /// request head; then the connection is closed (also HTTP/2 connections with no open
    /// stream).
    #[arg(long, default_value_t = HEADER_READ_TIMEOUT, value_name = "DURATION")]
    pub header_read_timeout: Span,
    /// Largest accepted request head in bytes.
    #[arg(long, default_value_t = MAX_HEADER_BYTES, value_name = "BYTES")]
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request.
    #[arg(long, default_value_t = MAX_HEADERS, value_name = "COUNT")]
    pub max_headers: usize,
    /// Most client connections open at once on the traffic listeners; more are closed at
    /// once. Default 10000, lowered to what the open file limit allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "COUNT")]
    pub max_connections: Option<u32>,
}

impl ClientLimitOptions {
    /// The limits, with `idle_timeout` bounding writes to clients that stopped reading.
    pub fn limits(&self, idle_timeout: Span) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout.get(),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            idle_timeout: idle_timeout.get(),
        }
    }

    /// The configured connection limit, if any (fitted to the open file limit at start).
    pub fn max_connections(&self) -> Option<usize> {
        self.max_connections
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ShutdownOptions {
    /// After SIGTERM, how long to keep serving while unready, so that load balancers and
    /// Kubernetes endpoints stop sending traffic first.
    #[arg(long, default_value_t = DRAIN_DELAY, value_name = "DURATION")]
    pub drain_delay: Span,
    /// Then, how long in-flight requests and WebSocket tunnels get to finish. Keep
    /// drain delay + grace period below the pod's terminationGracePeriodSeconds (30 s).
    #[arg(long, default_value_t = GRACE_PERIOD, value_name = "DURATION")]
    pub grace_period: Span,
}

impl ShutdownOptions {
    pub fn timing(&self) -> ShutdownTiming {
        ShutdownTiming {
            drain_delay: self.drain_delay.get(),
            grace: self.grace_period.get(),
        }
    }
}
