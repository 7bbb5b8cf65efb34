//! The seed write-up's Apache setup, reproduced with stickyroute on loopback and walked
//! through as a user would: four app servers (127.0.0.2 … 127.0.0.5), each behind a
//! `stickyroute-agent` with the same arguments apart from its listen and upstream
//! addresses, one route map with the blog's four routes and weights 60/60/60/20, and the
//! proxy with `stickysession=balanceid` and nofailover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stickyroute_tests::PATIENCE;
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{Reply, get};
use stickyroute_tests::proxy::Proxy;

/// The blog's servers, moved to loopback: (route, address, loadfactor).
const SERVERS: [(&str, &str, u8); 4] = [
    ("www1", "127.0.0.2", 60),
    ("www2", "127.0.0.3", 60),
    ("www3", "127.0.0.4", 60),
    ("www0", "127.0.0.5", 20),
];

/// One port free on every server address (as port 80 is on every real server).
fn common_port(ips: &[&str]) -> u16 {
    loop {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

/// A browser's cookie jar, enough for this walk: name → value, set by Set-Cookie.
#[derive(Default, Clone)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn take(&mut self, reply: &Reply) {
        for cookie in reply.set_cookies() {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.insert(name.to_owned(), value.to_owned());
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

struct Seed {
    _dir: tempfile::TempDir,
    map: PathBuf,
    port: u16,
    apps: HashMap<String, TestApp>,
    agents: HashMap<String, Agent>,
    proxy: Proxy,
}

impl Seed {
    /// An agent with the one command line every server shares (only listen and upstream
    /// differ), as the blog's centrally managed configuration.
    fn agent(ip: &str, port: u16, app: &TestApp, map: &Path) -> Agent {
        Agent::builder_at(&format!("{ip}:{port}"), &format!("{ip}:0"), app.addr(), map)
            .args(&["--session-cookie", "SESSION", "--cookie-domain", "host"])
            .start()
    }

    async fn start() -> Seed {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("routemap");
        let port = common_port(&[
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
        ]);
        // The blog's map, one-line form and all, plus the loadfactors its BalancerMembers had.
        let text: String = SERVERS
            .iter()
            .map(|(route, ip, lf)| format!("{ip} {route} loadfactor={lf}\n"))
            .collect();
        std::fs::write(&map, text).unwrap();
        let (mut apps, mut agents) = (HashMap::new(), HashMap::new());
        for (route, ip, _) in SERVERS {
            let app = TestApp::start(route, ip).await;
            agents.insert(route.to_owned(), Self::agent(ip, port, &app, &map));
            apps.insert(route.to_owned(), app);
        }
        let proxy = Proxy::builder(&map)
            .args(&[
                "--stickysession",
                "balanceid",
                "--nofailover",
                "--member-port",
                &port.to_string(),
            ])
            .start_process();
        let seed = Seed {
            _dir: dir,
            map,
            port,
            apps,
            agents,
            proxy,
        };
        seed.wait_ready().await;
        seed
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while get(self.proxy.admin, "/readyz")
            .try_send()
            .await
            .map(|r| r.status.as_u16())
            .ok()
            != Some(200)
        {
            assert!(Instant::now() < deadline, "proxy never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request as a browser sends it to the site, cookies and all.
    async fn visit(&self, jar: &mut Jar, path: &str) -> Reply {
        let mut call = get(self.proxy.addr, path).host("shop.example");
        if let Some(cookies) = jar.header() {
            call = call.header("cookie", &cookies);
        }
        let reply = call.send().await;
        jar.take(&reply);
        reply
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blogs_setup_keeps_every_session_on_its_server_and_changes_live() {
    let mut seed = Seed::start().await;

    // 1. A first visit without cookies is balanced; no session yet, so no balance cookie.
    let mut alice = Jar::default();
    let first = seed.visit(&mut alice, "/").await;
    assert_eq!(first.status, 200);
    assert!(
        first.set_cookies().is_empty(),
        "no session, no cookie: {:?}",
        first.set_cookies()
    );

    // 2. Logging in creates the app's session; the agent of the server that answered
    //    issues balanceid=route.<its route> on that very response.
    let login = seed.visit(&mut alice, "/login").await;
    let home = login.header("x-app").unwrap();
    assert_eq!(
        alice.get("balanceid"),
        Some(format!("route.{home}").as_str())
    );
    assert!(login.set_cookies_named("balanceid")[0].ends_with("; Domain=shop.example"));
    assert_eq!(login.json()["count"], 1);

    // 3. Every later request lands on that server and its in-memory counter grows by one.
    for expected in 2..=8 {
        let reply = seed.visit(&mut alice, "/").await;
        assert_eq!(reply.header("x-app").as_deref(), Some(home.as_str()));
        assert_eq!(reply.json()["count"], expected, "state kept on {home}");
        assert!(
            reply.set_cookies().is_empty(),
            "the cookie is not re-issued when it is right"
        );
    }

    // Other users get their own servers, in the blog's proportions.
    let mut spread: HashMap<String, usize> = HashMap::new();
    let mut others = Vec::new();
    for _ in 0..40 {
        let mut user = Jar::default();
        let reply = seed.visit(&mut user, "/login").await;
        *spread.entry(reply.header("x-app").unwrap()).or_default() += 1;
        others.push(user);
    }
    // Sticky requests count in the weighted accounting (as in Apache), so Alice's server
    // took fewer new sessions here; www0 (loadfactor 20) takes the fewest of all.
    assert_eq!(spread.len(), 4, "every server took sessions: {spread:?}");
    let www0 = spread["www0"];
    assert!(
        spread.iter().all(|(route, n)| route == "www0" || *n > www0),
        "{spread:?}"
    );

    // 4. Alice's server dies: 503 for her (nofailover), never another server that does
    //    not know her session; users of the other servers are unaffected.
    seed.apps.remove(&home).unwrap().stop().await;
    drop(seed.agents.remove(&home));
    let refused = seed.visit(&mut alice, "/").await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    for user in others
        .iter_mut()
        .filter(|u| u.get("balanceid") != Some(format!("route.{home}").as_str()))
        .take(5)
    {
        let reply = seed.visit(user, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["count"], 2, "their state is intact");
    }

    // 5. A fifth server joins by editing the map file: it takes new sessions, no restart.
    let proxy_pid = seed.proxy.process.pid();
    let www4 = TestApp::start("www4", "127.0.0.6").await;
    seed.agents.insert(
        "www4".into(),
        Seed::agent("127.0.0.6", seed.port, &www4, &seed.map),
    );
    seed.apps.insert("www4".into(), www4);
    let mut text = std::fs::read_to_string(&seed.map).unwrap();
    text.push_str("127.0.0.6 www4 loadfactor=60\n");
    std::fs::write(&seed.map, text).unwrap();
    // Both the proxy and the new agent follow the file; the server counts as joined once
    // its agent reports its route (a rollout waits for readiness the same way).
    let agent_admin = seed.agents["www4"].admin;
    let deadline = Instant::now() + PATIENCE;
    while get(agent_admin, "/status").send().await.json()["routes"][0]["route"] != "www4" {
        assert!(
            Instant::now() < deadline,
            "the new agent never found its route"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut newcomer = loop {
        let mut user = Jar::default();
        let reply = seed.visit(&mut user, "/login").await;
        if reply.header("x-app").as_deref() == Some("www4") {
            break user;
        }
        assert!(
            Instant::now() < deadline,
            "the new server never got a session"
        );
    };
    assert_eq!(
        newcomer.get("balanceid"),
        Some("route.www4"),
        "its agent found its own route in the edited map"
    );
    assert_eq!(seed.visit(&mut newcomer, "/").await.json()["count"], 2);
    assert_eq!(seed.proxy.process.pid(), proxy_pid, "no restart");

    // 6. A route is renamed in the map: that server's agent issues the new cookie, and the
    //    proxy routes it.
    let text = std::fs::read_to_string(&seed.map)
        .unwrap()
        .replace("127.0.0.6 www4", "127.0.0.6 shop4");
    std::fs::write(&seed.map, text).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = seed.visit(&mut newcomer, "/").await;
        if newcomer.get("balanceid") == Some("route.shop4") {
            assert_eq!(reply.header("x-app").as_deref(), Some("www4"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renamed route was never issued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = seed.visit(&mut newcomer, "/").await.json()["count"]
        .as_u64()
        .unwrap();
    for step in 1..=3 {
        let reply = seed.visit(&mut newcomer, "/").await;
        assert_eq!(
            reply.header("x-app").as_deref(),
            Some("www4"),
            "routed by the new route"
        );
        assert_eq!(reply.json()["count"].as_u64().unwrap(), before + step);
    }
}
