//! The README's run command: `stickyroute-demo` starts the whole setup on loopback, serves
//! sticky sessions, and follows edits of its route map.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_sticky_sessions_and_follows_map_edits() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let demo = Process::start(
        "stickyroute-demo",
        &[
            "--dir".into(),
            dir.path().display().to_string(),
            "--port-base".into(),
            base.to_string(),
        ],
        &[],
    );
    let proxy: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", base + 1).parse().unwrap();
    demo.wait_ready(admin).await;
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
