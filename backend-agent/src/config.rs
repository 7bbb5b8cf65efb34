//! The agent's options, each declared once (here, or in the shared groups of
//! [`stickyroute_relay::settings::shared`]), read under the same layering rule as the
//! proxy's (defaults < config file < environment < flags), and validated into [`Settings`].
//! Whether a reload can change a setting is which group it is in: [`CookieOptions`] and the
//! log level ([`LogLevelOptions`]) are applied on SIGHUP (see [`reloadable`]), everything
//! else needs a restart.

use crate::app_health::AppCheck;
use crate::drain::DrainLimits;
use crate::identity::Identity;
use crate::inject::{CookieAttributes, CookieSecure, DomainMode, SameSite};
use crate::session::SessionMatcher;
use arc_swap::ArcSwap;
use clap::{Args, Parser};
use http::uri::Authority;
use routemap::cookie::{DEFAULT_COOKIE_NAME, DEFAULT_PREFIX, StickyCookie};
use routemap::source::MapLocation;
use routemap::{Key, RouteId};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use stickyroute_relay::access_log::AccessLogConfig;
use stickyroute_relay::process::lifecycle::ShutdownTiming;
use stickyroute_relay::process::logging::LogFilter;
use stickyroute_relay::serve::ServerLimits;
use stickyroute_relay::settings::shared::{
    AGENT_PORT, AccessLogOptions, AdminOptions, ClientLimitOptions, LogFormat, LogFormatOptions,
    LogLevelOptions, MapOptions, ShutdownOptions, UpstreamOptions, WorkerOptions,
};
use stickyroute_relay::settings::{Layered, SettingsError, Span, keys_of, load};
use stickyroute_relay::upstream::forward::UpstreamTimeouts;

pub const LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), AGENT_PORT);
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// The agent's defaults for shared settings whose defaults differ between the binaries.
const OWN_DEFAULTS: [(&str, &str); 1] = [("admin_listen", ADMIN_LISTEN)];

/// Sits in front of one app instance, finds that instance's route in the central route map
/// and sets the `balanceid=route.<ROUTE>` cookie the stickyroute proxy (or Apache's
/// mod_proxy_balancer) routes by. Everything else passes through unchanged.
///
/// Every option can also be set in the config file (`--config`; the key is the option's
/// name with `_` for `-`) or in its environment variable; flags win over the environment,
/// which wins over the file. SIGHUP re-reads the route map and the config file and applies
/// the options under the headings marked "applied on reload"; the others need a restart.
#[derive(Debug, Clone, Parser)]
#[command(name = "stickyroute-agent", version)]
pub struct AgentOptions {
    /// A JSON config file of settings (keys spelled like the flags, `_` for `-`); the
    /// environment and flags override it.
    #[arg(long, env = "STICKYROUTE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept client (proxy) traffic on; its port is the proxy's default
    /// member port.
    #[arg(long, default_value_t = LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The app instance, as HOST:PORT (spoken to in HTTP/1.1 with keep-alive).
    #[arg(long, required = true, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(flatten)]
    pub map: MapOptions,
    #[command(flatten)]
    pub instance: InstanceOptions,
    #[command(flatten)]
    pub workers: WorkerOptions,
    #[command(flatten)]
    pub log_format: LogFormatOptions,
    #[command(flatten)]
    pub access_log: AccessLogOptions,
    #[command(flatten)]
    pub upstream_limits: UpstreamOptions,
    #[command(flatten)]
    pub client_limits: ClientLimitOptions,
    #[command(flatten)]
    pub shutdown: ShutdownOptions,
    #[command(flatten)]
    pub app_health: AppHealthOptions,
    #[command(flatten)]
    pub drain: DrainOptions,
    // The groups a reload applies, last: each one's help heading carries over to the
    // groups after it.
    #[command(flatten)]
    pub cookie: CookieOptions,
    #[command(flatten)]
    pub log_level: LogLevelOptions,
}

/// The config-file keys of the settings a reload applies: those of the groups whose
/// values are read where they are used (every response, every log line) rather than built
/// into what runs.
pub fn reloadable() -> BTreeSet<String> {
    let mut keys = keys_of::<CookieOptions>();
    keys.extend(keys_of::<LogLevelOptions>());
    keys
}

/// The active check of the app, off unless `--app-health-path` is given.
#[derive(Debug, Clone, Args)]
pub struct AppHealthOptions {
    /// GET this path on the app at an interval: after 2 failures in a row (no answer in
    /// time, or a status other than 2xx/3xx) the agent forwards nothing, answers as for an
    /// unreachable app (the proxy sends the request to another member) and reports unready;
    /// after 2 passes it forwards again.
    #[arg(long, value_name = "PATH")]
    pub app_health_path: Option<String>,
    /// Time between checks.
    #[arg(long, default_value_t = Span::from_secs(2), value_name = "DURATION")]
    pub app_health_interval: Span,
    /// How long the app has to answer a check.
    #[arg(long, default_value_t = Span::from_secs(1), value_name = "DURATION")]
    pub app_health_timeout: Span,
}

pub const DRAIN_IDLE: Span = Span::from_secs(30);
pub const DRAIN_TIMEOUT: Span = Span::from_secs(120);

/// How a drain (SIGTERM, `POST /drain`) ends. While it lasts the proxy sends this member
/// its sessions and no new ones.
#[derive(Debug, Clone, Args)]
pub struct DrainOptions {
    /// The drain is done once no request of a session has arrived for this long; on
    /// SIGTERM the agent then stops (after at least --drain-delay).
    #[arg(long, default_value_t = DRAIN_IDLE, value_name = "DURATION")]
    pub drain_idle: Span,
    /// The drain is done this long after it began, however busy its sessions still are.
    /// Keep drain timeout + grace period below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value_t = DRAIN_TIMEOUT, value_name = "DURATION")]
    pub drain_timeout: Span,
}

impl DrainOptions {
    pub fn limits(&self) -> DrainLimits {
        DrainLimits {
            idle: self.drain_idle.get(),
            timeout: self.drain_timeout.get(),
        }
    }
}

/// Which entry of the map is this instance's.
#[derive(Debug, Clone, Args)]
pub struct InstanceOptions {
    /// This instance's address key in the map. Default: the local address each connection
    /// arrived on (Apache's SERVER_ADDR).
    #[arg(long, env = "POD_IP", value_name = "IP")]
    pub server_addr: Option<IpAddr>,
    /// This instance's name key in the map (a StatefulSet pod name such as web-0), tried
    /// when the address is not in the map. Default: the host name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
}

/// When and how the cookie is set: read for every response, so a reload (SIGHUP) applies
/// them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cookie (applied on reload)")]
pub struct CookieOptions {
    /// Name of the app's session cookie; its presence in a request (or its creation by a
    /// response) starts stickiness. Case-insensitive, like Apache's `[NC]`. Repeatable.
    #[arg(long = "session-cookie", value_delimiter = ',', value_name = "NAME")]
    pub session_cookies: Vec<String>,
    /// A regular expression over the whole Cookie header, like the classic Apache setup's
    /// `RewriteCond %{HTTP_COOKIE}`; a match counts as a session.
    #[arg(long, value_name = "REGEX")]
    pub session_cookie_regex: Option<String>,
    /// Set the cookie on every response, session or not (the classic Apache setup's
    /// "track all sessions").
    #[arg(long)]
    pub track_all: bool,
    /// Name of the cookie the proxy routes by.
    #[arg(long, default_value = DEFAULT_COOKIE_NAME, value_name = "NAME")]
    pub cookie_name: String,
    /// What comes before the route in the cookie value: PREFIX.ROUTE.
    #[arg(long, default_value = DEFAULT_PREFIX, value_name = "PREFIX")]
    pub cookie_prefix: String,
    /// Cookie Domain: `host` (the request's host without its port, like Apache's
    /// %{HTTP_HOST}), `none` (host-only cookie), or a fixed domain such as `.example.com`
    /// for stickiness across subdomains.
    #[arg(long, default_value = "host", value_name = "host|none|DOMAIN")]
    pub cookie_domain: String,
    /// When to add `Secure` (the browser then sends the cookie over HTTPS only): `auto`
    /// when the request came over HTTPS as the proxy in front says (`X-Forwarded-Proto:
    /// https`), `always`, or `never`. The flag alone means `always`.
    #[arg(
        long,
        value_enum,
        num_args = 0..=1,
        default_value_t = CookieSecure::Auto,
        default_missing_value = "always",
        value_name = "auto|always|never"
    )]
    pub cookie_secure: CookieSecure,
    /// Add `HttpOnly`: page scripts cannot read the cookie. Without it they can
    /// (`document.cookie`); the proxy is the only one that needs it.
    #[arg(long)]
    pub cookie_httponly: bool,
    /// Add `SameSite=...`. Without it Chrome and Edge treat the cookie as `Lax` (not sent
    /// on cross-site subrequests and POSTs); Firefox and Safari send it cross-site. `none`
    /// needs `Secure`: it is written only on responses that carry `Secure`.
    #[arg(long, value_enum, value_name = "lax|strict|none")]
    pub cookie_samesite: Option<SameSite>,
    /// Add `Max-Age=SECONDS`; without it the cookie is a session cookie, which the browser
    /// drops when it closes (or keeps, when it restores sessions).
    #[arg(long, value_name = "SECONDS")]
    pub cookie_max_age: Option<u64>,
    /// Route to issue when this instance's keys are not in the map (otherwise no cookie).
    #[arg(long, value_name = "ROUTE")]
    pub default_route: Option<String>,
    /// Never set the cookie on requests whose path starts with PREFIX (static content,
    /// health checks). Repeatable.
    #[arg(long = "skip-path", value_name = "PREFIX")]
    pub skip_paths: Vec<String>,
}

/// When and how the cookie is set, validated: what a reload may replace.
#[derive(Debug)]
pub struct CookiePolicy {
    pub sessions: SessionMatcher,
    pub track_all: bool,
    pub cookie: StickyCookie,
    pub attributes: CookieAttributes,
    pub default_route: Option<RouteId>,
    pub skip_paths: Vec<String>,
}

/// Everything the agent runs with, validated.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Authority,
    pub identity: Identity,
    /// Replaced whole by a reload; read for every response.
    pub policy: ArcSwap<CookiePolicy>,
    pub routemap: MapLocation,
    pub routemap_debounce: std::time::Duration,
    pub admin_listen: SocketAddr,
    pub workers: usize,
    pub timeouts: UpstreamTimeouts,
    pub limits: ServerLimits,
    pub max_connections: Option<usize>,
    pub log_format: LogFormat,
    /// `--access-log`, opened when the agent starts.
    pub access_log: Option<AccessLogConfig>,
    /// `--app-health-path`, with its timing.
    pub app_check: Option<AppCheck>,
    /// Applied to the running logger by a reload.
    pub log_level: LogFilter,
    pub shutdown: ShutdownTiming,
    pub drain: DrainLimits,
    /// What these settings were read from, so that a reload reads them again the same way.
    pub source: Layered<AgentOptions>,
}

/// Reads the options from `argv` (program name first), the config file it names and the
/// environment.
pub fn read(argv: &[OsString]) -> Result<Layered<AgentOptions>, SettingsError> {
    load(argv, &OWN_DEFAULTS)
}

impl Settings {
    /// Reads and validates; `host_name` is the last fallback for the name key.
    pub fn read(argv: &[OsString], host_name: Option<String>) -> Result<Settings, SettingsError> {
        Settings::new(read(argv)?, host_name)
    }

    pub fn new(
        layered: Layered<AgentOptions>,
        host_name: Option<String>,
    ) -> Result<Settings, SettingsError> {
        let options = &layered.options;
        let text = options.upstream.clone().unwrap_or_default();
        let upstream: Authority = text
            .parse()
            .ok()
            .filter(|a: &Authority| a.port_u16().is_some())
            .ok_or_else(|| layered.invalid("upstream", format!("{text:?} is not HOST:PORT")))?;
        let policy = CookiePolicy::new(&layered)?;
        let name = options.instance.server_name.clone().or(host_name);
        let upstream_limits = &options.upstream_limits;
        Ok(Settings {
            listen: options.listen,
            upstream,
            identity: Identity::new(
                options.instance.server_addr,
                name.as_deref(),
                options.listen.ip(),
            ),
            policy: ArcSwap::from_pointee(policy),
            routemap: options.map.location(&layered)?,
            routemap_debounce: options.map.routemap_debounce.get(),
            admin_listen: options.admin.admin_listen,
            workers: options.workers.count(),
            timeouts: upstream_limits.timeouts(),
            limits: options.client_limits.limits(upstream_limits.idle_timeout),
            max_connections: options.client_limits.max_connections(),
            log_format: options.log_format.log_format,
            access_log: options.access_log.config(&layered)?,
            app_check: app_check(&layered)?,
            log_level: options.log_level.filter(&layered)?,
            shutdown: options.shutdown.timing(),
            drain: options.drain.limits(),
            source: layered,
        })
    }
}

/// `--app-health-path`, checked: a path (and query) the app can be asked for.
fn app_check(layered: &Layered<AgentOptions>) -> Result<Option<AppCheck>, SettingsError> {
    let options = &layered.options.app_health;
    let Some(path) = &options.app_health_path else {
        return Ok(None);
    };
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        return Err(layered.invalid(
            "app_health_path",
            format!("{path:?} is not a path such as /healthz"),
        ));
    }
    Ok(Some(AppCheck {
        path: path.clone(),
        interval: options.app_health_interval.get(),
        timeout: options.app_health_timeout.get(),
    }))
}

impl CookiePolicy {
    fn new(layered: &Layered<AgentOptions>) -> Result<CookiePolicy, SettingsError> {
        let options = &layered.options.cookie;
        let bad = |key: &str, message: String| layered.invalid(key, message);
        if options.session_cookies.is_empty()
            && options.session_cookie_regex.is_none()
            && !options.track_all
        {
            return Err(SettingsError::Value {
                origin: stickyroute_relay::settings::Origin::Default,
                message: "nothing would ever set the cookie: give --session-cookie NAME, --session-cookie-regex RE or --track-all".to_owned(),
            });
        }
        if let Some(name) = options
            .session_cookies
            .iter()
            .find(|n| StickyCookie::new(n, "x").is_err())
        {
            return Err(bad(
                "session_cookie",
                format!("{name:?} is not a valid cookie name"),
            ));
        }
        let sessions = SessionMatcher::new(
            &options.session_cookies,
            options.session_cookie_regex.as_deref(),
        )
        .map_err(|e| bad("session_cookie_regex", e.to_string()))?;
        let cookie =
            StickyCookie::new(&options.cookie_name, &options.cookie_prefix).map_err(|e| {
                bad(
                    "cookie_prefix",
                    format!("{e} (with --cookie-name {:?})", options.cookie_name),
                )
            })?;
        let domain = match options.cookie_domain.as_str() {
            "host" => DomainMode::RequestHost,
            "none" => DomainMode::HostOnly,
            fixed => {
                let bare = fixed.strip_prefix('.').unwrap_or(fixed);
                match Key::parse(bare) {
                    Ok(Key::Name(_)) => DomainMode::Fixed(fixed.to_ascii_lowercase()),
                    _ => {
                        return Err(bad(
                            "cookie_domain",
                            format!("{fixed:?} is not `host`, `none` or a domain name"),
                        ));
                    }
                }
            }
        };
        if options.cookie_samesite == Some(SameSite::None)
            && options.cookie_secure == CookieSecure::Never
        {
            return Err(bad(
                "cookie_samesite",
                format!(
                    "none needs Secure, which {} never turns on (browsers reject a SameSite=None cookie without Secure); use --cookie-secure auto or always",
                    layered.name("cookie_secure")
                ),
            ));
        }
        let default_route = options
            .default_route
            .as_deref()
            .map(|r| RouteId::parse(r).map_err(|e| bad("default_route", format!("{r:?}: {e}"))))
            .transpose()?;
        if let Some(path) = options.skip_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(bad("skip_path", format!("{path:?} must start with '/'")));
        }
        Ok(CookiePolicy {
            sessions,
            track_all: options.track_all,
            cookie,
            attributes: CookieAttributes {
                domain,
                secure: options.cookie_secure,
                http_only: options.cookie_httponly,
                same_site: options.cookie_samesite,
                max_age: options.cookie_max_age,
            },
            default_route,
            skip_paths: options.skip_paths.clone(),
        })
    }
}

/// The machine's host name, the last fallback for the name key.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(extra: &[&str]) -> Vec<OsString> {
        [
            "stickyroute-agent",
            "--upstream",
            "127.0.0.1:9000",
            "--routemap",
            "/m",
        ]
        .iter()
        .chain(extra)
        .map(OsString::from)
        .collect()
    }

    fn error(extra: &[&str]) -> String {
        Settings::read(&argv(extra), None)
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_app_check_needs_a_path() {
        let e = error(&["--track-all", "--app-health-path", "healthz"]);
        assert!(
            e.starts_with("--app-health-path") && e.contains("/healthz"),
            "{e}"
        );
        let s = Settings::read(
            &argv(&[
                "--track-all",
                "--app-health-path",
                "/healthz?deep=1",
                "--app-health-interval",
                "500ms",
            ]),
            None,
        )
        .unwrap();
        let check = s.app_check.unwrap();
        assert_eq!(
            (check.path.as_str(), check.interval),
            ("/healthz?deep=1", std::time::Duration::from_millis(500))
        );
        assert_eq!(check.timeout, std::time::Duration::from_secs(1));
    }

    #[test]
    fn refuses_configurations_that_cannot_work() {
        assert!(error(&[]).contains("nothing would ever set the cookie"));
        assert!(
            error(&["--track-all", "--session-cookie-regex", "("])
                .starts_with("--session-cookie-regex")
        );
        assert!(error(&["--track-all", "--cookie-prefix", "a;b"]).starts_with("--cookie-prefix"));
        assert!(
            error(&["--track-all", "--cookie-domain", "exa mple"]).starts_with("--cookie-domain")
        );
        assert!(
            error(&[
                "--track-all",
                "--cookie-samesite",
                "none",
                "--cookie-secure",
                "never"
            ]) == "--cookie-samesite: none needs Secure, which --cookie-secure never turns on (browsers reject a SameSite=None cookie without Secure); use --cookie-secure auto or always"
        );
        assert!(error(&["--track-all", "--default-route", "www.1"]).starts_with("--default-route"));
        assert!(error(&["--track-all", "--skip-path", "static"]).contains("must start with '/'"));
        assert!(error(&["--session-cookie", "bad name"]).contains("not a valid cookie name"));
        let bad_upstream: Vec<OsString> = [
            "a",
            "--upstream",
            "localhost",
            "--routemap",
            "/m",
            "--track-all",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            Settings::read(&bad_upstream, None)
                .err()
                .unwrap()
                .to_string(),
            "--upstream: \"localhost\" is not HOST:PORT"
        );
    }

    #[test]
    fn accepts_the_classic_apache_setup() {
        let settings = Settings::read(
            &argv(&[
                "--session-cookie",
                "JSESSIONID,PHPSESSID",
                "--cookie-domain",
                ".Example.com",
            ]),
            Some("web-0".into()),
        )
        .unwrap();
        let policy = settings.policy.load();
        assert_eq!(
            policy.attributes.domain,
            DomainMode::Fixed(".example.com".into())
        );
        assert_eq!(policy.cookie.name(), "balanceid");
        assert_eq!(settings.upstream.as_str(), "127.0.0.1:9000");
        assert_eq!(settings.listen.port(), AGENT_PORT);
        assert_eq!(settings.admin_listen.port(), 9901);
    }

    #[test]
    fn the_cookie_settings_and_the_log_level_are_applied_on_reload_and_help_says_which() {
        let live = reloadable();
        assert!(live.contains("cookie_name") && live.contains("log_level"));
        assert!(!live.contains("log_format") && !live.contains("upstream"));
        assert_eq!(
            stickyroute_relay::settings::misheaded::<AgentOptions>(&live),
            Vec::<String>::new(),
            "every setting under an \"applied on reload\" heading, and only those, is reloaded"
        );
        assert!(error(&["--track-all", "--log-level", "debug,x=loud"]).starts_with("--log-level"));
    }

    #[test]
    fn cookie_secure_is_auto_by_default_and_the_old_switch_forms_still_read() {
        let secure = |extra: &[&str]| {
            let mut words = vec!["--track-all"];
            words.extend_from_slice(extra);
            Settings::read(&argv(&words), None)
                .unwrap()
                .policy
                .load()
                .attributes
                .secure
        };
        assert_eq!(secure(&[]), CookieSecure::Auto);
        assert_eq!(secure(&["--cookie-secure"]), CookieSecure::Always);
        assert_eq!(
            secure(&["--cookie-secure", "--cookie-httponly"]),
            CookieSecure::Always
        );
        assert_eq!(secure(&["--cookie-secure", "never"]), CookieSecure::Never);
        assert_eq!(secure(&["--cookie-secure=auto"]), CookieSecure::Auto);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.json");
        let config = file.to_str().unwrap();
        for (value, expected) in [
            ("true", CookieSecure::Always),
            ("false", CookieSecure::Never),
            ("\"never\"", CookieSecure::Never),
        ] {
            std::fs::write(&file, format!(r#"{{"cookie_secure": {value}}}"#)).unwrap();
            assert_eq!(secure(&["--config", config]), expected, "{value}");
        }
        std::fs::write(&file, r#"{"cookie_secure": "sometimes"}"#).unwrap();
        let message = error(&["--track-all", "--config", config]);
        assert!(
            message.ends_with("\"sometimes\" is not one of auto, always, never"),
            "{message}"
        );
    }

    #[test]
    fn the_agent_reads_a_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.json");
        std::fs::write(
            &file,
            r#"{"upstream": "127.0.0.1:9000", "routemap": "/m", "session_cookie": ["JSESSIONID"], "skip_path": ["/static"]}"#,
        )
        .unwrap();
        let argv: Vec<OsString> = ["stickyroute-agent", "--config", file.to_str().unwrap()]
            .iter()
            .map(OsString::from)
            .collect();
        let settings = Settings::read(&argv, None).unwrap();
        assert_eq!(settings.policy.load().skip_paths, ["/static"]);
        std::fs::write(
            &file,
            r#"{"upstream": "127.0.0.1:9000", "routemap": "/m", "track_all": "yes"}"#,
        )
        .unwrap();
        let error = Settings::read(&argv, None).err().unwrap().to_string();
        assert!(
            error.ends_with("agent.json key \"track_all\": \"yes\" is not true or false"),
            "{error}"
        );
    }
}
