//! TLS termination, with real clients (rustls here, `curl` and `openssl s_client` as
//! operators use them) and certificates each test makes: which certificate SNI picks, ALPN
//! and HTTP/2, resumption, certificates renewed and broken on disk, the handshake deadline,
//! what members see, and `--https-redirect`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stickyroute_tests::kubelet::ConfigMapDir;
use stickyroute_tests::proxy::{Proxy, write_map};
use stickyroute_tests::raw::{self, RawBackend};
use stickyroute_tests::{PATIENCE, eventually_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `names` (ECDSA P-256), as PEM files in `dir`.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn ecdsa(dir: &Path, stem: &str, names: &[&str]) -> Pair {
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Pair {
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

/// An RSA certificate made by `openssl` (its key in the traditional PKCS#1 form), for
/// the other key type operators bring.
fn rsa(dir: &Path, stem: &str, name: &str) -> Pair {
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let pkcs8 = dir.join(format!("{stem}.pkcs8"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .arg("-keyout")
        .arg(&pkcs8)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/test.sh)");
    assert!(status.status.success(), "{status:?}");
    let traditional = std::process::Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&pkcs8)
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(traditional.status.success(), "{traditional:?}");
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    Pair { cert, key, der }
}

/// Accepts any certificate and lets the test look at the one presented.
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
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client(alpn: &[&[u8]]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` naming `sni` (an IP address sends no SNI at all).
async fn connect(connector: &TlsConnector, addr: SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    handshake(connector, TcpStream::connect(addr).await.unwrap(), sni).await
}

/// A TLS handshake naming `sni` over a TCP connection already open.
async fn handshake(connector: &TlsConnector, tcp: TcpStream, sni: &str) -> TlsStream<TcpStream> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The end-entity certificate served for `sni`.
async fn served(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    let stream = connect(&client(&[]), addr, sni).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 request over TLS; the whole response (the proxy closes after it).
async fn https_get(addr: SocketAddr, sni: &str, head: &str) -> String {
    let mut stream = connect(&client(&[b"http/1.1"]), addr, sni).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_proxy(map: &Path, pairs: &[&Pair], extra: &[&str]) -> Proxy {
    let mut builder = Proxy::builder(map).args(&["--tls-listen", "127.0.0.1:0"]);
    for pair in pairs {
        builder = builder.args(&[
            "--tls-cert",
            &pair.cert.display().to_string(),
            "--tls-key",
            &pair.key.display().to_string(),
        ]);
    }
    builder.args(extra).start()
}

async fn metrics(proxy: &Proxy) -> String {
    stickyroute_tests::client::get(proxy.admin, "/metrics")
        .send()
        .await
        .text()
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    stickyroute_tests::client::get(proxy.admin, "/status")
        .send()
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_by_name_wildcards_included_and_the_first_pair_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let api = ecdsa(dir.path(), "api", &["*.api.example"]);
    let legacy = rsa(dir.path(), "legacy", "legacy.example");
    let proxy = tls_proxy(&map, &[&shop, &api, &legacy], &[]);
    let tls = proxy.tls.unwrap();
    assert_eq!(served(tls, "shop.example").await, shop.der);
    assert_eq!(served(tls, "eu.api.example").await, api.der, "a wildcard");
    assert_eq!(
        served(tls, "legacy.example").await,
        legacy.der,
        "RSA, PKCS#1 key"
    );
    assert_eq!(
        served(tls, "a.b.api.example").await,
        shop.der,
        "a wildcard covers one label only: the default"
    );
    assert_eq!(
        served(tls, "other.example").await,
        shop.der,
        "unknown: the default"
    );
    assert_eq!(
        served(tls, "127.0.0.1").await,
        shop.der,
        "no SNI: the default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_https_as_the_protocol_and_h2_is_negotiated_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let log = dir.path().join("access.log");
    let log_flags = [
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        "json",
    ];
    let proxy = tls_proxy(&map, &[&shop], &log_flags);
    proxy.wait_members(1).await;
    let tls = proxy.tls.unwrap();

    let answer = https_get(
        tls,
        "shop.example",
        "GET /cart HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = String::from_utf8(backend.all_received()).unwrap();
    assert!(
        received.starts_with("GET /cart HTTP/1.1\r\nhost: shop.example\r\n"),
        "{received}"
    );
    assert!(
        received.contains("\r\nx-forwarded-proto: https\r\n"),
        "{received}"
    );

    // ALPN h2, and the connection then speaks HTTP/2.
    let stream = connect(&client(&[b"h2", b"http/1.1"]), tls, "shop.example").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let request = http::Request::get("https://shop.example/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);

    // The access log names the TLS version and the server name asked for.
    let lines: Vec<serde_json::Value> =
        stickyroute_tests::eventually("two log lines", PATIENCE, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<_> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() >= 2).then_some(lines)
        })
        .await;
    let by_target = |target: &str| {
        lines
            .iter()
            .find(|l| l["target"] == target)
            .unwrap()
            .clone()
    };
    let cart = by_target("/cart");
    assert_eq!(
        (&cart["tls_version"], &cart["sni"], &cart["protocol"]),
        (
            &"TLSv1.3".into(),
            &"shop.example".into(),
            &"HTTP/1.1".into()
        ),
        "{cart}"
    );
    assert_eq!(by_target("/h2")["protocol"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let proxy = tls_proxy(&map, &[&shop], &[]);
    let tls = proxy.tls.unwrap();
    // One client configuration, so its session store carries the ticket over.
    let connector = client(&[b"http/1.1"]);
    for (round, expected) in [(0, HandshakeKind::Full), (1, HandshakeKind::Resumed)] {
        let mut stream = connect(&connector, tls, "shop.example").await;
        // TLS 1.3 tickets arrive after the handshake: a request reads them.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(expected),
            "connection {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_secret_is_served_without_restart_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let first = ecdsa(dir.path(), "first", &["shop.example"]);
    let renewed = ecdsa(dir.path(), "renewed", &["shop.example"]);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    // A kubernetes.io/tls Secret as the kubelet mounts it, updated as cert-manager renews.
    let mut secret = ConfigMapDir::create_keys(
        &dir.path().join("secret"),
        &[
            ("tls.crt", &read(&first.cert)),
            ("tls.key", &read(&first.key)),
        ],
    )
    .unwrap();
    let mounted = Pair {
        cert: secret.key_path("tls.crt"),
        key: secret.key_path("tls.key"),
        der: first.der.clone(),
    };
    let proxy = tls_proxy(&map, &[&mounted], &[]);
    let tls = proxy.tls.unwrap();
    assert_eq!(served(tls, "shop.example").await, first.der);

    secret
        .update_keys(&[
            ("tls.crt", &read(&renewed.cert)),
            ("tls.key", &read(&renewed.key)),
        ])
        .unwrap();
    eventually_async("the renewed certificate to be served", PATIENCE, || async {
        (served(tls, "shop.example").await == renewed.der).then_some(())
    })
    .await;

    // A key that does not belong to the certificate: the renewed pair stays.
    secret
        .update_keys(&[
            ("tls.crt", &read(&first.cert)),
            ("tls.key", &read(&renewed.key)),
        ])
        .unwrap();
    let error = eventually_async("the broken pair to be reported", PATIENCE, || async {
        status(&proxy).await["tls"]["certificates"][0]["error"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(!error.is_empty());
    assert_eq!(served(tls, "shop.example").await, renewed.der);
    let text = metrics(&proxy).await;
    assert!(
        text.contains("stickyroute_tls_certificate_expiry_seconds{"),
        "{text}"
    );

    // Garbage in both files: still the renewed pair.
    secret
        .update_keys(&[("tls.crt", "not a certificate"), ("tls.key", "nor a key")])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served(tls, "shop.example").await, renewed.der);
    let answer = https_get(
        tls,
        "shop.example",
        "GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_plain_text_handshake_is_cut_off_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let proxy = tls_proxy(&map, &[&shop], &["--tls-handshake-timeout", "300ms"]);
    let tls = proxy.tls.unwrap();

    let mut silent = TcpStream::connect(tls).await.unwrap();
    let started = std::time::Instant::now();
    assert!(raw::closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    let answer = raw::exchange(
        tls,
        b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP on the TLS port"
    );

    let text = eventually_async("both failures counted", PATIENCE, || async {
        let text = metrics(&proxy).await;
        (text.contains("stickyroute_tls_handshakes_total{result=\"timeout\"} 1")
            && !text.contains("stickyroute_tls_handshakes_total{result=\"protocol\"} 0"))
        .then_some(text)
    })
    .await;
    assert!(
        text.contains("stickyroute_tls_handshakes_total{result=\"ok\"} 0"),
        "{text}"
    );
    assert!(
        backend.all_received().is_empty(),
        "nothing reached the member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_answers_plain_requests_with_308_to_the_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let proxy = tls_proxy(&map, &[&shop], &["--https-redirect"]);
    proxy.wait_members(1).await;
    let port = proxy.tls.unwrap().port();

    let answer = raw::exchange(
        proxy.addr,
        b"POST /cart?item=7 HTTP/1.1\r\nHost: shop.example:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains(&format!(
            "\r\nlocation: https://shop.example:{port}/cart?item=7\r\n"
        )),
        "{answer}"
    );
    // The TLS listener serves as usual; nothing was forwarded from the plain one.
    let answer = https_get(
        proxy.tls.unwrap(),
        "shop.example",
        "GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.connections(), 1);

    // Behind a Service that maps 443 to the TLS listener: the URL names 443, so no port.
    let behind = tls_proxy(
        &map,
        &[&shop],
        &["--https-redirect", "--https-redirect-port", "443"],
    );
    let answer = raw::exchange(
        behind.addr,
        b"GET /a HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        answer.contains("\r\nlocation: https://shop.example/a\r\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_s_client_see_the_certificate_for_the_name_they_ask() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let legacy = rsa(dir.path(), "legacy", "legacy.example");
    let proxy = tls_proxy(&map, &[&shop, &legacy], &[]);
    proxy.wait_members(1).await;
    let port = proxy.tls.unwrap().port();
    for (name, pair) in [("shop.example", &shop), ("legacy.example", &legacy)] {
        for http in ["--http1.1", "--http2"] {
            let mut curl = std::process::Command::new("curl");
            curl.args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                http,
            ])
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&pair.cert)
            .arg(format!("https://{name}:{port}/"));
            let out = tokio::task::spawn_blocking(move || curl.output())
                .await
                .unwrap()
                .expect("curl (installed by scripts/test.sh)");
            let text = String::from_utf8_lossy(&out.stdout);
            let version = if http == "--http2" { "2" } else { "1.1" };
            assert_eq!(text, format!("200 {version}"), "{name} {http}: {out:?}");
        }
        let mut s_client = std::process::Command::new("openssl");
        s_client
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", name, "-verify_return_error", "-CAfile"])
            .arg(&pair.cert)
            .stdin(std::process::Stdio::null());
        let out = tokio::task::spawn_blocking(move || s_client.output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{name}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_comes_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::answering_ok("127.0.0.2").await;
    let map = write_map(dir.path(), &[("www1", backend.addr())]);
    let shop = ecdsa(dir.path(), "shop", &["shop.example"]);
    let proxy = tls_proxy(
        &map,
        &[&shop],
        &["--trusted-proxy", "127.0.0.9", "--proxy-protocol"],
    );
    proxy.wait_members(1).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(proxy.tls.unwrap()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n")
        .await
        .unwrap();
    let mut stream = handshake(&client(&[b"http/1.1"]), tcp, "shop.example").await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let received = String::from_utf8(backend.all_received()).unwrap();
    assert!(
        received.contains("\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n"),
        "{received}"
    );
}
