//! Configuration: [`ProxyOptions`] from flags and file, validated into [`Settings`].

mod options;

pub use options::{Command, LbMethod, ProxyOptions, UnknownRoute};

use crate::manager::access::{Cidr, Token, load_tokens};
use crate::sticky::StickySpec;
use http::StatusCode;
use routemap::source::{DEFAULT_CONFIGMAP_KEY, MapLocation};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stickyroute_relay::cli::{LogArgs, LogFormat, map_location};
use stickyroute_relay::forward::UpstreamTimeouts;
use stickyroute_relay::lifecycle::ShutdownTiming;
use stickyroute_relay::serve::ServerLimits;

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0} (or \"routemap\" / \"routemap_configmap\" in the config file)")]
    RouteMap(String),
    #[error("--member-domain-suffix {0:?} is not a DNS suffix like .web.shop.svc.cluster.local")]
    MemberDomainSuffix(String),
    #[error("--stickysession {0:?}: {1}")]
    Sticky(String, String),
    #[error("--affinity-header {0:?} is not a valid header name")]
    AffinityHeader(String),
    #[error("--failonstatus {0} is not an HTTP status code (100-599)")]
    FailOnStatus(u16),
    #[error("--health-path {0:?} must start with '/'")]
    HealthPath(String),
    #[error("--health-rise and --health-fall must be at least 1")]
    HealthCounts,
    #[error("--member-port must not be 0")]
    MemberPort,
    #[error("--admin-allow {0}")]
    AdminAllow(String),
    #[error("--admin-host {0:?} is not a host name or address")]
    AdminHost(String),
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("{0}")]
    Tokens(String),
}

/// Active health checking, when `--health-path` is given.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Everything the proxy runs with, validated.
#[derive(Debug)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub routemap: MapLocation,
    pub routemap_debounce: Duration,
    pub member_port: u16,
    pub member_domain_suffix: String,
    pub sticky: StickySpec,
    pub nofailover: bool,
    pub unknown_route: UnknownRoute,
    pub lbmethod: LbMethod,
    pub retry: Duration,
    pub failonstatus: Vec<StatusCode>,
    pub health: Option<HealthCheck>,
    pub dns_refresh: Duration,
    pub workers: usize,
    pub upstream: UpstreamTimeouts,
    pub limits: ServerLimits,
    pub admin_listen: SocketAddr,
    pub admin_allow: Vec<Cidr>,
    /// Names the balancer-manager answers to, besides its address, localhost and loopback.
    pub admin_hosts: Vec<String>,
    /// Client connections the traffic listeners hold at once, as configured (`None`: the
    /// default); fitted to the open file limit at start.
    pub max_connections: Option<usize>,
    pub admin_tokens: Vec<Token>,
    pub agent_admin_port: Option<u16>,
    pub agent_poll_interval: Duration,
    pub log: LogArgs,
    pub shutdown: ShutdownTiming,
}

/// Reads the JSON config file; unknown keys are errors.
pub fn read_file(path: &Path) -> Result<ProxyOptions, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

impl ProxyOptions {
    /// Merges the config file (if any) under the flags and validates the result.
    /// `env_token` is the `STICKYROUTE_ADMIN_TOKEN` value, passed in so tests never touch
    /// the process environment.
    pub fn settings(self, env_token: Option<String>) -> Result<Settings, ConfigError> {
        let merged = match &self.config {
            Some(path) => {
                let file = read_file(path)?;
                self.over(file)
            }
            None => self,
        };
        merged.validate(env_token)
    }

    fn validate(self, env_token: Option<String>) -> Result<Settings, ConfigError> {
        let admin_allow = if self.admin_allow.is_empty() {
            Cidr::loopback()
        } else {
            self.admin_allow
                .iter()
                .map(|c| c.parse())
                .collect::<Result<Vec<Cidr>, String>>()
                .map_err(ConfigError::AdminAllow)?
        };
        let admin_hosts = self
            .admin_host
            .iter()
            .map(|name| {
                crate::manager::hosts::normalize(name)
                    .ok_or_else(|| ConfigError::AdminHost(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_connections = self.max_connections;
        if max_connections == Some(0) {
            return Err(ConfigError::MaxConnections);
        }
        let idle_timeout = self.idle_timeout.unwrap_or(Duration::from_secs(60));
        let admin_tokens = load_tokens(self.admin_token_file.as_deref(), env_token)
            .map_err(ConfigError::Tokens)?;
        let routemap = map_location(
            self.routemap.as_deref(),
            self.routemap_configmap.as_deref(),
            self.routemap_key
                .as_deref()
                .unwrap_or(DEFAULT_CONFIGMAP_KEY),
        )
        .map_err(ConfigError::RouteMap)?;
        let member_domain_suffix = self.member_domain_suffix.unwrap_or_default();
        if !is_domain_suffix(&member_domain_suffix) {
            return Err(ConfigError::MemberDomainSuffix(member_domain_suffix));
        }
        let member_port = self.member_port.unwrap_or(80);
        if member_port == 0 {
            return Err(ConfigError::MemberPort);
        }
        let sticky_text = self.stickysession.unwrap_or_else(|| "balanceid".to_owned());
        let sticky = StickySpec::parse(&sticky_text, self.affinity_header.as_deref()).map_err(
            |e| match e {
                crate::sticky::SpecError::Header(h) => ConfigError::AffinityHeader(h),
                other => ConfigError::Sticky(sticky_text.clone(), other.to_string()),
            },
        )?;
        let failonstatus = self
            .failonstatus
            .iter()
            .map(|code| {
                StatusCode::from_u16(*code)
                    .ok()
                    .filter(|_| (100..600).contains(code))
                    .ok_or(ConfigError::FailOnStatus(*code))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let health = match self.health_path {
            None => None,
            Some(path) if !path.starts_with('/') => return Err(ConfigError::HealthPath(path)),
            Some(path) => {
                let (rise, fall) = (self.health_rise.unwrap_or(2), self.health_fall.unwrap_or(3));
                if rise == 0 || fall == 0 {
                    return Err(ConfigError::HealthCounts);
                }
                Some(HealthCheck {
                    path,
                    interval: self.health_interval.unwrap_or(Duration::from_secs(5)),
                    timeout: self.health_timeout.unwrap_or(Duration::from_secs(2)),
                    rise,
                    fall,
                })
            }
        };
        let listen = if self.listen.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
        } else {
            self.listen
        };
        Ok(Settings {
            listen,
            routemap,
            routemap_debounce: self.routemap_debounce.unwrap_or(Duration::from_millis(150)),
            member_port,
            member_domain_suffix,
            sticky,
            nofailover: self.nofailover.unwrap_or(false),
            unknown_route: self.unknown_route.unwrap_or(UnknownRoute::Balance),
            lbmethod: self.lbmethod.unwrap_or(LbMethod::Byrequests),
            retry: self.retry.unwrap_or(Duration::from_secs(60)),
            failonstatus,
            health,
            dns_refresh: self.dns_refresh.unwrap_or(Duration::from_secs(30)),
            workers: self
                .workers
                .filter(|n| *n > 0)
                .unwrap_or_else(stickyroute_relay::workers::default_count),
            upstream: UpstreamTimeouts {
                connect: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
                response_header: self.response_timeout.unwrap_or(Duration::from_secs(60)),
                pool_idle: self
                    .upstream_idle_timeout
                    .unwrap_or(Duration::from_secs(90)),
                inactivity: idle_timeout,
                tunnel_idle: self
                    .tunnel_idle_timeout
                    .unwrap_or(Duration::from_secs(3600)),
            },
            limits: ServerLimits {
                header_read_timeout: self.header_read_timeout.unwrap_or(Duration::from_secs(10)),
                max_header_bytes: self.max_header_bytes.unwrap_or(64 * 1024),
                max_headers: self.max_headers.unwrap_or(100),
                idle_timeout,
            },
            max_connections,
            admin_listen: self
                .admin_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900))),
            admin_allow,
            admin_hosts,
            admin_tokens,
            agent_admin_port: self.agent_admin_port,
            agent_poll_interval: self.agent_poll_interval.unwrap_or(Duration::from_secs(10)),
            log: LogArgs {
                log_level: self.log_level.unwrap_or_else(|| "info".to_owned()),
                log_format: self.log_format.unwrap_or(LogFormat::Text),
            },
            shutdown: ShutdownTiming {
                drain_delay: self.drain_delay.unwrap_or(Duration::from_secs(5)),
                grace: self.grace_period.unwrap_or(Duration::from_secs(20)),
            },
        })
    }
}

/// Empty, or DNS labels each preceded by a `.`: the suffix is appended literally
/// (`web-0` + `.web.shop.svc.cluster.local`), so the leading dot is required.
fn is_domain_suffix(suffix: &str) -> bool {
    let Some(name) = suffix.strip_prefix('.') else {
        return suffix.is_empty();
    };
    suffix.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> ProxyOptions {
        ProxyOptions::try_parse_from(
            std::iter::once("stickyroute-proxy").chain(args.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn defaults_follow_apache_where_apache_has_one() {
        let s = parse(&["--routemap", "/m"]).settings(None).unwrap();
        assert_eq!(s.retry, Duration::from_secs(60));
        assert_eq!(s.lbmethod, LbMethod::Byrequests);
        assert!(!s.nofailover);
        assert_eq!(s.unknown_route, UnknownRoute::Balance);
        assert_eq!(s.member_port, 80);
        assert_eq!(s.listen, [SocketAddr::from(([0, 0, 0, 0], 8080))]);
        assert!(s.health.is_none());
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("stickyroute-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.json");
        std::fs::write(
            &file,
            r#"{"routemap": "/etc/m", "nofailover": true, "retry": "30s", "lbmethod": "bybusyness",
                "failonstatus": [503], "listen": ["127.0.0.1:8080", "127.0.0.1:8081"], "connect_timeout": 2}"#,
        )
        .unwrap();
        let s = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--retry",
            "5s",
            "--nofailover=false",
        ])
        .settings(None)
        .unwrap();
        assert_eq!(s.routemap, MapLocation::File(PathBuf::from("/etc/m")));
        assert_eq!(s.retry, Duration::from_secs(5), "the flag wins");
        assert!(!s.nofailover, "an explicit false flag wins too");
        assert_eq!(s.lbmethod, LbMethod::Bybusyness);
        assert_eq!(s.failonstatus, [StatusCode::SERVICE_UNAVAILABLE]);
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.upstream.connect, Duration::from_secs(2));

        std::fs::write(&file, r#"{"routemap": "/m", "nofailvoer": true}"#).unwrap();
        let error = parse(&["--config", file.to_str().unwrap()])
            .settings(None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `nofailvoer`"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_what_cannot_work() {
        let error = |args: &[&str]| parse(args).settings(None).unwrap_err().to_string();
        assert!(error(&[]).contains("no route map"));
        assert!(error(&["--routemap", "/m", "--failonstatus", "700"]).contains("700"));
        assert!(
            error(&["--routemap", "/m", "--health-path", "health"]).contains("must start with '/'")
        );
        assert!(
            error(&["--routemap", "/m", "--stickysession", "bal ance"]).contains("--stickysession")
        );
        assert!(
            error(&["--routemap", "/m", "--affinity-header", "x y"]).contains("--affinity-header")
        );
        assert!(error(&["--routemap", "/m", "--member-port", "0"]).contains("--member-port"));
        assert!(
            error(&["--routemap", "/m", "--admin-allow", "10.8.2.0/40"]).contains("--admin-allow")
        );
        assert!(error(&["--routemap", "/m", "--routemap-configmap", "ns/m"]).contains("not both"));
        assert!(error(&["--routemap-configmap", "routemap"]).contains("NAMESPACE/NAME"));
        for bad in ["web.ns.svc", ".web..svc", ".web/ns"] {
            assert!(
                error(&["--routemap", "/m", "--member-domain-suffix", bad])
                    .contains("--member-domain-suffix"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_configmap_on_the_command_line_replaces_the_files_map_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.json");
        std::fs::write(&file, r#"{"routemap": "/etc/m", "routemap_key": "routes"}"#).unwrap();
        let s = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--routemap-configmap",
            "shop/route-map",
            "--member-domain-suffix",
            ".web.shop.svc.cluster.local",
        ])
        .settings(None)
        .unwrap();
        assert_eq!(s.routemap.to_string(), "configmap:shop/route-map#routes");
        assert_eq!(s.member_domain_suffix, ".web.shop.svc.cluster.local");
    }
}
