//! Backends on 127.0.0.x behind the real proxy: the setup the proxy and balancer-manager
//! tests share.

use crate::PATIENCE;
use crate::app::TestApp;
use crate::client::get;
use crate::proxy::Proxy;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The members of the classic Apache setup: route, address, loadfactor.
pub const SEED: [(&str, &str, u8); 4] = [
    ("www1", "127.0.0.2", 60),
    ("www2", "127.0.0.3", 60),
    ("www3", "127.0.0.4", 60),
    ("www0", "127.0.0.5", 20),
];

/// Backends on their own loopback addresses behind a real proxy, with the map file that
/// joins them.
pub struct Cluster {
    pub dir: TempDir,
    pub map: PathBuf,
    pub apps: HashMap<&'static str, TestApp>,
    pub proxy: Proxy,
}

/// A map line for `app` as member `route`.
pub fn line(app: &TestApp, route: &str, extra: &str) -> String {
    format!(
        "{} {route} port={} {extra}\n",
        app.addr().ip(),
        app.addr().port()
    )
}

impl Cluster {
    pub async fn start(members: &[(&'static str, &str, u8)], args: &[&str]) -> Self {
        Self::launch(members, args, false).await
    }

    /// Like [`Cluster::start`], with the proxy as a child process (for its log, signals).
    pub async fn start_process(members: &[(&'static str, &str, u8)], args: &[&str]) -> Self {
        Self::launch(members, args, true).await
    }

    async fn launch(members: &[(&'static str, &str, u8)], args: &[&str], process: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("routemap");
        let mut apps = HashMap::new();
        let mut text = String::new();
        for (route, ip, weight) in members {
            let app = TestApp::start(route, ip).await;
            text.push_str(&line(&app, route, &format!("loadfactor={weight}")));
            apps.insert(*route, app);
        }
        std::fs::write(&map, text).unwrap();
        let builder = Proxy::builder(&map).args(args);
        let proxy = if process {
            builder.start_process()
        } else {
            builder.start()
        };
        let cluster = Self {
            dir,
            map,
            apps,
            proxy,
        };
        cluster.wait_swaps(1).await;
        cluster
    }

    pub async fn classic(args: &[&str]) -> Self {
        Self::start(&SEED, args).await
    }

    /// Like [`Cluster::classic`], with the proxy as a child process.
    pub async fn classic_process(args: &[&str]) -> Self {
        Self::start_process(&SEED, args).await
    }

    /// Rewrites the map (editor style) from (route, extra attributes) pairs.
    pub fn write_map(&self, members: &[(&str, &str)]) {
        let text: String = members
            .iter()
            .map(|(route, extra)| line(&self.apps[route], route, extra))
            .collect();
        let tmp = self.dir.path().join("routemap.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.map).unwrap();
    }

    pub async fn status(&self) -> serde_json::Value {
        get(self.proxy.admin, "/status").send().await.json()
    }

    pub async fn wait_swaps(&self, at_least: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let swaps = get(self.proxy.admin, "/status")
                .try_send()
                .await
                .ok()
                .map(|r| r.json()["balancer"]["table_swaps"].as_u64().unwrap_or(0));
            if swaps.unwrap_or(0) >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no table swap {at_least}; log:\n{}",
                self.proxy.process.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Which member answers a request with this Cookie header (None: no cookie).
    pub async fn answer(&self, cookie: Option<&str>) -> (u16, Option<String>) {
        let mut call = get(self.proxy.addr, "/");
        if let Some(cookie) = cookie {
            call = call.header("cookie", cookie);
        }
        let reply = call.send().await;
        (reply.status.as_u16(), reply.header("x-app"))
    }

    pub async fn distribution(&self, requests: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..requests {
            let (status, app) = self.answer(None).await;
            assert_eq!(status, 200);
            *counts.entry(app.unwrap()).or_insert(0) += 1;
        }
        counts
    }
}

/// Expected counts per member name.
pub fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}
