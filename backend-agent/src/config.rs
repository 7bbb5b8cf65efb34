//! The agent's command line, and its validation into [`Settings`].

use crate::identity::Identity;
use crate::inject::{CookieAttributes, DomainMode, SameSite};
use crate::session::SessionMatcher;
use clap::Parser;
use http::uri::Authority;
use routemap::cookie::{CookieSpecError, DEFAULT_COOKIE_NAME, DEFAULT_PREFIX, StickyCookie};
use routemap::{Key, RouteId};
use std::net::{IpAddr, SocketAddr};
use stickyroute_relay::cli::{ClientLimitArgs, LogArgs, MapArgs, ShutdownArgs, UpstreamArgs};

/// Sits in front of one app instance, finds that instance's route in the central route map
/// and sets the `balanceid=route.<ROUTE>` cookie the stickyroute proxy (or Apache's
/// mod_proxy_balancer) routes by. Everything else passes through unchanged.
#[derive(Debug, Parser)]
#[command(name = "stickyroute-agent", version)]
pub struct AgentArgs {
    /// Address to accept client (proxy) traffic on.
    #[arg(
        long,
        env = "STICKYROUTE_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// The app instance, as HOST:PORT (spoken to in HTTP/1.1 with keep-alive).
    #[arg(long, env = "STICKYROUTE_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: String,
    /// Address of the admin endpoints (/healthz, /readyz, /metrics, /status).
    #[arg(
        long,
        env = "STICKYROUTE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9901",
        value_name = "ADDR"
    )]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub map: MapArgs,

    /// Name of the app's session cookie; its presence in a request (or its creation by a
    /// response) starts stickiness. Case-insensitive, like Apache's [NC]. Repeatable.
    #[arg(
        long = "session-cookie",
        env = "STICKYROUTE_SESSION_COOKIE",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub session_cookies: Vec<String>,
    /// A regular expression over the whole Cookie header, like the seed's
    /// `RewriteCond %{HTTP_COOKIE}`; a match counts as a session.
    #[arg(long, value_name = "REGEX")]
    pub session_cookie_regex: Option<String>,
    /// Set the cookie on every response, session or not (the seed's "track all sessions").
    #[arg(long)]
    pub track_all: bool,

    /// Name of the cookie the proxy routes by.
    #[arg(long, default_value = DEFAULT_COOKIE_NAME, value_name = "NAME")]
    pub cookie_name: String,
    /// What comes before the route in the cookie value: PREFIX.ROUTE.
    #[arg(long, default_value = DEFAULT_PREFIX, value_name = "PREFIX")]
    pub cookie_prefix: String,
    /// Cookie Domain: `host` (the request's host without its port, like the seed's
    /// %{HTTP_HOST}), `none` (host-only cookie), or a fixed domain such as `.example.com`
    /// for stickiness across subdomains.
    #[arg(long, default_value = "host", value_name = "host|none|DOMAIN")]
    pub cookie_domain: String,
    /// Add `Secure` (send the cookie over HTTPS only).
    #[arg(long)]
    pub cookie_secure: bool,
    /// Add `HttpOnly` (hide the cookie from page scripts).
    #[arg(long)]
    pub cookie_httponly: bool,
    /// Add `SameSite=...`.
    #[arg(long, value_enum, value_name = "lax|strict|none")]
    pub cookie_samesite: Option<SameSite>,
    /// Add `Max-Age=SECONDS`; without it the cookie lasts for the browser session.
    #[arg(long, value_name = "SECONDS")]
    pub cookie_max_age: Option<u64>,

    /// This instance's address key in the map. Default: the local address each connection
    /// arrived on (Apache's SERVER_ADDR).
    #[arg(long, env = "POD_IP", value_name = "IP")]
    pub server_addr: Option<IpAddr>,
    /// This instance's name key in the map (a StatefulSet pod name such as web-0), tried
    /// when the address is not in the map. Default: the host name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// Route to issue when this instance's keys are not in the map (otherwise no cookie).
    #[arg(long, value_name = "ROUTE")]
    pub default_route: Option<String>,
    /// Never set the cookie on requests whose path starts with PREFIX (static content,
    /// health checks). Repeatable.
    #[arg(long = "skip-path", value_name = "PREFIX")]
    pub skip_paths: Vec<String>,

    /// Worker threads, each with its own event loop and connection pool to the app.
    /// Default: one per core.
    #[arg(long, env = "STICKYROUTE_WORKERS", value_name = "COUNT")]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub upstream_limits: UpstreamArgs,
    #[command(flatten)]
    pub client_limits: ClientLimitArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--upstream {0:?} is not HOST:PORT")]
    Upstream(String),
    #[error(
        "nothing would ever set the cookie: give --session-cookie NAME, --session-cookie-regex RE or --track-all"
    )]
    NoTrigger,
    #[error("--session-cookie-regex: {0}")]
    Regex(#[from] regex::Error),
    #[error("--session-cookie {0:?} is not a valid cookie name")]
    SessionCookie(String),
    #[error("--cookie-name/--cookie-prefix: {0}")]
    Cookie(#[from] CookieSpecError),
    #[error("--cookie-domain {0:?} is not `host`, `none` or a domain name")]
    Domain(String),
    #[error("--cookie-samesite none requires --cookie-secure (browsers reject it otherwise)")]
    SameSiteNoneInsecure,
    #[error("--default-route {0:?}: {1}")]
    DefaultRoute(String, routemap::route::RouteError),
    #[error("--skip-path {0:?} must start with '/'")]
    SkipPath(String),
}

/// Everything the request path needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub upstream: Authority,
    pub identity: Identity,
    pub sessions: SessionMatcher,
    pub track_all: bool,
    pub cookie: StickyCookie,
    pub attributes: CookieAttributes,
    pub default_route: Option<RouteId>,
    pub skip_paths: Vec<String>,
}

impl AgentArgs {
    pub fn settings(&self, host_name: Option<String>) -> Result<Settings, ConfigError> {
        let upstream: Authority = self
            .upstream
            .parse()
            .ok()
            .filter(|a: &Authority| a.port_u16().is_some())
            .ok_or_else(|| ConfigError::Upstream(self.upstream.clone()))?;
        if self.session_cookies.is_empty() && self.session_cookie_regex.is_none() && !self.track_all
        {
            return Err(ConfigError::NoTrigger);
        }
        if let Some(bad) = self
            .session_cookies
            .iter()
            .find(|n| StickyCookie::new(n, "x").is_err())
        {
            return Err(ConfigError::SessionCookie(bad.clone()));
        }
        let sessions =
            SessionMatcher::new(&self.session_cookies, self.session_cookie_regex.as_deref())?;
        let cookie = StickyCookie::new(&self.cookie_name, &self.cookie_prefix)?;
        let domain = match self.cookie_domain.as_str() {
            "host" => DomainMode::RequestHost,
            "none" => DomainMode::HostOnly,
            fixed => {
                let bare = fixed.strip_prefix('.').unwrap_or(fixed);
                match Key::parse(bare) {
                    Ok(Key::Name(_)) => DomainMode::Fixed(fixed.to_ascii_lowercase()),
                    _ => return Err(ConfigError::Domain(fixed.to_owned())),
                }
            }
        };
        if self.cookie_samesite == Some(SameSite::None) && !self.cookie_secure {
            return Err(ConfigError::SameSiteNoneInsecure);
        }
        let default_route = self
            .default_route
            .as_deref()
            .map(|r| RouteId::parse(r).map_err(|e| ConfigError::DefaultRoute(r.to_owned(), e)))
            .transpose()?;
        if let Some(bad) = self.skip_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::SkipPath(bad.clone()));
        }
        let name = self.server_name.clone().or(host_name);
        Ok(Settings {
            upstream,
            identity: Identity::new(self.server_addr, name.as_deref(), self.listen.ip()),
            sessions,
            track_all: self.track_all,
            cookie,
            attributes: CookieAttributes {
                domain,
                secure: self.cookie_secure,
                http_only: self.cookie_httponly,
                same_site: self.cookie_samesite,
                max_age: self.cookie_max_age,
            },
            default_route,
            skip_paths: self.skip_paths.clone(),
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

    fn args(extra: &[&str]) -> AgentArgs {
        let mut argv = vec![
            "stickyroute-agent",
            "--upstream",
            "127.0.0.1:9000",
            "--routemap",
            "/m",
        ];
        argv.extend_from_slice(extra);
        AgentArgs::try_parse_from(argv).unwrap()
    }

    fn error(extra: &[&str]) -> String {
        args(extra).settings(None).unwrap_err().to_string()
    }

    #[test]
    fn refuses_configurations_that_cannot_work() {
        assert!(error(&[]).contains("nothing would ever set the cookie"));
        assert!(
            error(&["--track-all", "--session-cookie-regex", "("])
                .contains("--session-cookie-regex")
        );
        assert!(error(&["--track-all", "--cookie-prefix", "a;b"]).contains("--cookie-prefix"));
        assert!(error(&["--track-all", "--cookie-domain", "exa mple"]).contains("--cookie-domain"));
        assert!(
            error(&["--track-all", "--cookie-samesite", "none"])
                .contains("requires --cookie-secure")
        );
        assert!(error(&["--track-all", "--default-route", "www.1"]).contains("--default-route"));
        assert!(error(&["--track-all", "--skip-path", "static"]).contains("must start with '/'"));
        assert!(error(&["--session-cookie", "bad name"]).contains("not a valid cookie name"));
        let bad_upstream = AgentArgs::try_parse_from([
            "a",
            "--upstream",
            "localhost",
            "--routemap",
            "/m",
            "--track-all",
        ])
        .unwrap();
        assert!(
            bad_upstream
                .settings(None)
                .unwrap_err()
                .to_string()
                .contains("HOST:PORT")
        );
    }

    #[test]
    fn accepts_the_seed_setup() {
        let settings = args(&[
            "--session-cookie",
            "JSESSIONID,PHPSESSID",
            "--cookie-domain",
            ".Example.com",
        ])
        .settings(Some("web-0".into()))
        .unwrap();
        assert_eq!(
            settings.attributes.domain,
            DomainMode::Fixed(".example.com".into())
        );
        assert_eq!(settings.cookie.name(), "balanceid");
        assert_eq!(settings.upstream.as_str(), "127.0.0.1:9000");
    }
}
