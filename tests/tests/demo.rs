//! The README's run command: `stickyroute-demo` starts the whole setup on loopback, serves
//! sticky sessions, balances new ones as its guide says, tells its components' log lines
//! apart, follows edits of its route map, and keeps those edits across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use stickyroute_tests::PATIENCE;
use stickyroute_tests::client::get;
use stickyroute_tests::process::Process;

/// A port base whose five ports are free on every demo address.
fn free_base() -> u16 {
    let ips = [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ];
    loop {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base < 60000
            && (0..5).all(|i| {
                ips.iter()
                    .all(|ip| std::net::TcpListener::bind((*ip, base + i)).is_ok())
            })
        {
            return base;
        }
    }
}

/// A running demo in `dir` on a free port base, with its proxy and admin addresses.
async fn start_demo(dir: &Path, extra: &[&str]) -> (Process, SocketAddr, SocketAddr) {
    let base = free_base();
    let mut args = vec![
        "--dir".to_owned(),
        dir.display().to_string(),
        "--port-base".to_owned(),
        base.to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let demo = Process::start("stickyroute-demo", &args, &[]);
    let proxy: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", base + 1).parse().unwrap();
    demo.wait_ready(admin).await;
    (demo, proxy, admin)
}

/// `n` new sessions (no cookies), counted by what the plain-text page says before its first
/// colon, `served by wwwN`: exactly what the guide's
/// `curl -s .../login | cut -d: -f1 | sort | uniq -c` counts.
async fn logins_by_backend(proxy: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let text = get(proxy, "/login").send().await.text();
        let served_by = text.split(':').next().unwrap().to_owned();
        *counts.entry(served_by).or_insert(0) += 1;
    }
    counts
}

/// What the demo writes into a fresh directory.
const DEMO_MAP: &str = "# stickyroute demo route map: edit me while the demo runs
127.0.0.2 www1 loadfactor=60
127.0.0.3 www2 loadfactor=60
127.0.0.4 www3 loadfactor=60
127.0.0.5 www0 loadfactor=20
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_sticky_sessions_and_follows_map_edits() {
    let dir = tempfile::tempdir().unwrap();
    let (demo, proxy, _admin) = start_demo(dir.path(), &[]).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("routemap")).unwrap(),
        DEMO_MAP
    );

    // The guide's balancing command on a fresh demo: 3:3:3:1, the loadfactors 60/60/60/20.
    let counts = logins_by_backend(proxy, 20).await;
    let expected: BTreeMap<String, usize> = [("www0", 2), ("www1", 6), ("www2", 6), ("www3", 6)]
        .into_iter()
        .map(|(name, n)| (format!("served by {name}"), n))
        .collect();
    assert_eq!(counts, expected);

    // Every line of the merged log says which component wrote it.
    demo.eventually_logs("the proxy's start, prefixed", |l| {
        l.starts_with("proxy      | ") && l.contains("stickyroute-proxy started")
    })
    .await;
    for route in ["www1", "www2", "www3", "www0"] {
        demo.eventually_logs("an agent's start, prefixed", |l| {
            l.starts_with(&format!("agent {route} | ")) && l.contains("stickyroute-agent started")
        })
        .await;
    }
    for line in demo.log() {
        assert!(
            ["proxy      | ", "agent www", "demo       | "]
                .iter()
                .any(|p| line.starts_with(p)),
            "a log line without its component: {line:?}"
        );
    }

    // A visitor without a session is shown the way to start one.
    let first = get(proxy, "/")
        .header("accept", "text/html")
        .send()
        .await
        .text();
    assert!(first.contains("<a href=\"/login\">"), "{first}");

    let login = get(proxy, "/login").send().await;
    let backend = login.header("x-app").unwrap();
    let cookies: Vec<String> = login
        .set_cookies()
        .iter()
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c == &format!("balanceid=route.{backend}")),
        "{cookies:?}"
    );
    let jar = cookies.join("; ");
    for visit in 2..=4 {
        let page = get(proxy, "/").header("cookie", &jar).send().await;
        assert_eq!(page.header("x-app").as_deref(), Some(backend.as_str()));
        assert!(
            page.text().contains(&format!("visit {visit}")),
            "{}",
            page.text()
        );
    }
    let html = get(proxy, "/")
        .header("cookie", &jar)
        .header("accept", "text/html")
        .send()
        .await
        .text();
    assert!(html.contains(&format!("<h1>Served by {backend}</h1>")));
    assert!(html.contains("<a href=\"/login\">"), "{html}");

    // Drain everything but www0 by editing the map: new sessions all go to www0.
    let map = dir.path().join("routemap");
    let text = std::fs::read_to_string(&map).unwrap();
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with('#') || l.contains("www0") {
                format!("{l}\n")
            } else {
                format!("{l} status=drain\n")
            }
        })
        .collect();
    std::fs::write(&map, edited).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let all_www0 = {
            let mut all = true;
            for _ in 0..5 {
                all &= get(proxy, "/login").send().await.header("x-app").as_deref() == Some("www0");
            }
            all
        };
        if all_www0 {
            break;
        }
        assert!(Instant::now() < deadline, "the map edit never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = get(proxy, "/").header("cookie", &jar).send().await;
    assert_eq!(
        kept.header("x-app").as_deref(),
        Some(backend.as_str()),
        "a draining backend keeps its session"
    );

    // Ctrl-C stops everything it started.
    stop(&demo, proxy).await;
}

/// Ctrl-C, then the demo must be gone and its proxy with it.
async fn stop(demo: &Process, proxy: SocketAddr) {
    demo.signal("INT");
    demo.wait_exit(PATIENCE);
    let deadline = Instant::now() + PATIENCE;
    while stickyroute_tests::client::connect(proxy, None)
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the proxy outlived the demo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_an_edited_map_and_reset_map_writes_the_demos_own() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    // What a user left after editing the map of an earlier run: www0 drained.
    let edited = DEMO_MAP.replace("www0 loadfactor=20", "www0 loadfactor=20 status=drain");
    std::fs::write(&map, &edited).unwrap();

    let (demo, proxy, _) = start_demo(dir.path(), &[]).await;
    assert_eq!(
        std::fs::read_to_string(&map).unwrap(),
        edited,
        "the edit was overwritten"
    );
    let said = demo
        .eventually_logs("that it kept the map", |l| {
            l.starts_with("demo       | ") && l.contains("keeping the route map")
        })
        .await;
    assert!(said.contains("--reset-map"), "{said}");
    let counts = logins_by_backend(proxy, 20).await;
    assert!(
        !counts.contains_key("served by www0"),
        "the kept map drains www0: {counts:?}"
    );
    stop(&demo, proxy).await;

    let (demo, proxy, _) = start_demo(dir.path(), &["--reset-map"]).await;
    assert_eq!(std::fs::read_to_string(&map).unwrap(), DEMO_MAP);
    demo.eventually_logs("that it reset the map", |l| {
        l.contains("--reset-map: wrote")
    })
    .await;
    stop(&demo, proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_kept_map_stops_the_demo_with_its_errors_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    let broken = format!("{DEMO_MAP}127.0.0.6 www1\n");
    std::fs::write(&map, &broken).unwrap();
    let demo = Process::start(
        "stickyroute-demo",
        &[
            "--dir".into(),
            dir.path().display().to_string(),
            "--port-base".into(),
            free_base().to_string(),
        ],
        &[],
    );
    assert_eq!(demo.wait_exit(PATIENCE), Some(1));
    let log = demo.log().join("\n");
    assert!(
        log.contains(&format!("{}:6: duplicate route www1", map.display())),
        "{log}"
    );
    assert!(log.contains("--reset-map"), "{log}");
    assert_eq!(std::fs::read_to_string(&map).unwrap(), broken);
}
