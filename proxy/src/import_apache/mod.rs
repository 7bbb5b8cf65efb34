//! `stickyroute-proxy import-apache`: translate an Apache mod_proxy_balancer setup (like the
//! classic write-up's) into a route map and a proxy config, with a warning for everything
//! that is not translated.
//!
//! One stickyroute-proxy serves one balancer, so a configuration with several
//! `balancer://` names is refused, naming them, unless one is chosen (`--balancer NAME`).
//! Members are plain HTTP: an `https://` (or any other) member is an error, never quietly
//! imported as `http`. Every message names the Apache file and line it is about.
//!
//! Apache configurations are line-oriented, but copies pasted into wikis and blogs (the classic
//! write-up's among them) often lose their line breaks; directives are therefore also split at section
//! tags and at the names of the directives this importer knows.

pub mod cli;

use routemap::{Key, LoadFactor, RouteId, RouteMap, Status};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Directive names that start a new directive even in the middle of a line.
const KNOWN: [&str; 20] = [
    "balancermember",
    "proxypass",
    "proxypassreverse",
    "proxyset",
    "proxypreservehost",
    "proxyrequests",
    "rewriteengine",
    "rewritemap",
    "rewritecond",
    "rewriterule",
    "sethandler",
    "order",
    "allow",
    "deny",
    "require",
    "cacheignoreheaders",
    "servername",
    "header",
    "requestheader",
    "loadmodule",
];

/// One directive or section tag, with the file and line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    file: usize,
    line: usize,
    name: String,
    args: Vec<String>,
}

/// What the import produced.
#[derive(Debug)]
pub struct Imported {
    /// The route map text.
    pub routemap: String,
    /// The proxy config (JSON object), without `routemap` (the caller knows where it goes).
    pub config: Map<String, Value>,
    /// How to run each backend's agent to replace the RewriteRule trick, if one was found.
    pub agent_hint: Option<String>,
    /// Everything not translated, or translated with a caveat.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no BalancerMember found: nothing to import")]
    NoMembers,
    #[error(
        "the configuration has {} balancers: {}; one stickyroute-proxy serves one balancer: give --balancer NAME to import one of them (and run one proxy per balancer)",
        .0.len(),
        .0.join(", ")
    )]
    SeveralBalancers(Vec<String>),
    #[error("no balancer {0} in the configuration (found: {1})")]
    NoSuchBalancer(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// A balancer's name as Apache writes it, without a trailing `/`: `balancer://shop`.
fn balancer_name(url: &str) -> Option<String> {
    let name = url.trim_end_matches('/');
    let bytes = name.as_bytes();
    (bytes.len() > 11 && bytes[..11].eq_ignore_ascii_case(b"balancer://")).then(|| name.to_owned())
}

fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '<' {
            let tag: String = chars.by_ref().take_while(|c| *c != '>').collect();
            out.push(format!("{tag}>"));
        } else if c == '"' {
            chars.next();
            out.push(chars.by_ref().take_while(|c| *c != '"').collect());
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '<' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    out
}

fn directives(file: usize, text: &str) -> Vec<Directive> {
    let mut out: Vec<Directive> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut current: Option<Directive> = None;
        for token in tokens(line) {
            let starts = token.starts_with('<')
                || current.is_none()
                || KNOWN.contains(&token.to_ascii_lowercase().as_str());
            if starts {
                out.extend(current.take());
                if token.starts_with('<') {
                    let inner = token.trim_start_matches('<').trim_end_matches('>');
                    let mut parts = inner.split_whitespace();
                    let name = parts.next().unwrap_or_default().to_owned();
                    out.push(Directive {
                        file,
                        line: n + 1,
                        name: format!("<{name}"),
                        args: parts.map(str::to_owned).collect(),
                    });
                } else {
                    current = Some(Directive {
                        file,
                        line: n + 1,
                        name: token,
                        args: Vec::new(),
                    });
                }
            } else if let Some(d) = current.as_mut() {
                d.args.push(token);
            }
        }
        out.extend(current);
    }
    out
}

/// A `key=value` parameter list (ProxyPass, BalancerMember, ProxySet).
fn params(args: &[String]) -> Vec<(String, String)> {
    args.iter()
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        })
        .collect()
}

/// Apache's `Allow from` forms: `10.8.2.` (a prefix), `10.8.2.0/24`, a full address, `all`.
fn allow_to_cidr(spec: &str) -> Option<String> {
    if spec.eq_ignore_ascii_case("all") {
        return Some("0.0.0.0/0".to_owned());
    }
    if spec.contains('/') || spec.parse::<std::net::IpAddr>().is_ok() {
        return Some(spec.to_owned());
    }
    let parts: Vec<&str> = spec.trim_end_matches('.').split('.').collect();
    if parts.len() < 4 && parts.iter().all(|p| p.parse::<u8>().is_ok()) {
        let mut octets: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        let prefix = octets.len() * 8;
        octets.resize(4, "0".to_owned());
        return Some(format!("{}/{prefix}", octets.join(".")));
    }
    None
}

/// The parameters of one ProxyPass or ProxySet: its balancer (empty when it names none),
/// file index, line, and the `key=value` pairs.
type BalancerParams = (String, usize, usize, Vec<(String, String)>);

struct Member {
    key: Key,
    port: u16,
    route: RouteId,
    loadfactor: LoadFactor,
    status: Status,
    /// Where its BalancerMember is: `FILE:LINE`.
    at: String,
    /// Its worker parameters that stickyroute-proxy has once for all members.
    retry: Option<String>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
}

/// Translates configuration files, given as (name, text), read in order as one
/// configuration. `rewrite_map` is the (name, text) of the `RewriteMap txt:` file, if
/// available, to check against the members. `only` picks one balancer (`balancer://NAME`
/// or `NAME`) of a configuration that has several.
pub fn import(
    files: &[(&str, &str)],
    rewrite_map: Option<(&str, &str)>,
    only: Option<&str>,
) -> Result<Imported, ImportError> {
    let mut warnings = Vec::new();
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    let at = |file: usize, line: usize| format!("{}:{line}", names[file]);
    // The file being read, for the warnings' FILE:LINE.
    let file = std::cell::Cell::new(0);
    let mut warn = |line: usize, message: String| {
        warnings.push(format!("{}:{line}: {message}", names[file.get()]))
    };
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    // Every balancer named anywhere, with where it was first named.
    let mut balancers: Vec<(String, String)> = Vec::new();
    let mut members: Vec<(String, Member)> = Vec::new();
    // Balancer parameters (ProxyPass, ProxySet), in order.
    let mut settings: Vec<BalancerParams> = Vec::new();
    let mut admin_allow: Vec<String> = Vec::new();
    let mut used_balancer: Option<String> = None;
    let mut agent = AgentHint::default();
    let mut map_file: Option<String> = None;
    let note = |balancers: &mut Vec<(String, String)>, name: &str, file: usize, line: usize| {
        if !balancers.iter().any(|(b, _)| b == name) {
            balancers.push((name.to_owned(), at(file, line)));
        }
    };

    let all = files
        .iter()
        .enumerate()
        .flat_map(|(i, (_, text))| directives(i, text));
    for d in all {
        file.set(d.file);
        let name = d.name.to_ascii_lowercase();
        let skipped_branch = sections
            .iter()
            .any(|(s, a)| s == "ifmodule" && a.first().is_some_and(|m| m.starts_with('!')));
        if let Some(section) = name.strip_prefix("</") {
            if sections.last().is_some_and(|(s, _)| s == section) {
                sections.pop();
            } else {
                warn(d.line, format!("unbalanced </{section}>"));
            }
            continue;
        }
        if let Some(section) = name.strip_prefix('<') {
            sections.push((section.to_owned(), d.args.clone()));
            if section == "ifmodule"
                && d.args.first().is_some_and(|m| m.starts_with('!'))
                && !skipped_branch
            {
                warn(
                    d.line,
                    format!(
                        "skipped <IfModule {}>: it applies only where that module is not loaded",
                        d.args.join(" ")
                    ),
                );
            } else if section == "proxy" && !skipped_branch {
                if let Some(balancer) = d.args.first().and_then(|a| balancer_name(a)) {
                    note(&mut balancers, &balancer, d.file, d.line);
                }
            } else if !matches!(section, "ifmodule" | "proxy" | "location") {
                warn(
                    d.line,
                    format!(
                        "<{}> sections are not translated; their contents are read as if outside",
                        d.name.trim_start_matches('<')
                    ),
                );
            }
            continue;
        }
        if skipped_branch {
            continue;
        }
        let in_location = sections
            .iter()
            .rev()
            .find(|(s, _)| s == "location")
            .map(|(_, a)| a.join(" "));
        let in_proxy = sections
            .iter()
            .rev()
            .find(|(s, _)| s == "proxy")
            .and_then(|(_, a)| a.first().and_then(|b| balancer_name(b)));
        match name.as_str() {
            "balancermember" => {
                let mut args = d.args.as_slice();
                let mut balancer = in_proxy.clone();
                if in_proxy.is_none()
                    && let Some(named) = args.first().and_then(|a| balancer_name(a))
                {
                    note(&mut balancers, &named, d.file, d.line);
                    balancer = Some(named);
                    args = &args[1..];
                }
                let Some(url) = args.first() else {
                    warn(d.line, "BalancerMember without a URL".to_owned());
                    continue;
                };
                let here = at(d.file, d.line);
                match member(url, &params(&args[1..]), here.clone(), d.line, &mut warn) {
                    Ok(m) => members.push((balancer.unwrap_or_default(), m)),
                    Err(message) => return Err(ImportError::Invalid(format!("{here}: {message}"))),
                }
            }
            "proxypass" => match (d.args.first(), d.args.get(1)) {
                (Some(path), Some(target)) if target == "!" => {
                    if path.trim_end_matches('/') == "/balancer-manager" {
                        warn(d.line, "`ProxyPass /balancer-manager !`: not needed, the balancer-manager is on the admin listener (--admin-listen)".to_owned());
                    } else {
                        warn(d.line, format!("`ProxyPass {path} !` is not translated: stickyroute-proxy forwards every path"));
                    }
                }
                (Some(path), Some(target)) if balancer_name(target).is_some() => {
                    let balancer = balancer_name(target).unwrap_or_default();
                    note(&mut balancers, &balancer, d.file, d.line);
                    if path != "/" {
                        warn(d.line, format!("ProxyPass path {path} is not translated: stickyroute-proxy forwards every path"));
                    }
                    used_balancer = Some(balancer.clone());
                    settings.push((balancer, d.file, d.line, params(&d.args[2..])));
                }
                _ => warn(d.line, format!("ProxyPass {} is not translated (not a balancer)", d.args.join(" "))),
            },
            "proxyset" => {
                let (balancer, args) = match d.args.first().and_then(|a| balancer_name(a)) {
                    Some(named) => (Some(named), &d.args[1..]),
                    None => (in_proxy.clone(), &d.args[..]),
                };
                let balancer = balancer.unwrap_or_default();
                if !balancer.is_empty() {
                    note(&mut balancers, &balancer, d.file, d.line);
                }
                settings.push((balancer, d.file, d.line, params(args)));
            }
            "allow" if in_location.as_deref().is_some_and(|l| l.contains("balancer-manager")) => {
                for spec in d.args.iter().filter(|a| !a.eq_ignore_ascii_case("from")) {
                    match allow_to_cidr(spec) {
                        Some(cidr) => admin_allow.push(cidr),
                        None => warn(d.line, format!("Allow from {spec} is not translated (host names are not supported)")),
                    }
                }
            }
            "require" if in_location.as_deref().is_some_and(|l| l.contains("balancer-manager")) => {
                if d.args.first().is_some_and(|a| a == "ip") {
                    admin_allow.extend(d.args[1..].iter().filter_map(|s| allow_to_cidr(s)));
                } else {
                    warn(d.line, format!("Require {} is not translated", d.args.join(" ")));
                }
            }
            "order" | "deny" if in_location.is_some() => {}
            "sethandler" if d.args.first().is_some_and(|h| h == "balancer-manager") => {}
            "rewriteengine" => {}
            "rewritemap" => {
                if let Some(path) = d.args.get(1).and_then(|s| s.strip_prefix("txt:")) {
                    map_file = Some(path.to_owned());
                } else {
                    warn(d.line, format!("RewriteMap {} is not a txt: map; not translated", d.args.join(" ")));
                }
            }
            "rewritecond" => agent.condition(&d.args, d.line, &mut warn),
            "rewriterule" => agent.rule(&d.args, d.line, &mut warn),
            "cacheignoreheaders" => warn(d.line, "CacheIgnoreHeaders Set-Cookie: not needed, the agent keeps its cookie out of shared caches".to_owned()),
            _ => warn(d.line, format!("not translated: {} {}", d.name, d.args.join(" "))),
        }
    }
    let chosen = choose_balancer(&balancers, only)?;
    if let Some(chosen) = &chosen {
        for (other, first) in balancers.iter().filter(|(b, _)| b != chosen) {
            warnings.push(format!(
                "{first}: {other} is not imported (--balancer {chosen})"
            ));
        }
    }
    // A member or setting belongs to the chosen balancer, or to none named (then there is
    // only one).
    let ours = |balancer: &str| {
        chosen
            .as_deref()
            .is_none_or(|c| balancer.is_empty() || balancer == c)
    };
    let members: Vec<Member> = members
        .into_iter()
        .filter(|(b, _)| ours(b))
        .map(|(_, m)| m)
        .collect();
    if members.is_empty() {
        return Err(ImportError::NoMembers);
    }
    let mut config = Map::new();
    for (_, file_index, line, params) in settings.iter().filter(|(b, ..)| ours(b)) {
        let prefix = at(*file_index, *line);
        let mut warn = |message: String| warnings.push(format!("{prefix}: {message}"));
        balancer_params(params, &mut config, &mut warn);
    }
    if used_balancer.is_none() {
        warnings.push("no `ProxyPass / balancer://...` found; stickysession and nofailover keep their defaults".to_owned());
    }
    worker_settings(&members, &mut config, &mut warnings);
    let port = most_common_port(&members);
    config.insert("member_port".into(), json!(port));
    if !admin_allow.is_empty() {
        config.insert("admin_allow".into(), json!(admin_allow));
    }
    let header = "# imported from an Apache mod_proxy_balancer configuration by stickyroute-proxy import-apache\n";
    let mut routemap = String::from(header);
    for m in &members {
        let _ = write!(
            routemap,
            "{} {} loadfactor={}",
            m.key, m.route, m.loadfactor
        );
        if m.port != port {
            let _ = write!(routemap, " port={}", m.port);
        }
        if m.status != Status::Enabled {
            let _ = write!(routemap, " status={}", m.status);
        }
        routemap.push('\n');
    }
    // The map's line N+2 is member N's; errors name that BalancerMember's line.
    let map = RouteMap::parse(routemap.as_bytes()).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                let member = e.line.checked_sub(2).and_then(|i| members.get(i));
                let first = match &e.kind {
                    routemap::ErrorKind::DuplicateKey { first_line, .. }
                    | routemap::ErrorKind::DuplicateRoute { first_line, .. } => first_line
                        .checked_sub(2)
                        .and_then(|i| members.get(i))
                        .map(|m| format!(" (first at {})", m.at)),
                    _ => None,
                };
                match member {
                    Some(m) => format!(
                        "{}: {}{}",
                        m.at,
                        describe_duplicate(&e.kind),
                        first.unwrap_or_default()
                    ),
                    None => e.to_string(),
                }
            })
            .collect();
        ImportError::Invalid(lines.join("\n"))
    })?;
    if let Some((path, text)) = rewrite_map {
        check_rewrite_map(path, text, &map, &mut warnings);
    } else if let Some(path) = map_file {
        warnings.push(format!("RewriteMap file {path} was not read (give --rewrite-map FILE to check it against the members)"));
    }
    Ok(Imported {
        routemap,
        config,
        agent_hint: agent.command(),
        warnings,
    })
}

/// What a map error says, for a BalancerMember (a duplicate's own "first on line" names
/// a line of the generated map, so it is replaced by the first member's place).
fn describe_duplicate(kind: &routemap::ErrorKind) -> String {
    match kind {
        routemap::ErrorKind::DuplicateKey { key, .. } => {
            format!("a second BalancerMember for {key}")
        }
        routemap::ErrorKind::DuplicateRoute { route, .. } => {
            format!("a second BalancerMember with route={route}")
        }
        other => other.to_string(),
    }
}

/// The balancer to import: the only one, or the one asked for.
fn choose_balancer(
    balancers: &[(String, String)],
    only: Option<&str>,
) -> Result<Option<String>, ImportError> {
    let listed = || {
        balancers
            .iter()
            .map(|(b, at)| format!("{b} ({at})"))
            .collect::<Vec<_>>()
    };
    match only {
        Some(wanted) => {
            let full = if balancer_name(wanted).is_some() {
                wanted.trim_end_matches('/').to_owned()
            } else {
                format!("balancer://{wanted}")
            };
            balancers
                .iter()
                .find(|(b, _)| b.eq_ignore_ascii_case(&full))
                .map(|(b, _)| Some(b.clone()))
                .ok_or_else(|| ImportError::NoSuchBalancer(full, listed().join(", ")))
        }
        None if balancers.len() > 1 => Err(ImportError::SeveralBalancers(listed())),
        None => Ok(balancers.first().map(|(b, _)| b.clone())),
    }
}

/// Apache's worker parameters that stickyroute-proxy has once for every member: `retry`,
/// `timeout` (waiting for the member's answer) and `connectiontimeout`. When the members
/// disagree, the largest value is used and the difference is said.
fn worker_settings(
    members: &[Member],
    config: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) {
    type Pick = fn(&Member) -> Option<&String>;
    let settings: [(&str, &str, Pick); 3] = [
        ("retry", "retry", |m| m.retry.as_ref()),
        ("timeout", "response_timeout", |m| m.timeout.as_ref()),
        ("connectiontimeout", "connect_timeout", |m| {
            m.connect_timeout.as_ref()
        }),
    ];
    for (apache, ours, pick) in settings {
        let given: Vec<(&Member, &String)> = members
            .iter()
            .filter_map(|m| pick(m).map(|v| (m, v)))
            .collect();
        let Some(largest) = given
            .iter()
            .map(|(_, v)| *v)
            .max_by(|a, b| seconds(a).total_cmp(&seconds(b)))
        else {
            continue;
        };
        config.insert(ours.into(), json!(apache_duration(largest)));
        let differ = given.iter().any(|(_, v)| seconds(v) != seconds(largest))
            || given.len() < members.len();
        if differ {
            let places: Vec<String> = given
                .iter()
                .map(|(m, v)| format!("{}={v} at {}", apache, m.at))
                .collect();
            warnings.push(format!(
                "the members' {apache}= differ ({}; others have Apache's default); stickyroute-proxy has one {ours} for all members: {}",
                places.join(", "),
                apache_duration(largest)
            ));
        }
    }
}

/// An Apache duration in seconds (`5`), or with a unit (`500ms`), as a number of seconds.
fn seconds(value: &str) -> f64 {
    match value.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().map_or(0.0, |ms| ms / 1000.0),
        None => value.parse::<f64>().unwrap_or(0.0),
    }
}

/// An Apache duration as stickyroute's config writes it (`"5s"`, `"500ms"`).
fn apache_duration(value: &str) -> String {
    if value.ends_with("ms") {
        value.to_owned()
    } else {
        format!("{value}s")
    }
}

fn member(
    url: &str,
    params: &[(String, String)],
    at: String,
    line: usize,
    warn: &mut impl FnMut(usize, String),
) -> Result<Member, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("BalancerMember URL {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "BalancerMember {url}: https:// members are not supported: stickyroute-proxy speaks plain HTTP to its members (run the agent in front of the member and point the BalancerMember at it)"
            ));
        }
        _ => {
            return Err(format!(
                "BalancerMember {url}: only http:// members are supported"
            ));
        }
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        warn(
            line,
            format!(
                "BalancerMember {url}: the path {} is not translated",
                uri.path()
            ),
        );
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("BalancerMember URL {url:?} has no host"))?;
    let key = Key::parse(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| format!("BalancerMember host {host:?}: {e}"))?;
    let mut route = None;
    let mut loadfactor = LoadFactor::DEFAULT;
    let mut status = Status::Enabled;
    let (mut retry, mut timeout, mut connect_timeout) = (None, None, None);
    let duration = |name: &str, v: &String| {
        let plain = v.strip_suffix("ms").unwrap_or(v);
        (!plain.is_empty() && plain.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.clone())
            .ok_or_else(|| format!("{name}={v}: not a number of seconds"))
    };
    for (k, v) in params {
        match k.as_str() {
            "route" => route = Some(RouteId::parse(v).map_err(|e| format!("route={v}: {e}"))?),
            "loadfactor" => {
                loadfactor = v
                    .parse::<u32>()
                    .ok()
                    .and_then(LoadFactor::new)
                    .ok_or_else(|| format!("loadfactor={v}: must be 1 to 100"))?;
            }
            "status" => {
                for flag in v.trim_start_matches(['+', '-']).chars() {
                    match flag.to_ascii_uppercase() {
                        'D' => status = Status::Disabled,
                        'N' => status = Status::Drain,
                        'H' => status = Status::Standby,
                        other => warn(
                            line,
                            format!("BalancerMember status flag {other} is not translated"),
                        ),
                    }
                }
            }
            "retry" => retry = Some(duration("retry", v)?),
            "timeout" => timeout = Some(duration("timeout", v)?),
            "connectiontimeout" => connect_timeout = Some(duration("connectiontimeout", v)?),
            other => warn(
                line,
                format!("BalancerMember parameter {other}={v} is not translated"),
            ),
        }
    }
    let route = route
        .ok_or_else(|| format!("BalancerMember {url} has no route=; sticky routing needs one"))?;
    Ok(Member {
        key,
        port: uri.port_u16().unwrap_or(80),
        route,
        loadfactor,
        status,
        at,
        retry,
        timeout,
        connect_timeout,
    })
}

fn balancer_params(
    params: &[(String, String)],
    config: &mut Map<String, Value>,
    warn: &mut impl FnMut(String),
) {
    for (k, v) in params {
        match k.as_str() {
            "stickysession" => {
                config.insert("stickysession".into(), json!(v));
            }
            "nofailover" => {
                config.insert("nofailover".into(), json!(v.eq_ignore_ascii_case("on")));
            }
            "lbmethod" => match v.as_str() {
                "byrequests" | "bybusyness" => {
                    config.insert("lbmethod".into(), json!(v));
                }
                other => {
                    warn(format!(
                        "lbmethod={other} is not supported; byrequests is used"
                    ));
                    config.insert("lbmethod".into(), json!("byrequests"));
                }
            },
            "failonstatus" => {
                let codes: Result<Vec<u16>, _> =
                    v.split(',').map(|c| c.trim().parse::<u16>()).collect();
                match codes {
                    Ok(codes) if codes.iter().all(|c| (100..600).contains(c)) => {
                        config.insert("failonstatus".into(), json!(codes));
                    }
                    _ => warn(format!(
                        "failonstatus={v} is not a list of status codes; not translated"
                    )),
                }
            }
            "timeout" => warn(format!(
                "balancer timeout={v} (the wait for a free worker) is not translated: stickyroute-proxy does not queue requests; a member's timeout= becomes response_timeout"
            )),
            other => warn(format!("balancer parameter {other}={v} is not translated")),
        }
    }
}

fn most_common_port(members: &[Member]) -> u16 {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for m in members {
        *counts.entry(m.port).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(port, n)| (*n, std::cmp::Reverse(*port)))
        .map_or(80, |(p, _)| p)
}

fn check_rewrite_map(path: &str, text: &str, map: &RouteMap, warnings: &mut Vec<String>) {
    let rewrite = match RouteMap::parse(text.as_bytes()) {
        Ok(rewrite) => rewrite,
        Err(errors) => {
            warnings.extend(
                errors
                    .iter()
                    .map(|e| format!("{path}:{}: {}", e.line, e.kind)),
            );
            return;
        }
    };
    for entry in rewrite.entries() {
        match map.by_key(&entry.key) {
            Some(member) if member.route == entry.route => {}
            Some(member) => warnings.push(format!(
                "{path}: {} has route {} there but {} in its BalancerMember; the imported map uses {}",
                entry.key, entry.route, member.route, member.route
            )),
            None => warnings.push(format!("{path}: {} {} has no BalancerMember; not imported", entry.key, entry.route)),
        }
    }
    for member in map.entries() {
        if rewrite.by_key(&member.key).is_none() {
            warnings.push(format!(
                "{path}: has no entry for BalancerMember {} ({}); its agent would find no route",
                member.key, member.route
            ));
        }
    }
}

/// What the backends' `RewriteCond`/`RewriteRule [CO=...]` trick becomes as agent flags.
#[derive(Default)]
struct AgentHint {
    session_regex: Option<String>,
    cookie: Option<(String, String, String)>,
}

impl AgentHint {
    fn condition(&mut self, args: &[String], line: usize, warn: &mut impl FnMut(usize, String)) {
        match args {
            [var, pattern, rest @ ..] if var == "%{HTTP_COOKIE}" => {
                let nocase = rest.iter().any(|f| f.to_ascii_uppercase().contains("NC"));
                self.session_regex = Some(if nocase {
                    format!("(?i){pattern}")
                } else {
                    pattern.clone()
                });
            }
            _ => warn(
                line,
                format!("RewriteCond {} is not translated", args.join(" ")),
            ),
        }
    }

    fn rule(&mut self, args: &[String], line: usize, warn: &mut impl FnMut(usize, String)) {
        let flags = args.get(2).map(String::as_str).unwrap_or_default();
        let Some(co) = flags
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .find_map(|f| f.strip_prefix("CO="))
        else {
            warn(
                line,
                format!("RewriteRule {} is not translated", args.join(" ")),
            );
            return;
        };
        // CO=NAME:VALUE:DOMAIN; VALUE is PREFIX.${map:key|default}.
        let mut parts = co.splitn(2, ':');
        let name = parts.next().unwrap_or_default().to_owned();
        let rest = parts.next().unwrap_or_default();
        let (value, domain) = match rest.rfind("}:") {
            Some(i) => (&rest[..=i], &rest[i + 2..]),
            None => (rest, ""),
        };
        let prefix = value.split('.').next().unwrap_or("route").to_owned();
        let domain = match domain.split(':').next().unwrap_or_default() {
            "" => "none".to_owned(),
            "%{HTTP_HOST}" => "host".to_owned(),
            fixed => fixed.to_owned(),
        };
        self.cookie = Some((name, prefix, domain));
    }

    fn command(&self) -> Option<String> {
        let (name, prefix, domain) = self.cookie.as_ref()?;
        let trigger = match &self.session_regex {
            Some(regex) => format!("--session-cookie-regex '{regex}'"),
            None => "--track-all".to_owned(),
        };
        Some(format!(
            "stickyroute-agent --routemap ROUTEMAP --listen 0.0.0.0:80 --upstream 127.0.0.1:APP_PORT {trigger} --cookie-name {name} --cookie-prefix {prefix} --cookie-domain {domain}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_configs_split_into_directives() {
        let found = directives(
            0,
            "<IfModule x> ProxyPass / balancer://b/ stickysession=s <Proxy balancer://b> BalancerMember http://a:80 route=r </Proxy> </IfModule>",
        );
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "<IfModule",
                "ProxyPass",
                "<Proxy",
                "BalancerMember",
                "</Proxy",
                "</IfModule"
            ]
        );
        assert_eq!(found[1].args, ["/", "balancer://b/", "stickysession=s"]);
    }

    #[test]
    fn apache_allow_prefixes_become_cidr_blocks() {
        assert_eq!(allow_to_cidr("10.8.2.").as_deref(), Some("10.8.2.0/24"));
        assert_eq!(allow_to_cidr("10.8").as_deref(), Some("10.8.0.0/16"));
        assert_eq!(allow_to_cidr("10.8.2.7").as_deref(), Some("10.8.2.7"));
        assert_eq!(allow_to_cidr("10.0.0.0/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(allow_to_cidr("all").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(allow_to_cidr("example.com"), None);
    }

    #[test]
    fn member_status_flags_and_unknown_parameters() {
        let mut warnings = Vec::new();
        let config = "<Proxy balancer://b>\nBalancerMember http://10.0.0.1:8080 route=a status=+H retry=5\nBalancerMember http://10.0.0.2:8080 route=b status=+D\n</Proxy>\nProxyPass / balancer://b/ lbmethod=bytraffic\nKeepAlive On\n";
        let imported = import(&[("c", config)], None, None).unwrap();
        warnings.extend(imported.warnings);
        assert!(
            imported
                .routemap
                .contains("10.0.0.1 a loadfactor=1 status=standby\n")
        );
        assert!(
            imported
                .routemap
                .contains("10.0.0.2 b loadfactor=1 status=disabled\n")
        );
        assert_eq!(imported.config["member_port"], 8080);
        assert_eq!(imported.config["lbmethod"], "byrequests");
        assert_eq!(imported.config["retry"], "5s");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("members' retry= differ (retry=5 at c:2;")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("lbmethod=bytraffic is not supported"))
        );
        assert!(
            warnings
                .iter()
                .any(|w| w == "c:6: not translated: KeepAlive On"),
            "{warnings:?}"
        );
        assert!(matches!(
            import(&[("c", "KeepAlive On\n")], None, None),
            Err(ImportError::NoMembers)
        ));
        assert!(
            import(&[("c", "BalancerMember http://10.0.0.1\n")], None, None)
                .unwrap_err()
                .to_string()
                .contains("c:1: BalancerMember")
        );
    }

    const TWO_BALANCERS: &str = "<Proxy balancer://shop>\nBalancerMember http://10.0.0.1 route=a\n</Proxy>\n\
        <Proxy balancer://api>\nBalancerMember http://10.0.0.2 route=b\nProxySet failonstatus=503\n</Proxy>\n\
        ProxyPass /api balancer://api/ stickysession=APISESSION\nProxyPass / balancer://shop/ stickysession=balanceid nofailover=On\n";

    #[test]
    fn several_balancers_are_refused_by_name_unless_one_is_chosen() {
        let error = import(&[("p.conf", TWO_BALANCERS)], None, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("2 balancers: balancer://shop (p.conf:1), balancer://api (p.conf:4)")
                && error.contains("--balancer NAME"),
            "{error}"
        );
        let shop = import(&[("p.conf", TWO_BALANCERS)], None, Some("shop")).unwrap();
        assert!(shop.routemap.contains("10.0.0.1 a"));
        assert!(!shop.routemap.contains("10.0.0.2"));
        assert_eq!(shop.config["stickysession"], "balanceid");
        assert_eq!(shop.config["nofailover"], true);
        assert!(
            shop.config.get("failonstatus").is_none(),
            "the api balancer's"
        );
        assert!(
            shop.warnings
                .iter()
                .any(|w| w
                    == "p.conf:4: balancer://api is not imported (--balancer balancer://shop)"),
            "{:?}",
            shop.warnings
        );
        let api = import(&[("p.conf", TWO_BALANCERS)], None, Some("balancer://api/")).unwrap();
        assert!(api.routemap.contains("10.0.0.2 b"));
        assert_eq!(api.config["stickysession"], "APISESSION");
        assert_eq!(api.config["failonstatus"], json!([503]));
        assert!(matches!(
            import(&[("p.conf", TWO_BALANCERS)], None, Some("nope")),
            Err(ImportError::NoSuchBalancer(..))
        ));
    }

    #[test]
    fn https_members_are_refused_plainly() {
        let error = import(
            &[(
                "p.conf",
                "<Proxy balancer://b>\nBalancerMember https://10.0.0.1 route=a\n</Proxy>\n",
            )],
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(
                "p.conf:2: BalancerMember https://10.0.0.1: https:// members are not supported"
            ),
            "{error}"
        );
    }

    #[test]
    fn worker_timeouts_and_failonstatus_are_translated() {
        let config = "<Proxy balancer://b>\n\
            BalancerMember http://10.0.0.1 route=a retry=30 timeout=120 connectiontimeout=500ms\n\
            BalancerMember http://10.0.0.2 route=b retry=30 timeout=90 connectiontimeout=500ms\n\
            ProxySet failonstatus=500,503 timeout=10\n</Proxy>\n";
        let imported = import(&[("p.conf", config)], None, None).unwrap();
        assert_eq!(imported.config["retry"], "30s");
        assert_eq!(imported.config["response_timeout"], "120s", "the largest");
        assert_eq!(imported.config["connect_timeout"], "500ms");
        assert_eq!(imported.config["failonstatus"], json!([500, 503]));
        let warnings = imported.warnings.join("\n");
        assert!(warnings.contains("members' timeout= differ"), "{warnings}");
        assert!(!warnings.contains("members' retry= differ"), "{warnings}");
        assert!(
            warnings.contains("p.conf:4: balancer timeout=10"),
            "{warnings}"
        );
    }

    #[test]
    fn map_errors_name_the_apache_lines() {
        let config = "<Proxy balancer://b>\n\
            BalancerMember http://10.0.0.1 route=a\n\
            BalancerMember http://10.0.0.2 route=b\n\
            BalancerMember http://10.0.0.1:8080 route=c\n</Proxy>\n";
        let error = import(&[("p.conf", config)], None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "p.conf:4: a second BalancerMember for 10.0.0.1 (first at p.conf:2)"
        );
    }
}
