//! Full TLS handshakes per second through a proxy: every request on a new TCP connection
//! with a new TLS 1.3 handshake and no session resumption, `CONNS` at a time, for
//! `SECONDS`.
//!
//! `handshakes HOST:PORT SERVER_NAME CONNS SECONDS [HEADER...]` prints one line:
//! `handshakes=N seconds=S rps=R p50_ms=A p99_ms=B errors=E` (latency is connect to the
//! last byte of the response). The certificate is not verified: what is measured is the
//! server's work, and every proxy gets the same client.
//!
//! Written because wrk cannot measure this: with `Connection: close` it resumes the
//! previous TLS 1.2 session on every reconnect (OpenSSL's `SSL_clear` keeps it), so its
//! "new connection per request" is an abbreviated handshake without the server's signature.

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate: the benchmark measures the server, not the client's checks.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Checked, so the server's signature work cannot be skipped unnoticed.
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
}

async fn one(
    connector: &TlsConnector,
    addr: &str,
    name: ServerName<'static>,
    request: &[u8],
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request).await?;
    let mut response = Vec::with_capacity(512);
    // `Connection: close`: the response ends where the connection does.
    tls.read_to_end(&mut response).await.or_else(|error| {
        // A peer that closes without close_notify still sent a whole response.
        if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() {
            Ok(0)
        } else {
            Err(error)
        }
    })?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(64)])
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, server_name, conns, seconds, headers @ ..] = args.as_slice() else {
        bail!("usage: handshakes HOST:PORT SERVER_NAME CONNS SECONDS [HEADER...]");
    };
    let conns: usize = conns.parse().context("CONNS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.clone()).context("SERVER_NAME")?;
    let mut request = format!("GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request: Arc<[u8]> = request.into_bytes().into();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (connector, addr, name, request) = (
            connector.clone(),
            addr.clone(),
            name.clone(),
            request.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                latencies: Vec::new(),
                errors: 0,
            };
            while Instant::now() < until {
                let started = Instant::now();
                match one(&connector, &addr, name.clone(), &request).await {
                    Ok(()) => tally.latencies.push(started.elapsed()),
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await?;
        latencies.extend(tally.latencies);
        errors += tally.errors;
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "handshakes={} seconds={} rps={:.1} p50_ms={:.3} p99_ms={:.3} errors={}",
        latencies.len(),
        seconds,
        latencies.len() as f64 / seconds as f64,
        at(0.5),
        at(0.99),
        errors
    );
    Ok(())
}
