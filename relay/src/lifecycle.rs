//! Process shutdown as Kubernetes and service managers expect it.
//!
//! Kubernetes sends SIGTERM and removes the pod from its endpoints at the same time, so
//! traffic keeps arriving for a few seconds. The sequence is therefore: report unready at
//! once, keep serving for a drain delay, then stop accepting and let in-flight requests and
//! open tunnels finish within a grace period shorter than the pod's
//! `terminationGracePeriodSeconds`. A second signal cuts the waiting short.

use routemap::source::StartError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// sysexits' EX_USAGE: the configuration is wrong, so restarting will not help.
pub const EXIT_CONFIG: u8 = 64;

/// Runs a binary's main future on a fresh runtime (the admin listener, the map source and
/// the shutdown sequence live there; traffic runs on the workers). Exit status 0 when it
/// returns `Ok(true)` (everything drained in time), 1 otherwise; an error is logged. A map
/// source that cannot even start ([`StartError`]: a ConfigMap source without a usable
/// Kubernetes client) exits with [`EXIT_CONFIG`] like any other configuration mistake, so a
/// supervisor that stops retrying on 64 does not restart it in a loop.
pub fn run_main<F>(main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<bool>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) if error.chain().any(|e| e.is::<StartError>()) => {
            tracing::error!("invalid configuration: {error:#}");
            std::process::ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Timing of a graceful shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownTiming {
    /// How long to keep serving, unready, after the signal.
    pub drain_delay: Duration,
    /// How long in-flight requests and tunnels get once accepting stopped.
    pub grace: Duration,
}

/// Shared shutdown state of one process.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    traffic: CancellationToken,
    admin: CancellationToken,
    tunnels: TaskTracker,
}

impl Lifecycle {
    /// True from the shutdown signal on: `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Cancelled when the traffic listeners must stop accepting.
    pub fn traffic_stop(&self) -> CancellationToken {
        self.traffic.clone()
    }

    /// Cancelled last, so health and metrics stay visible during the drain.
    pub fn admin_stop(&self) -> CancellationToken {
        self.admin.clone()
    }

    /// Where upgraded connections (WebSocket tunnels) are spawned so shutdown can wait.
    pub fn tunnels(&self) -> TaskTracker {
        self.tunnels.clone()
    }

    /// Waits for SIGTERM or SIGINT (or `external` to be cancelled), then drains: unready,
    /// `drain_delay`, stop accepting, wait for `servers` and tunnels up to `grace`, stop the
    /// admin listener. Returns whether everything finished within the grace period.
    pub async fn run_until_shutdown(
        &self,
        timing: ShutdownTiming,
        servers: Vec<oneshot::Receiver<bool>>,
        admin: Option<JoinHandle<bool>>,
    ) -> bool {
        let signal = wait_for_signal().await;
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            signal,
            drain_delay = ?timing.drain_delay,
            grace = ?timing.grace,
            "shutting down: unready now, serving through the drain delay"
        );
        let cut_short = tokio::select! {
            () = tokio::time::sleep(timing.drain_delay) => false,
            _ = wait_for_signal() => true,
        };
        tracing::info!("no longer accepting connections; finishing in-flight requests");
        self.traffic.cancel();
        self.tunnels.close();
        let finish = async {
            let mut all = true;
            for server in servers {
                all &= server.await.unwrap_or(false);
            }
            self.tunnels.wait().await;
            all
        };
        let finished = if cut_short {
            false
        } else {
            tokio::select! {
                done = tokio::time::timeout(timing.grace, finish) => done.unwrap_or(false),
                _ = wait_for_signal() => false,
            }
        };
        if finished {
            tracing::info!("all in-flight work finished");
        } else {
            tracing::warn!(grace = ?timing.grace, "shutdown grace period over; closing what is still open");
        }
        self.admin.cancel();
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
        }
        finished
    }
}

/// Resolves at SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; only Ctrl-C will stop the process");
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
