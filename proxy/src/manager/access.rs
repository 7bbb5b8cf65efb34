//! Who may use the balancer-manager: a CIDR allow-list (like Apache's
//! `Allow from 10.8.2.`), optional named tokens, and a per-process nonce that every state
//! change must carry, so a cross-site form cannot change the balancer. The allow-list and
//! the tokens are settings, replaced by a reload; the nonce is not, so the pages open
//! when the access rules change keep working.

use base64::Engine;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

pub use stickyroute_relay::net::Cidr;

/// A named secret; the name appears in audit lines, the secret never does.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.name)
    }
}

impl Token {
    /// Whether two tokens are the same name and secret (for telling a reload what changed).
    fn same_as(&self, other: &Token) -> bool {
        self.name == other.name && same(self.secret.as_bytes(), other.secret.as_bytes())
    }
}

/// The `STICKYROUTE_ADMIN_TOKEN` value the process was given at start, kept for reloads.
/// Nothing outside a running process can change its environment, so reading the variable
/// again would find this same value; keeping it means a server that was handed the value
/// (run in-process by tests or the demo, with no variable of its own) reloads with its
/// token too, as a process does, instead of silently dropping it.
#[derive(Clone, Default)]
pub struct TokenVariable(Option<String>);

impl TokenVariable {
    pub fn new(value: Option<String>) -> Self {
        Self(value)
    }
}

impl fmt::Debug for TokenVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = if self.0.is_some() { "set" } else { "unset" };
        write!(f, "TokenVariable({set})")
    }
}

/// Reads tokens from a file (one `NAME:SECRET` per line, `#` comments; a line without `:`
/// is a secret named `token`) and from the `STICKYROUTE_ADMIN_TOKEN` value (named `env`).
/// Never from the command line, where every user of the machine could read them.
pub fn load_tokens(file: Option<&Path>, env: &TokenVariable) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, secret) = line.split_once(':').unwrap_or(("token", line));
            if secret.trim().len() < 16 {
                return Err(format!(
                    "--admin-token-file {}:{}: a token must be at least 16 characters",
                    path.display(),
                    n + 1
                ));
            }
            tokens.push(Token {
                name: name.trim().to_owned(),
                secret: secret.trim().to_owned(),
            });
        }
    }
    if let Some(secret) = env.0.as_deref().filter(|s| !s.trim().is_empty()) {
        if secret.trim().len() < 16 {
            return Err("STICKYROUTE_ADMIN_TOKEN must be at least 16 characters".to_owned());
        }
        tokens.push(Token {
            name: "env".to_owned(),
            secret: secret.trim().to_owned(),
        });
    }
    Ok(tokens)
}

/// Who made a request, for the audit log.
#[derive(Debug, Clone)]
pub struct Who {
    pub addr: IpAddr,
    pub token: Option<String>,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.token {
            Some(name) => write!(f, "{} (token {name})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Not from an allowed address: 403.
    Address,
    /// Tokens are configured and none matched: 401.
    Token,
}

/// The allow-list and the tokens, as validated from the settings.
#[derive(Debug)]
pub struct Access {
    allow: Vec<Cidr>,
    tokens: Vec<Token>,
}

impl Access {
    pub fn new(allow: Vec<Cidr>, tokens: Vec<Token>) -> Self {
        Self { allow, tokens }
    }

    /// Whether `other` holds the same tokens: a reload reports a token file whose contents
    /// changed although its path did not.
    pub fn same_tokens(&self, other: &Access) -> bool {
        self.tokens.len() == other.tokens.len()
            && self
                .tokens
                .iter()
                .zip(&other.tokens)
                .all(|(a, b)| a.same_as(b))
    }

    /// Checks the address, then (if any are configured) the token: `Authorization: Bearer
    /// SECRET` for API clients, or HTTP Basic with the secret as password for browsers.
    pub fn check(&self, remote: IpAddr, headers: &HeaderMap) -> Result<Who, Denied> {
        if !self.allow.iter().any(|c| c.contains(remote)) {
            return Err(Denied::Address);
        }
        if self.tokens.is_empty() {
            return Ok(Who {
                addr: remote,
                token: None,
            });
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_secret);
        let token = presented.and_then(|secret| {
            self.tokens
                .iter()
                .find(|t| same(t.secret.as_bytes(), secret.as_bytes()))
        });
        match token {
            Some(token) => Ok(Who {
                addr: remote,
                token: Some(token.name.clone()),
            }),
            None => Err(Denied::Token),
        }
    }
}

/// The secret every balancer-manager change must carry, shown only on its own pages. One
/// per process, made at start and never replaced, so that a reload of the access settings
/// leaves the pages operators have open working.
#[derive(Debug)]
pub struct Nonce(String);

impl Nonce {
    pub fn random() -> Self {
        Self(random_hex(16))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a state change carries this nonce.
    pub fn matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|n| same(n.as_bytes(), self.0.as_bytes()))
    }
}

/// The secret in an `Authorization` header; the scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer` and `BASIC` work as well.
fn presented_secret(header: &str) -> Option<String> {
    let (scheme, credentials) = header.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let encoded = credentials;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if filled.is_err() {
        // Without /dev/urandom, fall back to the randomly keyed std hasher.
        use std::hash::{BuildHasher, Hasher};
        for chunk in buf.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn tokens_by_bearer_or_basic_and_named_in_the_audit() {
        let access = Access::new(
            Cidr::loopback(),
            vec![Token {
                name: "ops".into(),
                secret: "s3cret-s3cret-s3cret".into(),
            }],
        );
        let local = "127.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(access.check(local, &headers).unwrap_err(), Denied::Token);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-s3cret-s3cret"),
        );
        assert_eq!(
            access.check(local, &headers).unwrap().to_string(),
            "127.0.0.1 (token ops)"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret-s3cret-s3cret");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert!(access.check(local, &headers).is_ok());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert_eq!(access.check(local, &headers).unwrap_err(), Denied::Token);
        assert_eq!(
            access
                .check("192.0.2.1".parse().unwrap(), &headers)
                .unwrap_err(),
            Denied::Address
        );
    }

    #[test]
    fn the_nonce_is_random_per_process_and_required() {
        let (a, b) = (Nonce::random(), Nonce::random());
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(Some(a.as_str())));
        assert!(!a.matches(Some(b.as_str())));
        assert!(!a.matches(None));
    }

    #[test]
    fn token_files_name_their_tokens() {
        let dir = std::env::temp_dir().join(format!("stickyroute-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(
            &file,
            "# operators\nalice:0123456789abcdef0\nbob: fedcba98765432100\n",
        )
        .unwrap();
        let env = TokenVariable::new(Some("env-token-0123456789".into()));
        assert_eq!(format!("{env:?}"), "TokenVariable(set)", "never the secret");
        let tokens = load_tokens(Some(&file), &env).unwrap();
        assert_eq!(
            tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["alice", "bob", "env"]
        );
        let read = |tokens| Access::new(Cidr::loopback(), tokens);
        let before = read(tokens);
        assert!(before.same_tokens(&read(load_tokens(Some(&file), &env).unwrap())));
        std::fs::write(&file, "alice:0123456789abcdef1\nbob: fedcba98765432100\n").unwrap();
        let after = read(load_tokens(Some(&file), &env).unwrap());
        assert!(
            !before.same_tokens(&after),
            "a secret changed under the same name"
        );
        std::fs::write(&file, "short\n").unwrap();
        assert!(
            load_tokens(Some(&file), &TokenVariable::default())
                .unwrap_err()
                .contains(":1: a token must be at least 16")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
