//! Configuration: [`ProxyOptions`] read under the layering rule, validated into [`Settings`].
//! A mistake is reported naming where the value came from (flag, environment variable, or
//! config file and key), the same way in both binaries.

pub mod check;
mod options;

pub use options::{
    AccessOptions, Command, HealthOptions, LbMethod, ManagerOptions, MemberOptions, ProxyOptions,
    RoutingOptions, TlsOptions, UnknownRoute, reloadable,
};

use crate::manager::access::{Access, Cidr, TokenVariable, load_tokens};
use crate::manager::hosts::AllowedHosts;
use crate::sticky::StickySpec;
use arc_swap::ArcSwap;
use http::StatusCode;
use routemap::source::MapLocation;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;
use stickyroute_relay::access_log::AccessLogConfig;
use stickyroute_relay::process::lifecycle::ShutdownTiming;
use stickyroute_relay::process::logging::LogFilter;
use stickyroute_relay::serve::ServerLimits;
use stickyroute_relay::settings::shared::LogFormat;
use stickyroute_relay::settings::{Layered, SettingsError, load};
use stickyroute_relay::tls::certs::{CertError, CertPair};
use stickyroute_relay::tls::{TlsError, TlsServer};
use stickyroute_relay::upstream::forward::UpstreamTimeouts;

/// The proxy's defaults for shared settings whose defaults differ between the binaries.
const OWN_DEFAULTS: [(&str, &str); 1] = [("admin_listen", options::ADMIN_LISTEN)];

/// Active health checking, when `--health-path` is given.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// How requests are routed, validated: what a reload may replace.
#[derive(Debug)]
pub struct Routing {
    pub sticky: StickySpec,
    pub nofailover: bool,
    /// With `nofailover`: how long a session waits for its unusable member.
    pub failover_after: Option<Duration>,
    pub unknown_route: UnknownRoute,
    pub lbmethod: LbMethod,
    pub retry: Duration,
    pub failonstatus: Vec<StatusCode>,
    /// Peers whose `X-Forwarded-*` headers are believed (`--trusted-proxy`).
    pub trusted_proxies: Vec<Cidr>,
    /// Connections from those peers start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// TLS termination, validated (the certificate files are read when the proxy starts, and
/// by `--check-config`).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    /// The first is the default certificate.
    pub pairs: Vec<CertPair>,
    pub handshake_timeout: Duration,
}

/// Who may use the balancer-manager, validated: what a reload may replace. The page's
/// nonce is not in here: it is the process's, and outlives every reload.
#[derive(Debug)]
pub struct ManagerAccess {
    pub access: Access,
    /// Names the balancer-manager answers to, besides its address, localhost and loopback.
    pub hosts: AllowedHosts,
}

/// Where balancer-manager changes are kept for every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverridesAt {
    File(std::path::PathBuf),
    ConfigMap(routemap::source::ConfigMapRef),
}

/// Everything the proxy runs with, validated.
#[derive(Debug)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    /// `None` without `--tls-listen`.
    pub tls: Option<TlsSettings>,
    /// Plain traffic listeners answer 308 to the https URL.
    pub https_redirect: bool,
    /// The port that URL names, when it is not the first TLS listener's.
    pub https_redirect_port: Option<u16>,
    pub routemap: MapLocation,
    pub routemap_debounce: Duration,
    pub member_port: u16,
    pub member_domain_suffix: String,
    /// Replaced whole by a reload; read for every request.
    pub routing: ArcSwap<Routing>,
    pub health: Option<HealthCheck>,
    pub dns_refresh: Duration,
    /// `--member-service`: name keys' addresses from this Service's EndpointSlices.
    pub member_service: Option<crate::membership::ServiceRef>,
    pub workers: usize,
    pub upstream: UpstreamTimeouts,
    pub limits: ServerLimits,
    pub admin_listen: SocketAddr,
    /// Replaced whole by a reload; read for every balancer-manager request.
    pub access: ArcSwap<ManagerAccess>,
    /// The `STICKYROUTE_ADMIN_TOKEN` value these settings were given, for a reload.
    pub admin_token: TokenVariable,
    /// Client connections the traffic listeners hold at once, as configured (`None`: the
    /// default); fitted to the open file limit at start.
    pub max_connections: Option<usize>,
    pub agent_admin_port: Option<u16>,
    pub agent_poll_interval: Duration,
    /// `--overrides-file` / `--overrides-configmap`: where balancer-manager changes are
    /// shared; `None`: in this process only.
    pub overrides: Option<OverridesAt>,
    /// `--proxy-service`: the Service whose endpoints are this balancer's replicas.
    pub proxy_service: Option<crate::membership::ServiceRef>,
    pub log_format: LogFormat,
    /// `--access-log`, opened when the proxy starts.
    pub access_log: Option<AccessLogConfig>,
    /// Applied to the running logger by a reload.
    pub log_level: LogFilter,
    pub shutdown: ShutdownTiming,
    /// What these settings were read from, so that a reload reads them again the same way.
    pub source: Layered<ProxyOptions>,
}

/// Reads the options from `argv` (program name first), the config file it names and the
/// environment.
pub fn read(argv: &[OsString]) -> Result<Layered<ProxyOptions>, SettingsError> {
    load(argv, &OWN_DEFAULTS)
}

impl Settings {
    /// Validates what [`read`] gave. `env_token` is the `STICKYROUTE_ADMIN_TOKEN` value,
    /// passed in so tests never touch the process environment.
    pub fn new(
        layered: Layered<ProxyOptions>,
        env_token: Option<String>,
    ) -> Result<Settings, SettingsError> {
        Settings::with_token(layered, TokenVariable::new(env_token))
    }

    /// As [`Settings::new`], with the token variable as a running proxy keeps it: what a
    /// reload validates with.
    pub fn with_token(
        layered: Layered<ProxyOptions>,
        admin_token: TokenVariable,
    ) -> Result<Settings, SettingsError> {
        let options = &layered.options;
        let bad = |key: &str, message: String| layered.invalid(key, message);
        let access = ManagerAccess::new(&layered, &admin_token)?;
        let routemap = options.map.location(&layered)?;
        let member_domain_suffix = options
            .members
            .member_domain_suffix
            .clone()
            .unwrap_or_default();
        if !is_domain_suffix(&member_domain_suffix) {
            return Err(bad(
                "member_domain_suffix",
                format!(
                    "{member_domain_suffix:?} is not a DNS suffix like .web.shop.svc.cluster.local"
                ),
            ));
        }
        let routing = Routing::new(&layered)?;
        let health = options.health.health_path.clone().map(|path| {
            if !path.starts_with('/') {
                return Err(bad("health_path", format!("{path:?} must start with '/'")));
            }
            Ok(HealthCheck {
                path,
                interval: options.health.health_interval.get(),
                timeout: options.health.health_timeout.get(),
                rise: options.health.health_rise,
                fall: options.health.health_fall,
            })
        });
        let upstream = options.upstream.timeouts();
        let tls = TlsSettings::new(&layered)?;
        if options.tls.https_redirect && tls.is_none() {
            return Err(bad(
                "https_redirect",
                "redirects to https need a TLS listener (--tls-listen)".to_owned(),
            ));
        }
        if options.tls.https_redirect_port.is_some() && !options.tls.https_redirect {
            return Err(bad(
                "https_redirect_port",
                "is only used by --https-redirect, which is off".to_owned(),
            ));
        }
        Ok(Settings {
            listen: options.listen.clone(),
            tls,
            https_redirect: options.tls.https_redirect,
            https_redirect_port: options.tls.https_redirect_port,
            routemap,
            routemap_debounce: options.map.routemap_debounce.get(),
            member_port: options.members.member_port,
            member_domain_suffix,
            routing: ArcSwap::from_pointee(routing),
            health: health.transpose()?,
            dns_refresh: options.members.dns_refresh.get(),
            member_service: options
                .members
                .member_service
                .as_deref()
                .map(crate::membership::ServiceRef::parse)
                .transpose()
                .map_err(|e| layered.invalid("member_service", e))?,
            workers: options.workers.count(),
            upstream,
            limits: options.limits.limits(options.upstream.idle_timeout),
            max_connections: options.limits.max_connections(),
            admin_listen: options.admin.admin_listen,
            access: ArcSwap::from_pointee(access),
            admin_token,
            agent_admin_port: options.manager.agent_admin_port,
            agent_poll_interval: options.manager.agent_poll_interval.get(),
            proxy_service: options
                .manager
                .proxy_service
                .as_deref()
                .map(crate::membership::ServiceRef::parse)
                .transpose()
                .map_err(|e| layered.invalid("proxy_service", e))?,
            overrides: match (
                &options.manager.overrides_file,
                &options.manager.overrides_configmap,
            ) {
                (Some(_), Some(_)) => {
                    return Err(layered.invalid(
                        "overrides_configmap",
                        "give either --overrides-file or --overrides-configmap, not both"
                            .to_owned(),
                    ));
                }
                (Some(path), None) => Some(OverridesAt::File(path.clone())),
                (None, Some(object)) => Some(OverridesAt::ConfigMap(
                    routemap::source::ConfigMapRef::parse(
                        object,
                        crate::overrides::store::CONFIGMAP_KEY,
                    )
                    .map_err(|e| layered.invalid("overrides_configmap", e))?,
                )),
                (None, None) => None,
            },
            log_format: options.log_format.log_format,
            access_log: options.access_log.config(&layered)?,
            log_level: options.log_level.filter(&layered)?,
            shutdown: options.shutdown.timing(),
            source: layered,
        })
    }
}

impl TlsSettings {
    fn new(layered: &Layered<ProxyOptions>) -> Result<Option<TlsSettings>, SettingsError> {
        let options = &layered.options.tls;
        let bad = |key: &str, message: String| layered.invalid(key, message);
        if options.tls_cert.len() != options.tls_key.len() {
            let key = if options.tls_cert.len() > options.tls_key.len() {
                "tls_key"
            } else {
                "tls_cert"
            };
            return Err(bad(
                key,
                format!(
                    "{} --tls-cert and {} --tls-key given; each certificate needs its key, in the same order",
                    options.tls_cert.len(),
                    options.tls_key.len()
                ),
            ));
        }
        if options.tls_listen.is_empty() {
            if !options.tls_cert.is_empty() {
                return Err(bad(
                    "tls_cert",
                    "certificates are served on a TLS listener: give --tls-listen too".to_owned(),
                ));
            }
            return Ok(None);
        }
        if options.tls_cert.is_empty() {
            return Err(bad(
                "tls_listen",
                "a TLS listener needs a certificate: give --tls-cert and --tls-key".to_owned(),
            ));
        }
        if let Some(both) = options
            .tls_listen
            .iter()
            .find(|addr| addr.port() != 0 && layered.options.listen.contains(addr))
        {
            return Err(bad(
                "tls_listen",
                format!("{both} is also a plain --listen address"),
            ));
        }
        let timeout = options.tls_handshake_timeout.get();
        if timeout.is_zero() {
            return Err(bad(
                "tls_handshake_timeout",
                "must be more than 0s".to_owned(),
            ));
        }
        Ok(Some(TlsSettings {
            listen: options.tls_listen.clone(),
            pairs: options
                .tls_cert
                .iter()
                .zip(&options.tls_key)
                .map(|(cert, key)| CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect(),
            handshake_timeout: timeout,
        }))
    }

    /// Loads the certificates: what the proxy serves with, or why it cannot start. The
    /// error names the setting and the file.
    pub fn load(&self, layered: &Layered<ProxyOptions>) -> Result<TlsServer, SettingsError> {
        TlsServer::new(&self.pairs, self.handshake_timeout).map_err(|e| {
            let is_key = |path: &String| {
                self.pairs
                    .iter()
                    .any(|p| p.key.display().to_string() == *path)
            };
            let key = match &e {
                TlsError::Certificate(CertError::NoKey { .. } | CertError::BadKey { .. }) => {
                    "tls_key"
                }
                TlsError::Certificate(
                    CertError::Read { path, .. } | CertError::TooLarge { path },
                ) if is_key(path) => "tls_key",
                _ => "tls_cert",
            };
            layered.invalid(key, e.to_string())
        })
    }
}

impl ManagerAccess {
    fn new(
        layered: &Layered<ProxyOptions>,
        env_token: &TokenVariable,
    ) -> Result<ManagerAccess, SettingsError> {
        let options = &layered.options.access;
        let bad = |key: &str, message: String| layered.invalid(key, message);
        let allow = if options.admin_allow.is_empty() {
            Cidr::loopback()
        } else {
            options
                .admin_allow
                .iter()
                .map(|c| c.parse())
                .collect::<Result<Vec<Cidr>, String>>()
                .map_err(|e| bad("admin_allow", e))?
        };
        let hosts = options
            .admin_host
            .iter()
            .map(|name| {
                crate::manager::hosts::normalize(name).ok_or_else(|| {
                    bad(
                        "admin_host",
                        format!("{name:?} is not a host name or address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = load_tokens(options.admin_token_file.as_deref(), env_token)
            .map_err(|e| bad("admin_token_file", e))?;
        Ok(ManagerAccess {
            access: Access::new(allow, tokens),
            hosts: AllowedHosts::new(hosts),
        })
    }
}

impl Routing {
    fn new(layered: &Layered<ProxyOptions>) -> Result<Routing, SettingsError> {
        let routing = &layered.options.routing;
        let sticky = StickySpec::parse(&routing.stickysession, routing.affinity_header.as_deref())
            .map_err(|e| match e {
                crate::sticky::SpecError::Header(h) => layered.invalid(
                    "affinity_header",
                    format!("{h:?} is not a valid header name"),
                ),
                other => layered.invalid(
                    "stickysession",
                    format!("{:?}: {other}", routing.stickysession),
                ),
            })?;
        let failonstatus = routing
            .failonstatus
            .iter()
            .map(|code| {
                StatusCode::from_u16(*code).map_err(|_| {
                    layered.invalid("failonstatus", format!("{code} is not an HTTP status code"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = routing
            .trusted_proxy
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Cidr>, String>>()
            .map_err(|e| layered.invalid("trusted_proxy", e))?;
        if routing.proxy_protocol && trusted_proxies.is_empty() {
            return Err(layered.invalid(
                "proxy_protocol",
                format!(
                    "it is accepted only from trusted peers: give {} too",
                    layered.name("trusted_proxy")
                ),
            ));
        }
        if routing.failover_after.is_some() && !routing.nofailover {
            return Err(layered.invalid(
                "failover_after",
                format!(
                    "it bounds how long {} keeps a session waiting: give that too",
                    layered.name("nofailover")
                ),
            ));
        }
        Ok(Routing {
            sticky,
            nofailover: routing.nofailover,
            failover_after: routing.failover_after.map(|span| span.get()),
            unknown_route: routing.unknown_route,
            lbmethod: routing.lbmethod,
            retry: routing.retry.get(),
            failonstatus,
            trusted_proxies,
            proxy_protocol: routing.proxy_protocol,
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
    use std::path::PathBuf;

    fn settings(args: &[&str]) -> Result<Settings, SettingsError> {
        let argv: Vec<OsString> = std::iter::once("stickyroute-proxy")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        Settings::new(read(&argv)?, None)
    }

    #[test]
    fn defaults_follow_apache_where_apache_has_one() {
        let s = settings(&["--routemap", "/m"]).unwrap();
        let routing = s.routing.load();
        assert_eq!(routing.retry, Duration::from_secs(60));
        assert_eq!(routing.lbmethod, LbMethod::Byrequests);
        assert!(!routing.nofailover);
        assert_eq!(routing.unknown_route, UnknownRoute::Balance);
        assert_eq!(
            s.member_port,
            stickyroute_relay::settings::shared::AGENT_PORT
        );
        assert_eq!(s.listen, [SocketAddr::from(([0, 0, 0, 0], 8080))]);
        assert_eq!(s.admin_listen, SocketAddr::from(([127, 0, 0, 1], 9900)));
        assert!(s.health.is_none());
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.json");
        std::fs::write(
            &file,
            r#"{"routemap": "/etc/m", "nofailover": true, "retry": "30s", "lbmethod": "bybusyness",
                "failonstatus": [503], "listen": ["127.0.0.1:8080", "127.0.0.1:8081"], "connect_timeout": 2}"#,
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let s = settings(&["--config", config, "--retry", "5s", "--nofailover=false"]).unwrap();
        let routing = s.routing.load();
        assert_eq!(s.routemap, MapLocation::File(PathBuf::from("/etc/m")));
        assert_eq!(routing.retry, Duration::from_secs(5), "the flag wins");
        assert!(!routing.nofailover, "an explicit false flag wins too");
        assert_eq!(routing.lbmethod, LbMethod::Bybusyness);
        assert_eq!(routing.failonstatus, [StatusCode::SERVICE_UNAVAILABLE]);
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.upstream.connect, Duration::from_secs(2));

        std::fs::write(&file, r#"{"routemap": "/m", "nofailvoer": true}"#).unwrap();
        let error = settings(&["--config", config]).err().unwrap().to_string();
        assert!(
            error.contains("unknown key \"nofailvoer\" (did you mean \"nofailover\"?)"),
            "{error}"
        );
        std::fs::write(&file, r#"{"routemap": "/m", "health_path": "health"}"#).unwrap();
        let error = settings(&["--config", config]).err().unwrap().to_string();
        assert_eq!(
            error,
            format!("{config} key \"health_path\": \"health\" must start with '/'")
        );
    }

    #[test]
    fn rejects_what_cannot_work_naming_the_flag() {
        let error = |args: &[&str]| settings(args).err().unwrap().to_string();
        assert!(error(&[]).contains("no route map"));
        assert!(error(&["--routemap", "/m", "--failonstatus", "700"]).contains("700"));
        assert_eq!(
            error(&["--routemap", "/m", "--health-path", "health"]),
            "--health-path: \"health\" must start with '/'"
        );
        assert!(
            error(&["--routemap", "/m", "--stickysession", "bal ance"])
                .starts_with("--stickysession")
        );
        assert!(
            error(&["--routemap", "/m", "--affinity-header", "x y"])
                .starts_with("--affinity-header")
        );
        assert!(error(&["--routemap", "/m", "--member-port", "0"]).contains("member-port"));
        assert!(
            error(&["--routemap", "/m", "--admin-allow", "10.8.2.0/40"])
                .starts_with("--admin-allow")
        );
        assert!(error(&["--routemap", "/m", "--routemap-configmap", "ns/m"]).contains("not both"));
        assert!(error(&["--routemap-configmap", "routemap"]).contains("NAMESPACE/NAME"));
        assert!(
            error(&["--routemap", "/m", "--log-level", "info,relay=loud"])
                .starts_with("--log-level: \"info,relay=loud\" is not a log filter")
        );
        for bad in ["web.ns.svc", ".web..svc", ".web/ns"] {
            assert!(
                error(&["--routemap", "/m", "--member-domain-suffix", bad])
                    .starts_with("--member-domain-suffix"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_configmap_on_the_command_line_replaces_the_files_map_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.json");
        std::fs::write(&file, r#"{"routemap": "/etc/m", "routemap_key": "routes"}"#).unwrap();
        let s = settings(&[
            "--config",
            file.to_str().unwrap(),
            "--routemap-configmap",
            "shop/route-map",
            "--member-domain-suffix",
            ".web.shop.svc.cluster.local",
        ])
        .unwrap();
        assert_eq!(s.routemap.to_string(), "configmap:shop/route-map#routes");
        assert_eq!(s.member_domain_suffix, ".web.shop.svc.cluster.local");
    }

    #[test]
    fn routing_access_and_the_log_level_are_applied_on_reload_and_help_says_which() {
        let live = reloadable();
        for key in [
            "retry",
            "stickysession",
            "admin_allow",
            "admin_host",
            "admin_token_file",
            "log_level",
        ] {
            assert!(live.contains(key), "{key}");
        }
        for key in [
            "listen",
            "workers",
            "log_format",
            "agent_admin_port",
            "agent_poll_interval",
            "health_path",
        ] {
            assert!(!live.contains(key), "{key}");
        }
        assert_eq!(
            stickyroute_relay::settings::misheaded::<ProxyOptions>(&live),
            Vec::<String>::new(),
            "every setting under an \"applied on reload\" heading, and only those, is reloaded"
        );
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_peers_and_the_access_log_a_destination() {
        let error = settings(&["--routemap", "/m", "--proxy-protocol"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with("--proxy-protocol") && error.contains("--trusted-proxy"),
            "{error}"
        );
        let s = settings(&[
            "--routemap",
            "/m",
            "--proxy-protocol",
            "--trusted-proxy",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert!(s.routing.load().proxy_protocol);
        let error = settings(&["--routemap", "/m", "--access-log", ""])
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("--access-log"), "{error}");
        let s = settings(&[
            "--routemap",
            "/m",
            "--access-log",
            "-",
            "--access-log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            s.access_log,
            Some(stickyroute_relay::access_log::AccessLogConfig {
                destination: stickyroute_relay::access_log::Destination::Stdout,
                format: stickyroute_relay::access_log::Format::Json,
            })
        );
    }

    #[test]
    fn the_access_settings_are_validated_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "ops:correct-horse-battery-staple\n").unwrap();
        let s = settings(&[
            "--routemap",
            "/m",
            "--admin-allow",
            "10.8.2.0/24",
            "--admin-host",
            "Admin.Shop.svc",
            "--admin-token-file",
            tokens.to_str().unwrap(),
        ])
        .unwrap();
        let current = s.access.load();
        let local = "127.0.0.1".parse().unwrap();
        assert!(current.hosts.allows(
            Some(&http::HeaderValue::from_static("admin.shop.svc")),
            local
        ));
        let headers = http::HeaderMap::new();
        assert_eq!(
            current
                .access
                .check("10.8.2.7".parse().unwrap(), &headers)
                .unwrap_err(),
            crate::manager::access::Denied::Token,
            "allowed by address, and then a token is needed"
        );
        std::fs::remove_file(&tokens).unwrap();
        let error = settings(&[
            "--routemap",
            "/m",
            "--admin-token-file",
            tokens.to_str().unwrap(),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(error.starts_with("--admin-token-file"), "{error}");
        let error = settings(&["--routemap", "/m", "--admin-host", "bad_name"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("--admin-host"), "{error}");
    }
}
