//! The certificates a TLS listener serves: each `--tls-cert`/`--tls-key` pair loaded,
//! checked (the key must belong to the certificate) and swapped in whole when its files
//! change, and the one for a handshake picked by the client's SNI.
//!
//! A pair whose files now hold something invalid keeps serving the last valid pair: a
//! half-written renewal or a wrong key must not take the site down. The failure is logged
//! once per distinct content, kept for `/status` and counted for the metrics until a valid
//! pair replaces it.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest certificate or key file read: a chain of a few certificates is a few KiB; a
/// wrong path to a huge file must not exhaust memory.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// One `--tls-cert FILE --tls-key FILE` pair, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a pair could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: larger than {MAX_PEM_BYTES} bytes; not a PEM certificate or key")]
    TooLarge { path: String },
    #[error("{path}: no certificate in it (a PEM \"BEGIN CERTIFICATE\" block is expected)")]
    NoCertificate { path: String },
    #[error("{path}: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error(
        "{path}: no private key in it (a PEM PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\" block is expected)"
    )]
    NoKey { path: String },
    #[error("{path}: {reason}")]
    BadKey { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: String, key: String },
}

/// The bytes of a pair's two files, as read: what tells whether anything changed.
pub type PairBytes = (Vec<u8>, Vec<u8>);

/// Reads a pair's files (through symlinks, regular files only, bounded).
pub fn read_pair(pair: &CertPair) -> Result<PairBytes, CertError> {
    Ok((read_pem_file(&pair.cert)?, read_pem_file(&pair.key)?))
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, CertError> {
    let shown = || path.display().to_string();
    let bytes =
        routemap::source::read_regular_file(path, MAX_PEM_BYTES).map_err(|e| CertError::Read {
            path: shown(),
            reason: e.to_string(),
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(CertError::TooLarge { path: shown() });
    }
    Ok(bytes)
}

/// A valid pair, ready for handshakes.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's DNS names (subjectAltName dNSName), lower case; `*.` first
    /// for a wildcard.
    pub names: Vec<Box<str>>,
    /// The leaf certificate's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    bytes: PairBytes,
}

impl Loaded {
    /// Parses and checks a pair read by [`read_pair`].
    pub fn parse(
        pair: &CertPair,
        bytes: PairBytes,
        provider: &CryptoProvider,
    ) -> Result<Loaded, CertError> {
        let cert_path = || pair.cert.display().to_string();
        let key_path = || pair.key.display().to_string();
        let chain = CertificateDer::pem_slice_iter(&bytes.0)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::BadCertificate {
                path: cert_path(),
                reason: format!("not valid PEM: {e}"),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate { path: cert_path() });
        };
        let (names, not_after) = leaf_facts(leaf).map_err(|reason| CertError::BadCertificate {
            path: cert_path(),
            reason,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&bytes.1).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey { path: key_path() },
            other => CertError::BadKey {
                path: key_path(),
                reason: format!("not valid PEM: {other}"),
            },
        })?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertError::Mismatch {
                cert: cert_path(),
                key: key_path(),
            },
            other => CertError::BadKey {
                path: key_path(),
                reason: other.to_string(),
            },
        })?;
        Ok(Loaded {
            key: Arc::new(key),
            names,
            not_after,
            bytes,
        })
    }

    /// The name shown for this certificate in metrics: its first DNS name.
    pub fn primary_name(&self) -> &str {
        self.names.first().map_or("", |n| n)
    }
}

/// Whether a certificate with these DNS names is for `server_name` (an SNI value): an
/// exact name, or (with `wildcards`) a wildcard standing for exactly one label.
fn matches(names: &[Box<str>], server_name: &str, wildcards: bool) -> bool {
    names.iter().any(|name| match name.strip_prefix("*.") {
        Some(parent) => {
            wildcards
                && server_name.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(parent)
                })
        }
        None => name.eq_ignore_ascii_case(server_name),
    })
}

/// The DNS names and the notAfter of a leaf certificate.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<Box<str>>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase().into_boxed_str());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// A pair's files that hold something invalid now, while the last valid pair serves.
#[derive(Debug, Clone)]
struct Failure {
    error: CertError,
    since: u64,
    bytes: Option<PairBytes>,
}

/// One configured pair: what serves, and what went wrong since.
#[derive(Debug)]
struct Slot {
    pair: CertPair,
    current: ArcSwap<Loaded>,
    failure: Mutex<Option<Failure>>,
}

/// What `/status` shows of a pair.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The DNS names of the certificate serving now.
    pub names: Vec<String>,
    /// Its notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Why the files' current content is not served (the previous pair is), if it is not.
    pub error: Option<String>,
    /// Since when (seconds since the Unix epoch).
    pub error_since: Option<u64>,
}

/// Every configured pair, the first the default. Cheap to resolve from: one atomic load
/// per pair, no lock.
#[derive(Debug)]
pub struct CertStore {
    slots: Vec<Slot>,
    provider: Arc<CryptoProvider>,
    reload_errors: AtomicU64,
    reloads: AtomicU64,
}

impl CertStore {
    /// Loads every pair; any invalid one is an error (a proxy does not start without its
    /// certificates).
    pub fn load(pairs: &[CertPair], provider: Arc<CryptoProvider>) -> Result<Self, CertError> {
        let slots = pairs
            .iter()
            .map(|pair| {
                let loaded = Loaded::parse(pair, read_pair(pair)?, &provider)?;
                Ok(Slot {
                    pair: pair.clone(),
                    current: ArcSwap::from_pointee(loaded),
                    failure: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, CertError>>()?;
        Ok(Self {
            slots,
            provider,
            reload_errors: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        })
    }

    pub fn pairs(&self) -> Vec<CertPair> {
        self.slots.iter().map(|s| s.pair.clone()).collect()
    }

    /// Applies what the pairs' files hold now (one result per pair, in order): a valid new
    /// pair replaces the old for new handshakes; anything invalid keeps the old and is
    /// reported once.
    pub fn apply(&self, reads: Vec<Result<PairBytes, CertError>>) {
        for (slot, read) in self.slots.iter().zip(reads) {
            self.apply_one(slot, read);
        }
    }

    fn apply_one(&self, slot: &Slot, read: Result<PairBytes, CertError>) {
        let mut failure = slot.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = match read {
            Ok(bytes) if bytes == slot.current.load().bytes => {
                if failure.take().is_some() {
                    tracing::info!(cert = %slot.pair.cert.display(), "the certificate files hold the served pair again");
                }
                return;
            }
            Ok(bytes) => bytes,
            Err(error) => {
                self.fail(slot, &mut failure, error, None);
                return;
            }
        };
        if failure
            .as_ref()
            .is_some_and(|f| f.bytes.as_ref() == Some(&bytes))
        {
            // The same invalid content as last time: reported already.
            return;
        }
        match Loaded::parse(&slot.pair, bytes.clone(), &self.provider) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %slot.pair.cert.display(),
                    names = %loaded.names.join(","),
                    not_after = loaded.not_after,
                    "serving a new certificate"
                );
                slot.current.store(Arc::new(loaded));
                self.reloads.fetch_add(1, Relaxed);
                *failure = None;
            }
            Err(error) => self.fail(slot, &mut failure, error, Some(bytes)),
        }
    }

    fn fail(
        &self,
        slot: &Slot,
        failure: &mut Option<Failure>,
        error: CertError,
        bytes: Option<PairBytes>,
    ) {
        if failure
            .as_ref()
            .is_some_and(|f| f.error == error && f.bytes == bytes)
        {
            return;
        }
        tracing::error!(cert = %slot.pair.cert.display(), "cannot use the new certificate files; still serving the previous certificate: {error}");
        self.reload_errors.fetch_add(1, Relaxed);
        let since = failure.as_ref().map_or_else(unix_now, |f| f.since);
        *failure = Some(Failure {
            error,
            since,
            bytes,
        });
    }

    /// Each pair as `/status` shows it.
    pub fn status(&self) -> Vec<CertStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let current = slot.current.load();
                let failure = slot
                    .failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                CertStatus {
                    cert: slot.pair.cert.clone(),
                    key: slot.pair.key.clone(),
                    names: current.names.iter().map(|n| n.to_string()).collect(),
                    not_after: current.not_after,
                    error: failure.as_ref().map(|f| f.error.to_string()),
                    error_since: failure.map(|f| f.since),
                }
            })
            .collect()
    }

    /// For the metrics: (cert file, primary name, notAfter) of every served certificate.
    pub fn expiries(&self) -> Vec<(String, String, i64)> {
        self.slots
            .iter()
            .map(|slot| {
                let current = slot.current.load();
                (
                    slot.pair.cert.display().to_string(),
                    current.primary_name().to_owned(),
                    current.not_after,
                )
            })
            .collect()
    }

    /// Pairs whose files hold something invalid now.
    pub fn failing(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()
            })
            .count()
    }

    pub fn loaded(&self) -> usize {
        self.slots.len()
    }

    /// Invalid contents seen since start (each distinct one once).
    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Relaxed)
    }

    /// New valid pairs applied since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Relaxed)
    }

    /// The certificate for `server_name`: an exact name first, then a wildcard, then the
    /// default (the first pair).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            for wildcards in [false, true] {
                for slot in &self.slots {
                    let current = slot.current.load();
                    if matches(&current.names, name, wildcards) {
                        return Some(current.key.clone());
                    }
                }
            }
        }
        self.slots.first().map(|s| s.current.load().key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_stands_for_exactly_one_label() {
        let names: Vec<Box<str>> = vec!["*.example.com".into(), "example.org".into()];
        let cert = |name: &str, wildcards: bool| matches(&names, name, wildcards);
        assert!(cert("www.example.com", true));
        assert!(cert("WWW.Example.COM", true));
        assert!(!cert("www.example.com", false));
        assert!(!cert("example.com", true));
        assert!(!cert("a.b.example.com", true));
        assert!(!cert(".example.com", true));
        assert!(cert("example.org", false));
        assert!(!cert("www.example.org", true));
    }
}
