//! A member's lifecycle as its sessions see it: its agent drains (SIGTERM, `POST /drain`)
//! and the proxy sends it its sessions and no new ones; it stops, is down for a while and
//! comes back on its address; members are added under load. The proxy and agents run
//! in-process on their own loopback addresses, each app on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stickyroute_tests::agent::Agent;
use stickyroute_tests::app::TestApp;
use stickyroute_tests::client::{call, get};
use stickyroute_tests::proxy::Proxy;
use stickyroute_tests::{PATIENCE, eventually};

/// A port on `ip` that was free a moment ago.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member: its app on `app_ip`, its agent on `agent_ip:port`.
struct Member {
    route: String,
    agent_addr: SocketAddr,
    app_addr: SocketAddr,
    app: Option<TestApp>,
    agent: Option<Agent>,
}

impl Member {
    async fn start(route: &str, agent_ip: &str, app_ip: &str) -> Self {
        let app = TestApp::start(route, app_ip).await;
        let agent_addr = SocketAddr::new(agent_ip.parse().unwrap(), free_port(agent_ip));
        Self {
            route: route.to_owned(),
            agent_addr,
            app_addr: app.addr(),
            app: Some(app),
            agent: None,
        }
    }

    fn map_line(&self) -> String {
        format!(
            "{} {} port={}\n",
            self.agent_addr.ip(),
            self.route,
            self.agent_addr.port()
        )
    }

    /// Starts (or restarts) the agent, once the map has this member, and waits until ready.
    async fn start_agent(&mut self, map: &Path, args: &[&str]) {
        let agent = Agent::builder_at(
            &self.agent_addr.to_string(),
            &format!("{}:0", self.agent_addr.ip()),
            self.app_addr,
            map,
        )
        .arg("--track-all")
        .args(args)
        .start();
        agent.process.wait_ready(agent.admin).await;
        self.agent = Some(agent);
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }
}

fn write_map(dir: &tempfile::TempDir, members: &[&Member]) -> PathBuf {
    let map = dir.path().join("routemap");
    let text: String = members.iter().map(|m| m.map_line()).collect();
    std::fs::write(&map, text).unwrap();
    map
}

/// The app that answered, from the test app's JSON body.
fn app_of(reply: &stickyroute_tests::client::Reply) -> String {
    reply.json()["app"].as_str().unwrap_or_default().to_owned()
}

/// A new session through the proxy: the route its agent issued, and the app that served it.
async fn new_session(proxy: SocketAddr) -> (String, String) {
    let reply = get(proxy, "/").send().await;
    assert_eq!(reply.status, 200);
    let cookie = reply.set_cookies_named("balanceid");
    let value = cookie
        .first()
        .and_then(|c| c.split(';').next())
        .and_then(|c| c.strip_prefix("balanceid="))
        .unwrap_or_else(|| panic!("a new session gets the route cookie: {cookie:?}"))
        .to_owned();
    (value, app_of(&reply))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agents_member_keeps_its_sessions_and_gets_no_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut www1 = Member::start("www1", "127.0.0.2", "127.0.0.12").await;
    let mut www2 = Member::start("www2", "127.0.0.3", "127.0.0.13").await;
    let map = write_map(&dir, &[&www1, &www2]);
    www1.start_agent(&map, &[]).await;
    www2.start_agent(&map, &[]).await;
    let proxy = Proxy::builder(&map).start();
    proxy.wait_members(2).await;

    let drained = call(www1.agent().admin, http::Method::POST, "/drain")
        .send()
        .await;
    assert_eq!(drained.status, 202, "{}", drained.text());
    assert_eq!(drained.json()["reason"], "POST /drain");
    let agent_status = get(www1.agent().admin, "/status").send().await.json();
    assert_eq!(agent_status["draining"], true, "{agent_status}");

    // The member's session is still served by it; the proxy hears the drain on that answer
    // and keeps the header to itself.
    let session = get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    assert_eq!(app_of(&session), "www1");
    assert_eq!(session.header("stickyroute-member"), None);
    let member = proxy.member("www1").await;
    assert_eq!(member["status"], "drain", "{member}");
    assert_eq!(member["agent_draining"], true, "{member}");
    assert_eq!(member["map_status"], "enabled", "{member}");
    let page = get(proxy.admin, "/balancer-manager").send().await.text();
    assert!(page.contains("draining (agent)"), "{page}");

    // New sessions all go to www2; www1's keep reaching www1.
    for i in 0..20 {
        let (cookie, app) = new_session(proxy.addr).await;
        assert_eq!(
            (cookie.as_str(), app.as_str()),
            ("route.www2", "www2"),
            "new session {i}"
        );
        let pinned = get(proxy.addr, "/")
            .header("cookie", "balanceid=route.www1")
            .send()
            .await;
        assert_eq!(app_of(&pinned), "www1", "session request {i}");
    }
    let metrics = get(proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains(r#"stickyroute_proxy_sticky_total{outcome="drained_hit"} 20"#),
        "{metrics}"
    );

    // Taken back: the next answer without the header ends the drain at the proxy.
    let undone = call(www1.agent().admin, http::Method::DELETE, "/drain")
        .send()
        .await;
    assert_eq!(undone.status, 200, "{}", undone.text());
    get(proxy.addr, "/")
        .header("cookie", "balanceid=route.www1")
        .send()
        .await;
    let member = proxy.member("www1").await;
    assert_eq!(member["status"], "enabled", "{member}");
    let mut apps = HashMap::new();
    for _ in 0..10 {
        *apps.entry(new_session(proxy.addr).await.1).or_insert(0) += 1;
    }
    assert!(
        apps.get("www1").is_some_and(|n| *n >= 3),
        "new sessions reach www1 again: {apps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_answers_once_the_sessions_went_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut www1 = Member::start("www1", "127.0.0.2", "127.0.0.12").await;
    let map = write_map(&dir, &[&www1]);
    www1.start_agent(&map, &["--drain-idle", "600ms"]).await;
    let (agent, admin) = (www1.agent().addr, www1.agent().admin);
    let began = Instant::now();
    let prestop = tokio::spawn(async move { get(admin, "/prestop").send().await });
    // Session requests keep the drain going; others do not.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let reply = get(agent, "/")
            .header("cookie", "balanceid=route.www1")
            .send()
            .await;
        assert_eq!(
            reply.header("stickyroute-member").as_deref(),
            Some("draining")
        );
        assert!(
            !prestop.is_finished(),
            "answered while sessions were active"
        );
    }
    let last_session = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        get(agent, "/").send().await;
    }
    let reply = prestop.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["done"], true);
    let quiet = last_session.elapsed();
    assert!(
        quiet >= Duration::from_millis(590) && quiet < Duration::from_millis(2000),
        "answered {quiet:?} after the last session request ({:?} in all)",
        began.elapsed()
    );
    // The agent still serves: only a shutdown stops it.
    assert_eq!(get(agent, "/").send().await.status, 200);
}

/// What one session saw: each answer's time, status, app and `Retry-After`.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    status: u16,
    app: String,
    retry_after: Option<u64>,
}

/// `count` sessions, each sending a request every `pause` with its cookie until `stop`;
/// returns each session's route and answers.
fn sessions_under_load(
    proxy: SocketAddr,
    sessions: Vec<(String, String)>,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(String, String, Vec<Answer>)>> {
    sessions
        .into_iter()
        .map(|(cookie, app)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = get(proxy, "/")
                        .header("cookie", &format!("balanceid={cookie}"))
                        .try_send()
                        .await;
                    let answer = match reply {
                        Ok(reply) => Answer {
                            at: Instant::now(),
                            status: reply.status.as_u16(),
                            app: if reply.status == 200 {
                                app_of(&reply)
                            } else {
                                String::new()
                            },
                            retry_after: reply.header("retry-after").and_then(|v| v.parse().ok()),
                        },
                        Err(_) => Answer {
                            at: Instant::now(),
                            status: 0,
                            app: String::new(),
                            retry_after: None,
                        },
                    };
                    answers.push(answer);
                    tokio::time::sleep(pause).await;
                }
                (cookie, app, answers)
            })
        })
        .collect()
}

/// When each member was restarted: its agent got SIGTERM, exited, and was back.
#[derive(Debug, Clone, Copy)]
struct Restart {
    term: Instant,
    exited: Instant,
    back: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    for (i, route) in ["www1", "www2", "www3", "www4"].iter().enumerate() {
        members.push(
            Member::start(
                route,
                &format!("127.0.0.{}", 2 + i),
                &format!("127.0.0.{}", 22 + i),
            )
            .await,
        );
    }
    let map = write_map(&dir, &members.iter().collect::<Vec<_>>());
    // Sessions stay busy, so each drain runs to its timeout.
    let agent_args = [
        "--drain-idle",
        "500ms",
        "--drain-timeout",
        "1500ms",
        "--grace-period",
        "5s",
    ];
    for member in &mut members {
        member.start_agent(&map, &agent_args).await;
    }
    let proxy = Proxy::builder(&map)
        .args(&[
            "--nofailover",
            "--failover-after",
            "10s",
            "--retry",
            "500ms",
        ])
        .start();
    proxy.wait_members(4).await;
    let mut sessions = Vec::new();
    for _ in 0..200 {
        sessions.push(new_session(proxy.addr).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = sessions_under_load(
        proxy.addr,
        sessions,
        Duration::from_millis(100),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let restarts = Arc::new(Mutex::new(HashMap::new()));
    for member in &mut members {
        let term = Instant::now();
        member.agent().process.shutdown();
        // It stops accepting when its drain is done (and says so on /readyz): from the last
        // moment it was known to accept, its sessions may find it gone.
        let admin = member.agent().admin;
        let mut exited = Instant::now();
        loop {
            // When the question was asked: the answer "ready" was made after it.
            let asked = Instant::now();
            let ready = get(admin, "/readyz").try_send().await;
            if !ready.is_ok_and(|r| r.status == 200) {
                break;
            }
            exited = asked;
            assert!(exited - term < PATIENCE, "the drain never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eventually("the agent to exit after its drain", PATIENCE, || {
            member.agent().process.has_stopped().then_some(())
        })
        .await;
        drop(member.agent.take());
        // The app outlives its agent's drain (a preStop hook in Kubernetes), then stops.
        member.app.take().unwrap().stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        member.app = Some(TestApp::start_on(&member.route, member.app_addr).await);
        member.start_agent(&map, &agent_args).await;
        let back = Instant::now();
        restarts
            .lock()
            .unwrap()
            .insert(member.route.clone(), Restart { term, exited, back });
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let restarts = restarts.lock().unwrap().clone();

    let (mut served, mut refused, mut others_errors, mut during_drain) = (0, 0, 0, 0);
    let mut moved = Vec::new();
    for task in load {
        let (cookie, app, answers) = task.await.unwrap();
        for answer in answers {
            let own = &restarts[&app];
            if answer.status == 200 {
                served += 1;
                if answer.app != app {
                    moved.push(format!("{cookie} answered by {}", answer.app));
                }
                if answer.at > own.term && answer.at < own.exited {
                    during_drain += 1;
                }
                continue;
            }
            // Only the restarted member's own sessions may be refused, only from its
            // agent's exit until it is back (and tried again after the retry time), and
            // with a Retry-After no later than the failover.
            let down = answer.at > own.exited && answer.at < own.back + Duration::from_secs(2);
            if answer.status == 503 && down {
                refused += 1;
                let after = answer.retry_after.unwrap_or(0);
                let failover_in = Duration::from_secs(10)
                    .saturating_sub(answer.at.saturating_duration_since(own.exited));
                assert!(
                    after >= 1 && after <= failover_in.as_secs() + 1,
                    "{cookie}: Retry-After {after} s with the failover {failover_in:?} away"
                );
            } else {
                others_errors += 1;
                eprintln!("{cookie} ({app}): unexpected {answer:?}; restarts {restarts:?}");
            }
        }
    }
    eprintln!(
        "rolling restart of 4 members under 200 sessions: {served} served by their own member \
         ({during_drain} of them while it drained), {refused} refused with 503 while it was down, \
         {others_errors} other errors, {} moved",
        moved.len()
    );
    assert_eq!(others_errors, 0, "errors outside a member's own downtime");
    assert!(moved.is_empty(), "sessions moved: {moved:?}");
    assert!(
        during_drain > 100,
        "draining members kept serving their sessions: {during_drain}"
    );
    assert!(refused > 0, "some requests came while a member was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_under_load_move_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut www1 = Member::start("www1", "127.0.0.2", "127.0.0.12").await;
    let mut www2 = Member::start("www2", "127.0.0.3", "127.0.0.13").await;
    let mut www3 = Member::start("www3", "127.0.0.4", "127.0.0.14").await;
    let mut www4 = Member::start("www4", "127.0.0.5", "127.0.0.15").await;
    let map = write_map(&dir, &[&www1, &www2]);
    www1.start_agent(&map, &[]).await;
    www2.start_agent(&map, &[]).await;
    let proxy = Proxy::builder(&map).start();
    proxy.wait_members(2).await;
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(new_session(proxy.addr).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = sessions_under_load(
        proxy.addr,
        sessions,
        Duration::from_millis(50),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    write_map(&dir, &[&www1, &www2, &www3, &www4]);
    www3.start_agent(&map, &[]).await;
    www4.start_agent(&map, &[]).await;
    proxy.wait_members(4).await;
    let mut apps = HashMap::new();
    for _ in 0..40 {
        *apps.entry(new_session(proxy.addr).await.1).or_insert(0) += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut answered, mut moved, mut failed) = (0, 0, 0);
    for task in load {
        let (_, app, answers) = task.await.unwrap();
        for answer in answers {
            match answer.status {
                200 if answer.app == app => answered += 1,
                200 => moved += 1,
                _ => failed += 1,
            }
        }
    }
    eprintln!(
        "scale-up under 100 sessions: {answered} answered by their member, {moved} moved, {failed} failed"
    );
    assert_eq!((moved, failed), (0, 0));
    assert!(answered > 200);
    assert!(
        apps.get("www3").is_some_and(|n| *n >= 10) && apps.get("www4").is_some_and(|n| *n >= 10),
        "new sessions reach the new members: {apps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_its_member_until_failover_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut www1 = Member::start("www1", "127.0.0.2", "127.0.0.12").await;
    let mut www2 = Member::start("www2", "127.0.0.3", "127.0.0.13").await;
    let map = write_map(&dir, &[&www1, &www2]);
    www1.start_agent(&map, &[]).await;
    www2.start_agent(&map, &[]).await;
    let proxy = Proxy::builder(&map)
        .args(&["--nofailover", "--failover-after", "2s", "--retry", "30s"])
        .start();
    proxy.wait_members(2).await;
    let pinned = || {
        get(proxy.addr, "/")
            .header("cookie", "balanceid=route.www1")
            .send()
    };
    assert_eq!(app_of(&pinned().await), "www1");
    drop(www1.agent.take());
    let down = Instant::now();

    // Until the member has been down for 2 s: 503, with the time left (not the 30 s retry).
    let first = pinned().await;
    assert_eq!(first.status, 503);
    assert_eq!(first.header("retry-after").as_deref(), Some("2"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = pinned().await;
    assert_eq!(later.status, 503);
    assert_eq!(later.header("retry-after").as_deref(), Some("1"));

    // After it: a weighted pick, whose agent gives the session its own route.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(down.elapsed())).await;
    let moved = pinned().await;
    assert_eq!(moved.status, 200);
    assert_eq!(app_of(&moved), "www2");
    let cookie = moved.set_cookies_named("balanceid");
    assert!(
        cookie
            .first()
            .is_some_and(|c| c.starts_with("balanceid=route.www2;")),
        "{cookie:?}"
    );
    let metrics = get(proxy.admin, "/metrics").send().await.text();
    assert!(
        metrics.contains(r#"stickyroute_proxy_sticky_total{outcome="failover"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stickyroute_proxy_sticky_total{outcome="nofailover_503"} 2"#),
        "{metrics}"
    );
}
