//! Command-line options both binaries take, with the environment variables Kubernetes users
//! set instead, and the logging setup they select.

use crate::forward::UpstreamTimeouts;
use crate::lifecycle::ShutdownTiming;
use crate::serve::ServerLimits;
use clap::{Args, ValueEnum};
use routemap::Live;
use routemap::source::{
    self, ConfigMapRef, DEFAULT_CONFIGMAP_KEY, FileWatchOptions, MapLocation, SourceTask,
    StartError,
};
use std::path::PathBuf;
use std::time::Duration;

/// Accepts `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let number = text.trim_end_matches(|c: char| !c.is_ascii_digit() && c != '.');
    let unit = text.strip_prefix(number).unwrap_or_default();
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s or 2m"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?} has an unknown unit; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,stickyroute_relay=debug`.
    #[arg(long, env = "STICKYROUTE_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format: human-readable text, or one JSON object per line for log shippers.
    #[arg(long, env = "STICKYROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// The filter, with the Kubernetes client's own per-attempt error lines off unless the
    /// filter names it: the ConfigMap source reports the same errors once each, with the
    /// ConfigMap they concern, instead of one line per retry.
    fn directives(&self) -> String {
        if self.log_level.contains("kube") {
            self.log_level.clone()
        } else {
            format!("{},kube_client=off,kube_runtime=off", self.log_level)
        }
    }

    /// Installs the global logger. Logs go to stderr.
    pub fn init(&self) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(self.directives())
            .map_err(|e| format!("--log-level {:?}: {e}", self.log_level))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let installed = match self.log_format {
            LogFormat::Text => builder.with_ansi(false).try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        installed.map_err(|e| e.to_string())
    }
}

/// Where the route map comes from: a file, or a ConfigMap through the Kubernetes API.
#[derive(Debug, Clone, Args)]
pub struct MapArgs {
    /// The route map file, followed live (edits, renames, kubelet ConfigMap volume updates).
    #[arg(long, env = "STICKYROUTE_ROUTEMAP", value_name = "PATH")]
    pub routemap: Option<PathBuf>,
    /// Instead of a file: watch this ConfigMap through the Kubernetes API (in-cluster
    /// service account, or KUBECONFIG). Needs get/list/watch on that one ConfigMap.
    #[arg(
        long,
        env = "STICKYROUTE_ROUTEMAP_CONFIGMAP",
        value_name = "NAMESPACE/NAME",
        conflicts_with = "routemap"
    )]
    pub routemap_configmap: Option<String>,
    /// The ConfigMap key that holds the map.
    #[arg(long, env = "STICKYROUTE_ROUTEMAP_KEY", default_value = DEFAULT_CONFIGMAP_KEY, value_name = "KEY")]
    pub routemap_key: String,
    /// Quiet time after the last file event before the map is read again.
    #[arg(long, value_parser = duration, default_value = "150ms", value_name = "DURATION")]
    pub routemap_debounce: Duration,
}

impl MapArgs {
    /// The one place the map comes from; an error names what is missing or malformed.
    pub fn location(&self) -> Result<MapLocation, String> {
        map_location(
            self.routemap.as_deref(),
            self.routemap_configmap.as_deref(),
            &self.routemap_key,
        )
    }
}

/// Checks that exactly one of `--routemap` and `--routemap-configmap` is given.
pub fn map_location(
    file: Option<&std::path::Path>,
    configmap: Option<&str>,
    key: &str,
) -> Result<MapLocation, String> {
    match (file, configmap) {
        (Some(path), None) => Ok(MapLocation::File(path.to_owned())),
        (None, Some(object)) => ConfigMapRef::parse(object, key)
            .map(MapLocation::ConfigMap)
            .map_err(|e| format!("--routemap-configmap {e}")),
        (Some(_), Some(_)) => {
            Err("give either --routemap or --routemap-configmap, not both".to_owned())
        }
        (None, None) => Err(
            "no route map: give --routemap PATH or --routemap-configmap NAMESPACE/NAME".to_owned(),
        ),
    }
}

/// Starts following the map, with the given debounce for files (see [`FileWatchOptions`]).
/// The handle becomes ready with the first valid map.
pub async fn start_map(
    location: &MapLocation,
    debounce: Duration,
) -> Result<(Live, SourceTask), StartError> {
    let options = FileWatchOptions {
        debounce,
        ..FileWatchOptions::default()
    };
    source::start(location, options).await
}

#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// Time allowed to open a TCP connection to an upstream.
    #[arg(long, value_parser = duration, default_value = "5s", value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// How long the upstream may leave a request unanswered: its response headers must come
    /// within this time of the request, or of the last upload bytes that moved, so a long
    /// upload runs as long as it keeps moving.
    #[arg(long, value_parser = duration, default_value = "60s", value_name = "DURATION")]
    pub response_timeout: Duration,
    /// How long an idle keep-alive connection to an upstream is kept in the pool.
    #[arg(long, value_parser = duration, default_value = "90s", value_name = "DURATION")]
    pub upstream_idle_timeout: Duration,
    /// Once a request is under way, the longest time no byte may move where one is awaited:
    /// a client's upload that stops gets 408, a response body the upstream stops sending or
    /// the client stops reading ends with the client's connection.
    #[arg(long, value_parser = duration, default_value = "60s", value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// The longest a WebSocket (or other upgraded) connection may carry no byte either way.
    #[arg(long, value_parser = duration, default_value = "1h", value_name = "DURATION")]
    pub tunnel_idle_timeout: Duration,
}

impl UpstreamArgs {
    pub fn timeouts(&self) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.connect_timeout,
            response_header: self.response_timeout,
            pool_idle: self.upstream_idle_timeout,
            inactivity: self.idle_timeout,
            tunnel_idle: self.tunnel_idle_timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClientLimitArgs {
    /// Time a client has, after connecting or after its last response, to send a complete
    /// request head; then the connection is closed (also HTTP/2 connections with no open
    /// stream).
    #[arg(long, value_parser = duration, default_value = "10s", value_name = "DURATION")]
    pub header_read_timeout: Duration,
    /// Largest accepted request head in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request.
    #[arg(long, default_value_t = 100, value_name = "COUNT")]
    pub max_headers: usize,
    /// Most client connections open at once on the traffic listener; more are closed at
    /// once. Default 10000, lowered to what the open file limit allows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "COUNT")]
    pub max_connections: Option<u64>,
}

impl ClientLimitArgs {
    /// The limits, with `idle_timeout` bounding writes to clients that stopped reading.
    pub fn limits(&self, idle_timeout: Duration) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            idle_timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// After SIGTERM, how long to keep serving while unready, so that load balancers and
    /// Kubernetes endpoints stop sending traffic first.
    #[arg(long, env = "STICKYROUTE_DRAIN_DELAY", value_parser = duration, default_value = "5s", value_name = "DURATION")]
    pub drain_delay: Duration,
    /// Then, how long in-flight requests and WebSocket tunnels get to finish. Keep
    /// drain delay + grace period below the pod's terminationGracePeriodSeconds (30 s).
    #[arg(long, env = "STICKYROUTE_GRACE_PERIOD", value_parser = duration, default_value = "20s", value_name = "DURATION")]
    pub grace_period: Duration,
}

impl ShutdownArgs {
    pub fn timing(&self) -> ShutdownTiming {
        ShutdownTiming {
            drain_delay: self.drain_delay,
            grace: self.grace_period,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("7"), Ok(Duration::from_secs(7)));
        assert!(duration("5 parsecs").is_err());
        assert!(duration("s").is_err());
    }

    #[test]
    fn the_map_comes_from_exactly_one_place() {
        let file = std::path::Path::new("/etc/routemap");
        assert_eq!(
            map_location(Some(file), None, "routemap"),
            Ok(MapLocation::File(file.to_owned()))
        );
        let api = map_location(None, Some("shop/routes"), "map.txt").unwrap();
        assert_eq!(api.to_string(), "configmap:shop/routes#map.txt");
        assert!(
            map_location(Some(file), Some("shop/routes"), "routemap")
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            map_location(None, None, "routemap")
                .unwrap_err()
                .contains("no route map")
        );
        assert!(
            map_location(None, Some("routes"), "routemap")
                .unwrap_err()
                .starts_with("--routemap-configmap")
        );
    }

    #[test]
    fn the_kubernetes_clients_retry_lines_are_off_unless_asked_for() {
        let args = |level: &str| LogArgs {
            log_level: level.to_owned(),
            log_format: LogFormat::Text,
        };
        assert_eq!(
            args("info").directives(),
            "info,kube_client=off,kube_runtime=off"
        );
        assert_eq!(
            args("info,kube_client=debug").directives(),
            "info,kube_client=debug"
        );
    }
}
