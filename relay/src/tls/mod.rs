//! TLS termination for the traffic listeners: rustls with the ring provider (no OpenSSL),
//! TLS 1.2 and 1.3 with rustls' safe defaults, ALPN `h2` and `http/1.1`, session
//! resumption by tickets (TLS 1.3 and 1.2) and a server-side session cache.
//!
//! - [`certs`]: the pairs, picked by SNI, swapped whole when a file changes.
//! - [`TlsServer::follow`]: the task that re-reads the pairs' files when they change (the same
//!   directory watch as the route map: renames, the kubelet's `..data` swap of a mounted
//!   Secret as cert-manager writes it, a periodic re-read) and on a reload.
//!
//! The handshake runs in the connection's own task, after the accept and the connection
//! limit, with a deadline of its own ([`TlsServer::handshake_timeout`]): a client that
//! opens TCP and stalls is cut off then, and never holds up the accept loop. Every
//! handshake is counted by result ([`Handshake`]).

pub mod certs;

use crate::metrics::PromText;
use certs::{CertError, CertStore};
use routemap::source::{FileWatchOptions, PathWatch};
use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The time a client has to complete its TLS handshake after the accept.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions remembered for resumption by session ID (TLS 1.2 clients without tickets);
/// about 100 bytes each.
const SESSION_CACHE: usize = 4096;

/// What a request's connection negotiated, for handlers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// The server name the client asked for, if it sent one.
    pub sni: Option<Box<str>>,
    /// "h2" or "http/1.1", if the client offered ALPN.
    pub alpn: Option<&'static str>,
}

/// How a handshake ended: the label values of `stickyroute_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// Not complete within the handshake timeout.
    Timeout,
    /// The client closed the connection during the handshake.
    Eof,
    /// The client sent something that is not TLS as this server speaks it (plain HTTP on
    /// the TLS port, say).
    Protocol,
    /// The client aborted with an alert (it did not trust the certificate, say).
    Alert,
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedCipher,
    /// No protocol version in common (a client older than TLS 1.2).
    NoSharedVersion,
    /// Another socket error.
    Io,
    /// Anything else.
    Other,
}

impl Handshake {
    pub const ALL: [Handshake; 9] = [
        Handshake::Ok,
        Handshake::Timeout,
        Handshake::Eof,
        Handshake::Protocol,
        Handshake::Alert,
        Handshake::NoSharedCipher,
        Handshake::NoSharedVersion,
        Handshake::Io,
        Handshake::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Timeout => "timeout",
            Handshake::Eof => "eof",
            Handshake::Protocol => "protocol",
            Handshake::Alert => "alert",
            Handshake::NoSharedCipher => "no_shared_cipher",
            Handshake::NoSharedVersion => "no_shared_version",
            Handshake::Io => "io",
            Handshake::Other => "other",
        }
    }

    /// Classifies a failed handshake's error.
    fn of(error: &std::io::Error) -> Handshake {
        use rustls::{Error, PeerIncompatible as P};
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>());
        match tls {
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => Handshake::Eof,
            None if error.kind() == std::io::ErrorKind::ConnectionReset => Handshake::Eof,
            None => Handshake::Io,
            Some(Error::AlertReceived(_)) => Handshake::Alert,
            Some(Error::PeerIncompatible(
                P::ServerDoesNotSupportTls12Or13
                | P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::Tls13RequiredForQuic
                | P::ServerTlsVersionIsDisabledByOurConfig,
            )) => Handshake::NoSharedVersion,
            Some(Error::PeerIncompatible(_)) => Handshake::NoSharedCipher,
            Some(
                Error::InvalidMessage(_)
                | Error::InappropriateMessage { .. }
                | Error::InappropriateHandshakeMessage { .. }
                | Error::PeerMisbehaved(_)
                | Error::DecryptError
                | Error::PeerSentOversizedRecord,
            ) => Handshake::Protocol,
            Some(_) => Handshake::Other,
        }
    }
}

/// The TLS side of the traffic listeners: the rustls configuration (shared by every
/// worker), its certificates, its deadline and its counters.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    certs: Arc<CertStore>,
    handshake_timeout: Duration,
    handshakes: [AtomicU64; 9],
    reread: Arc<Notify>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("certs", &self.certs)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate: TLS needs at least one --tls-cert/--tls-key pair")]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider: ring, the one kube's client already brings.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsServer {
    /// Loads the pairs (the first is the default certificate) and builds the configuration.
    pub fn new(
        pairs: &[certs::CertPair],
        handshake_timeout: Duration,
    ) -> Result<TlsServer, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let provider = provider();
        let certs = Arc::new(CertStore::load(pairs, provider.clone())?);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
            handshake_timeout,
            handshakes: Default::default(),
            reread: Arc::default(),
        })
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Asks the follower to read the certificate files now (a reload).
    pub fn reread(&self) {
        self.reread.notify_one();
    }

    /// Follows the certificate files until dropped (see the module documentation); run it
    /// as a task on any runtime.
    pub fn follow(
        self: &Arc<Self>,
        debounce: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let certs = self.certs.clone();
        let options = FileWatchOptions {
            debounce,
            reread: self.reread.clone(),
            ..FileWatchOptions::default()
        };
        async move {
            let pairs = certs.pairs();
            let paths: Vec<_> = pairs
                .iter()
                .flat_map(|p| [p.cert.clone(), p.key.clone()])
                .collect();
            let mut watch = PathWatch::new("certificate", &paths, options);
            loop {
                watch.changed().await;
                let pairs = pairs.clone();
                let reads = watch
                    .read_whole(move || pairs.iter().map(certs::read_pair).collect::<Vec<_>>())
                    .await;
                certs.apply(reads);
            }
        }
    }

    /// The handshake on an accepted connection, within the deadline, counted. `None` when it
    /// failed or timed out (the connection is then dropped) or `abort` finished first (a
    /// shutdown).
    pub async fn handshake<IO>(
        &self,
        io: IO,
        abort: impl Future<Output = ()>,
    ) -> Option<(TlsStream<IO>, Arc<TlsInfo>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io));
        let result = tokio::select! {
            result = accept => result,
            () = abort => return None,
        };
        let outcome = match &result {
            Ok(Ok(_)) => Handshake::Ok,
            Ok(Err(error)) => {
                let outcome = Handshake::of(error);
                tracing::debug!(%error, reason = outcome.as_str(), "TLS handshake failed");
                outcome
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.handshake_timeout, "TLS handshake not complete in time; closing");
                Handshake::Timeout
            }
        };
        self.handshakes[outcome as usize].fetch_add(1, Relaxed);
        let stream = result.ok()?.ok()?;
        let info = info(stream.get_ref().1);
        Some((stream, Arc::new(info)))
    }

    /// Handshakes so far that ended as `outcome`.
    pub fn handshakes(&self, outcome: Handshake) -> u64 {
        self.handshakes[outcome as usize].load(Relaxed)
    }

    /// The TLS families of `/metrics`.
    pub fn render(&self, out: &mut PromText) {
        let name = "stickyroute_tls_handshakes_total";
        out.family(
            name,
            "counter",
            "TLS handshakes on the traffic listeners, by result: ok, or why it failed.",
        );
        for outcome in Handshake::ALL {
            out.sample(
                name,
                &[("result", outcome.as_str())],
                self.handshakes(outcome),
            );
        }
        let name = "stickyroute_tls_certificate_expiry_seconds";
        out.family(
            name,
            "gauge",
            "When each served certificate expires (its notAfter), in seconds since the Unix epoch.",
        );
        for (file, primary, not_after) in self.certs.expiries() {
            out.sample(name, &[("file", &file), ("name", &primary)], not_after);
        }
        out.single(
            "stickyroute_tls_certificates_loaded",
            "gauge",
            "Certificate/key pairs being served.",
            self.certs.loaded(),
        );
        out.single(
            "stickyroute_tls_certificates_failing",
            "gauge",
            "Pairs whose files hold something invalid now (the previous pair is still served).",
            self.certs.failing(),
        );
        out.single(
            "stickyroute_tls_certificate_reloads_total",
            "counter",
            "New valid certificate/key pairs applied without a restart.",
            self.certs.reloads(),
        );
        out.single(
            "stickyroute_tls_certificate_reload_errors_total",
            "counter",
            "Invalid or mismatched certificate/key file contents seen (each distinct one once).",
            self.certs.reload_errors(),
        );
    }
}

fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => Some("h2"),
        Some(b"http/1.1") => Some("http/1.1"),
        _ => None,
    };
    TlsInfo {
        version,
        sni: conn.server_name().map(Into::into),
        alpn,
    }
}
