//! The chaos benchmark: mixed traffic through the real `stickyroute-proxy` and one real
//! `stickyroute-agent` per member, while members are killed and restarted and the route
//! map changes every second. It checks the robustness promises as a whole, over minutes:
//!
//! - only the in-flight requests of a killed member may fail (and, under `--nofailover`,
//!   its sessions get 503 until it is back); nothing else fails;
//! - no session is broken: every answer of a session comes from its own member, with the
//!   visit count that member keeps for it, across kills and map changes;
//! - the proxy's memory and open descriptors end where they started.
//!
//! `cargo run --release -p stickyroute-bench --bin chaos -- [--seconds 600] [--out FILE]`
//! (the release binaries are built first: `cargo build --release`). Members are the test
//! app on 127.0.0.2 … 127.0.0.5, each behind its agent; a kill is a SIGKILL of the agent
//! (the app, and so the sessions' state, lives on, as it would behind a restarted sidecar).
//!
//! Traffic, all at once: sticky sessions (logged in, then visiting), new sessions, 1 MiB
//! uploads, 4 MiB downloads, WebSocket echoes, slow readers of a download, and clients
//! that abort an upload or a download halfway.

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stickyroute_tests::app::TestApp;
use stickyroute_tests::process::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The members: route, app and agent address.
const MEMBERS: [(&str, &str); 4] = [
    ("www1", "127.0.0.2"),
    ("www2", "127.0.0.3"),
    ("www3", "127.0.0.4"),
    ("www0", "127.0.0.5"),
];
/// Sticky users, and clients of each other kind.
const USERS: usize = 24;
const NEW_SESSIONS: usize = 4;
const UPLOADERS: usize = 2;
const DOWNLOADERS: usize = 2;
const WEBSOCKETS: usize = 4;
const SLOW_READERS: usize = 2;
const ABORTERS: usize = 2;
/// A member is killed this often, and comes back this much later.
const KILL_EVERY: Duration = Duration::from_secs(20);
const DOWN_FOR: Duration = Duration::from_secs(3);
/// The proxy's --retry: how long after a failure a member is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How long after a member is back its sessions may still see the failure.
const GRACE_AFTER: Duration = Duration::from_secs(3);
const UPLOAD_BYTES: usize = 1 << 20;
const DOWNLOAD_BYTES: u64 = 4 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut seconds = 600u64;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "--out" => out = Some(args.next().context("--out FILE")?.into()),
            other => bail!("unknown argument {other:?} (--seconds N, --out FILE)"),
        }
    }
    let release = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_owned();
    for binary in ["stickyroute-proxy", "stickyroute-agent"] {
        if !release.join(binary).exists() {
            bail!(
                "{} is missing: run `cargo build --release` first",
                release.join(binary).display()
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let map = dir.path().join("routemap");
    let mut members = Vec::new();
    for (route, ip) in MEMBERS {
        members.push(Member::start(route, ip, &release, &map).await?);
    }
    write_map(&map, &members, 0)?;
    let proxy = start_proxy(&release, &map)?;
    let target = proxy.1;
    wait_ready(proxy.2).await?;
    for member in &members {
        wait_ready(member.admin).await?;
    }
    println!(
        "chaos: {seconds} s against {target}; members {}",
        members
            .iter()
            .map(|m| m.route)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let shared = Arc::new(Shared {
        target,
        stop: AtomicBool::new(false),
        tally: Tally::default(),
        kills: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for i in 0..USERS {
        tasks.push(tokio::spawn(sticky_user(shared.clone(), i)));
    }
    for _ in 0..NEW_SESSIONS {
        tasks.push(tokio::spawn(new_sessions(shared.clone())));
    }
    for _ in 0..UPLOADERS {
        tasks.push(tokio::spawn(uploads(shared.clone())));
    }
    for _ in 0..DOWNLOADERS {
        tasks.push(tokio::spawn(downloads(shared.clone(), false)));
    }
    for _ in 0..SLOW_READERS {
        tasks.push(tokio::spawn(downloads(shared.clone(), true)));
    }
    for i in 0..WEBSOCKETS {
        tasks.push(tokio::spawn(websockets(shared.clone(), i)));
    }
    for i in 0..ABORTERS {
        tasks.push(tokio::spawn(aborters(shared.clone(), i)));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = (rss_kib(proxy.0.pid()), open_fds(proxy.0.pid()));

    let began = Instant::now();
    let deadline = began + Duration::from_secs(seconds);
    let (mut next_kill, mut generation, mut victim) = (began + KILL_EVERY, 1u64, 0usize);
    let mut peak = start;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        generation += 1;
        write_map(&map, &members, generation)?;
        let now = (rss_kib(proxy.0.pid()), open_fds(proxy.0.pid()));
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        if Instant::now() >= next_kill && Instant::now() + DOWN_FOR < deadline {
            let count = members.len();
            let member = &mut members[victim % count];
            victim += 1;
            next_kill += KILL_EVERY;
            let killed = Instant::now();
            let index = {
                let mut kills = shared.lock_kills();
                kills.push(Kill {
                    route: member.route,
                    from: killed,
                    until: None,
                });
                kills.len() - 1
            };
            member.kill();
            tokio::time::sleep(DOWN_FOR).await;
            member.restart(&release, &map)?;
            wait_ready(member.admin).await?;
            shared.lock_kills()[index].until = Some(Instant::now() + RETRY + GRACE_AFTER);
            println!(
                "  {:>4} s: killed {} for {:?}",
                killed.duration_since(began).as_secs(),
                member.route,
                DOWN_FOR
            );
        }
    }
    shared.stop.store(true, Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    // Connections the clients left close after the proxy's header read timeout (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let end = (rss_kib(proxy.0.pid()), open_fds(proxy.0.pid()));
    let report = shared
        .tally
        .report(seconds, start, peak, end, victim, generation);
    println!("{report}");
    if let Some(out) = out {
        std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
    }
    if shared.tally.unexpected() > 0 || shared.tally.broken.load(Relaxed) > 0 {
        bail!("unexpected failures or broken sessions; see above");
    }
    Ok(())
}

/// One member: the test app and the agent in front of it.
struct Member {
    route: &'static str,
    app: TestApp,
    agent: Option<Process>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Member {
    async fn start(
        route: &'static str,
        ip: &str,
        release: &Path,
        map: &Path,
    ) -> anyhow::Result<Self> {
        let app = TestApp::start(route, ip).await;
        let listen = free_port(ip)?;
        let admin = free_port(ip)?;
        let mut member = Self {
            route,
            app,
            agent: None,
            listen,
            admin,
        };
        member.restart(release, map)?;
        Ok(member)
    }

    fn restart(&mut self, release: &Path, map: &Path) -> anyhow::Result<()> {
        let args: Vec<String> = [
            "--listen",
            &self.listen.to_string(),
            "--admin-listen",
            &self.admin.to_string(),
            "--upstream",
            &self.app.addr().to_string(),
            "--routemap",
            &map.display().to_string(),
            "--session-cookie",
            "SESSION",
            "--drain-delay",
            "0s",
            "--grace-period",
            "1s",
            "--log-level",
            "error",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        self.agent = Some(Process::start_path(
            &release.join("stickyroute-agent"),
            &args,
            &[],
        ));
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.signal("KILL");
            let _ = agent.wait_exit(Duration::from_secs(5));
        }
    }
}

fn free_port(ip: &str) -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?)
}

/// The map: every member, and a decoy entry whose loadfactor changes with `generation`,
/// so that every write is a new map and a table swap.
fn write_map(path: &Path, members: &[Member], generation: u64) -> anyhow::Result<()> {
    let mut text = String::new();
    for m in members {
        text.push_str(&format!(
            "{} {} port={}\n",
            m.listen.ip(),
            m.route,
            m.listen.port()
        ));
    }
    text.push_str(&format!(
        "127.0.0.99 decoy status=disabled loadfactor={}\n",
        generation % 100 + 1
    ));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The proxy process, its traffic and admin addresses.
fn start_proxy(release: &Path, map: &Path) -> anyhow::Result<(Process, SocketAddr, SocketAddr)> {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--routemap",
        &map.display().to_string(),
        "--nofailover",
        "--retry",
        "1s",
        "--log-level",
        "info",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let process = Process::start_path(&release.join("stickyroute-proxy"), &args, &[]);
    let addr = process.logged_addr(
        "stickyroute-proxy started",
        "listen",
        Duration::from_secs(20),
    );
    let admin = process.logged_addr(
        "stickyroute-proxy started",
        "admin",
        Duration::from_secs(20),
    );
    Ok((process, addr, admin))
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ready = stickyroute_tests::client::get(admin, "/readyz")
            .try_send()
            .await;
        if ready.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{admin} never became ready")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// A member's downtime, and until when its effects may still be seen (`None` while it is
/// down).
struct Kill {
    route: &'static str,
    from: Instant,
    until: Option<Instant>,
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    tally: Tally,
    kills: Mutex<Vec<Kill>>,
}

impl Shared {
    fn lock_kills(&self) -> std::sync::MutexGuard<'_, Vec<Kill>> {
        self.kills.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> bool {
        !self.stop.load(Relaxed)
    }

    /// Whether a request that ran from `started` until now may have failed because a
    /// member (`route`, or any member when it is not known) was down.
    fn excused(&self, route: Option<&str>, started: Instant) -> bool {
        let now = Instant::now();
        self.lock_kills().iter().any(|k| {
            route.is_none_or(|r| r == k.route)
                && k.from <= now
                && k.until.is_none_or(|until| until >= started)
        })
    }
}

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 7],
    excused: Mutex<BTreeMap<String, u64>>,
    failed: Mutex<BTreeMap<String, u64>>,
    broken: AtomicU64,
    sessions: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Sticky,
    New,
    Upload,
    Download,
    SlowRead,
    WebSocket,
    Abort,
}

const KINDS: [(Kind, &str); 7] = [
    (Kind::Sticky, "sticky session requests"),
    (Kind::New, "new-session requests"),
    (Kind::Upload, "1 MiB uploads"),
    (Kind::Download, "4 MiB downloads"),
    (Kind::SlowRead, "slow-reader downloads"),
    (Kind::WebSocket, "WebSocket echoes"),
    (Kind::Abort, "aborted requests (by design)"),
];

impl Tally {
    fn ok(&self, kind: Kind) {
        self.ok[kind as usize].fetch_add(1, Relaxed);
    }

    /// A failure: excused when a member's kill explains it, else unexpected.
    fn failure(&self, kind: Kind, cause: String, excused: bool) {
        let label = format!("{}: {cause}", KINDS[kind as usize].1);
        let map = if excused { &self.excused } else { &self.failed };
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label)
            .or_default() += 1;
    }

    fn unexpected(&self) -> u64 {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    fn report(
        &self,
        seconds: u64,
        start: (u64, u64),
        peak: (u64, u64),
        end: (u64, u64),
        kills: usize,
        maps: u64,
    ) -> String {
        let mut out = format!(
            "## Chaos run: {seconds} s, {kills} member kills, {maps} map changes\n\n| traffic | completed |\n|---|---|\n"
        );
        let mut total = 0;
        for (kind, name) in KINDS {
            let n = self.ok[kind as usize].load(Relaxed);
            total += n;
            out.push_str(&format!("| {name} | {n} |\n"));
        }
        out.push_str(&format!("| all | {total} |\n\n"));
        out.push_str(&format!(
            "Sessions: {} logged in, {} broken (an answer from another member, or a visit count the member did not keep).\n\n",
            self.sessions.load(Relaxed),
            self.broken.load(Relaxed)
        ));
        for (title, map) in [
            (
                "Failures explained by a member's kill (its in-flight requests; 503 for its sessions until it is back)",
                &self.excused,
            ),
            ("Unexpected failures", &self.failed),
        ] {
            let map = map.lock().unwrap_or_else(|p| p.into_inner());
            out.push_str(&format!("{title}: {}\n\n", map.values().sum::<u64>()));
            for (cause, n) in map.iter() {
                out.push_str(&format!("- {cause}: {n}\n"));
            }
            if !map.is_empty() {
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "| proxy | RSS MiB | open descriptors |\n|---|---|---|\n| start (after warm-up) | {:.1} | {} |\n| peak | {:.1} | {} |\n| end (traffic stopped) | {:.1} | {} |\n",
            start.0 as f64 / 1024.0,
            start.1,
            peak.0 as f64 / 1024.0,
            peak.1,
            end.0 as f64 / 1024.0,
            end.1
        ));
        out
    }
}

/// A keep-alive HTTP/1.1 connection to the proxy.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// One request; the status, the headers and the whole body.
    async fn send(
        &mut self,
        request: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
        self.sender.ready().await?;
        let response =
            tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(request))
                .await
                .context("no answer within 30 s")??;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
            .await
            .context("the body did not complete within 60 s")??
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }
}

fn request(
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Bytes,
) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    builder.body(Full::new(body)).unwrap_or_default()
}

/// A user who logs in and keeps visiting: every answer must come from the member that
/// holds the session, with the count that member keeps.
async fn sticky_user(shared: Arc<Shared>, index: usize) {
    let mut conn: Option<Conn> = None;
    let mut session: Option<(String, String, u64)> = None; // cookie, home, count
    let mut since_ok_failures = 0u64;
    while shared.running() {
        tokio::time::sleep(Duration::from_millis(20 + (index as u64 % 7) * 5)).await;
        let started = Instant::now();
        if conn.is_none() {
            match Conn::open(shared.target).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared
                        .tally
                        .failure(Kind::Sticky, format!("connect: {e}"), false);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let Some((cookie, home, count)) = session.clone() else {
            match c.send(request("GET", "/login", None, Bytes::new())).await {
                Ok((200, headers, body)) => {
                    let cookies: Vec<String> = headers
                        .get_all("set-cookie")
                        .iter()
                        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
                        .collect();
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let home = json["app"].as_str().unwrap_or_default().to_owned();
                    if cookies.iter().any(|c| c.starts_with("balanceid=")) {
                        session = Some((cookies.join("; "), home, 1));
                        since_ok_failures = 0;
                        shared.tally.sessions.fetch_add(1, Relaxed);
                        shared.tally.ok(Kind::Sticky);
                    } else {
                        shared.tally.failure(
                            Kind::Sticky,
                            "login without a balanceid cookie".into(),
                            shared.excused(None, started),
                        );
                    }
                }
                Ok((status, ..)) => shared.tally.failure(
                    Kind::Sticky,
                    format!("login: {status}"),
                    shared.excused(None, started),
                ),
                Err(e) => {
                    shared.tally.failure(
                        Kind::Sticky,
                        format!("login: {e}"),
                        shared.excused(None, started),
                    );
                    conn = None;
                }
            }
            continue;
        };
        match c
            .send(request("GET", "/", Some(&cookie), Bytes::new()))
            .await
        {
            Ok((200, _, body)) => {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let app = json["app"].as_str().unwrap_or_default();
                let got = json["count"].as_u64().unwrap_or(0);
                // A request that failed in flight may still have reached the app.
                let fits = got > count && got <= count + 1 + since_ok_failures;
                if app == home && fits {
                    session = Some((cookie, home, got));
                    since_ok_failures = 0;
                    shared.tally.ok(Kind::Sticky);
                } else {
                    shared.tally.broken.fetch_add(1, Relaxed);
                    shared.tally.failure(
                        Kind::Sticky,
                        format!("broken session: answered by {app} with count {got}, expected {home} with {}", count + 1),
                        false,
                    );
                    session = None;
                }
            }
            Ok((status, ..)) => {
                since_ok_failures += 1;
                shared.tally.failure(
                    Kind::Sticky,
                    format!("status {status}"),
                    shared.excused(Some(&home), started),
                );
            }
            Err(e) => {
                since_ok_failures += 1;
                shared.tally.failure(
                    Kind::Sticky,
                    format!("{e}"),
                    shared.excused(Some(&home), started),
                );
                conn = None;
            }
        }
    }
}

/// Requests without a session, each on a new connection: balanced among the members.
async fn new_sessions(shared: Arc<Shared>) {
    while shared.running() {
        let started = Instant::now();
        let outcome = async {
            let mut conn = Conn::open(shared.target).await?;
            conn.send(request("GET", "/", None, Bytes::new())).await
        }
        .await;
        match outcome {
            Ok((200, ..)) => shared.tally.ok(Kind::New),
            Ok((status, ..)) => shared.tally.failure(
                Kind::New,
                format!("status {status}"),
                shared.excused(None, started),
            ),
            Err(e) => {
                shared
                    .tally
                    .failure(Kind::New, format!("{e}"), shared.excused(None, started))
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn uploads(shared: Arc<Shared>) {
    let body = Bytes::from(vec![b'u'; UPLOAD_BYTES]);
    while shared.running() {
        let started = Instant::now();
        let outcome = async {
            let mut conn = Conn::open(shared.target).await?;
            conn.send(request("POST", "/upload", None, body.clone()))
                .await
        }
        .await;
        match outcome {
            Ok((200, _, answer)) if answer == UPLOAD_BYTES.to_string() => {
                shared.tally.ok(Kind::Upload)
            }
            Ok((status, _, answer)) => shared.tally.failure(
                Kind::Upload,
                format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&answer).trim()
                ),
                shared.excused(None, started),
            ),
            Err(e) => {
                shared
                    .tally
                    .failure(Kind::Upload, format!("{e}"), shared.excused(None, started))
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Downloads, read as fast as they come or slowly (64 KiB every 100 ms: well within the
/// idle timeout, so they must complete).
async fn downloads(shared: Arc<Shared>, slow: bool) {
    let kind = if slow { Kind::SlowRead } else { Kind::Download };
    while shared.running() {
        let started = Instant::now();
        let outcome = download(shared.target, slow).await;
        match outcome {
            Ok(n) if n == DOWNLOAD_BYTES => shared.tally.ok(kind),
            Ok(n) => shared.tally.failure(
                kind,
                format!("{n} of {DOWNLOAD_BYTES} bytes"),
                shared.excused(None, started),
            ),
            Err(e) => shared
                .tally
                .failure(kind, format!("{e}"), shared.excused(None, started)),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn download(target: SocketAddr, slow: bool) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(target).await?;
    let head = format!(
        "GET /download?bytes={DOWNLOAD_BYTES} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .context("nothing for 30 s")??;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        if slow {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let text_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    if !received.starts_with(b"HTTP/1.1 200") {
        let status_line = received.split(|b| *b == b'\r').next().unwrap_or_default();
        bail!("{}", String::from_utf8_lossy(status_line));
    }
    Ok((received.len() - text_end - 4) as u64)
}

/// WebSocket sessions that echo a message every 100 ms for a few seconds.
async fn websockets(shared: Arc<Shared>, index: usize) {
    while shared.running() {
        let started = Instant::now();
        let outcome = async {
            let stream = TcpStream::connect(shared.target).await?;
            let url = format!("ws://{}/ws", shared.target);
            let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
            for i in 0..30 {
                let text = format!("echo {index} {i}");
                ws.send(Message::text(text.clone())).await?;
                let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .context("no echo within 10 s")?
                    .context("closed")??;
                if echoed.into_text()?.as_str() != text {
                    bail!("a different echo");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match outcome {
            Ok(()) => shared.tally.ok(Kind::WebSocket),
            Err(e) => shared.tally.failure(
                Kind::WebSocket,
                format!("{e}"),
                shared.excused(None, started),
            ),
        }
    }
}

/// Clients that go away halfway through an upload or a download.
async fn aborters(shared: Arc<Shared>, index: usize) {
    let mut round = index;
    while shared.running() {
        round += 1;
        if let Ok(mut stream) = TcpStream::connect(shared.target).await {
            let ok = if round.is_multiple_of(2) {
                let head = "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1000000\r\n\r\n";
                stream.write_all(head.as_bytes()).await.is_ok()
                    && stream.write_all(&[b'a'; 10_000]).await.is_ok()
            } else {
                let head = format!(
                    "GET /download?bytes={DOWNLOAD_BYTES} HTTP/1.1\r\nHost: shop.example\r\n\r\n"
                );
                let mut buf = [0u8; 4096];
                stream.write_all(head.as_bytes()).await.is_ok()
                    && stream.read(&mut buf).await.is_ok()
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(stream);
            if ok {
                shared.tally.ok(Kind::Abort);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
