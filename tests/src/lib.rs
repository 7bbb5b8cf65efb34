//! Harness for stickyroute's end-to-end tests: real files, real servers, real binaries.
//!
//! - [`eventually`]: poll an assertion with a patience instead of sleeping a fixed time.
//! - [`kubelet::ConfigMapDir`]: a directory updated exactly the way the kubelet updates a
//!   mounted ConfigMap.
//! - [`kube_api::ApiServer`]: an in-test Kubernetes API server speaking the ConfigMap
//!   list/watch protocol, with a kubeconfig pointing at it.
//! - [`app::TestApp`]: a stateful web app with per-session counters, on its own 127.0.0.x.
//! - [`process::Process`]: a real binary as a child process, with its log collected.
//! - [`agent::Agent`], [`proxy::Proxy`]: the real binaries, started through one
//!   [`server::ServerBuilder`].
//! - [`client`]: one-request-per-connection HTTP/1.1 and HTTP/2 client.
//! - [`cluster::Cluster`]: backends behind the real proxy, with their map file.
//! - [`raw`]: a raw-socket client and a backend that records every byte it received.
//! - [`webdriver::Browser`]: headless Chromium driven through chromedriver.
#![forbid(unsafe_code)]
// A harness fails the test that uses it by panicking with a message: that is its job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod app;
pub mod client;
pub mod cluster;
pub mod in_process;
pub mod kube_api;
pub mod kubelet;
pub mod manager;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod server;
pub mod webdriver;

use std::time::{Duration, Instant};

/// How long tests wait for something asynchronous to happen. Generous, because CI machines
/// are shared and noisy; a passing test returns as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after
/// `patience`.
pub async fn eventually<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for checks that need to await (a request, say).
pub async fn eventually_async<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
