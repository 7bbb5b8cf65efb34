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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// sysexits' EX_USAGE: the configuration is wrong, so restarting will not help.
pub const EXIT_CONFIG: u8 = 64;

/// Runs a binary's main future on a fresh runtime (the admin listener, the map source and
/// the shutdown sequence live there; traffic runs on the workers), with the process's
/// signals as its [`Controls`]. Exit status 0 when it
/// returns `Ok(true)` (everything drained in time), 1 otherwise; an error is logged. A map
/// source that cannot even start ([`StartError`]: a ConfigMap source without a usable
/// Kubernetes client) exits with [`EXIT_CONFIG`] like any other configuration mistake, so a
/// supervisor that stops retrying on 64 does not restart it in a loop.
pub fn run_main<F>(main: impl FnOnce(Controls) -> F) -> std::process::ExitCode
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
    let outcome = runtime.block_on(async {
        let (sender, controls) = self::controls();
        forward_signals(sender)?;
        main(controls).await
    });
    match outcome {
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

/// What a running server is told from outside: by signals in a process (see
/// [`forward_signals`]), or directly by a test that runs the server in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Shut down gracefully; a second one cuts the waiting short. The name is logged.
    Shutdown(&'static str),
    /// Re-read the route map and the configuration, and apply what can change live.
    Reload,
}

/// The receiving end a server's `run` takes.
pub type Controls = mpsc::UnboundedReceiver<Control>;

/// A new channel of controls.
pub fn controls() -> (mpsc::UnboundedSender<Control>, Controls) {
    mpsc::unbounded_channel()
}

/// Turns SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C) into [`Control::Shutdown`] and
/// SIGHUP (`systemctl reload`) into [`Control::Reload`], for as long as `to` is open;
/// SIGUSR1 (logrotate's `postrotate`) reopens the access log. Must
/// be called on a runtime; handlers are installed before this returns, so a signal sent
/// right after start-up is not lost (SIGHUP would otherwise kill the process).
pub fn forward_signals(to: mpsc::UnboundedSender<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = term.recv() => Control::Shutdown("SIGTERM"),
                _ = int.recv() => Control::Shutdown("SIGINT"),
                _ = hup.recv() => Control::Reload,
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    crate::access_log::reopen_all();
                    continue;
                }
            };
            if to.send(control).is_err() {
                return;
            }
        }
    });
    Ok(())
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

    /// True once the traffic listeners stopped accepting (after the drain).
    pub fn is_stopping(&self) -> bool {
        self.traffic.is_cancelled()
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

    /// Serves until a [`Control::Shutdown`] (calling `reload` for every [`Control::Reload`]
    /// before it), then drains: unready, `drain_delay`, stop accepting, wait for `servers`
    /// and tunnels up to `grace`, stop the admin listener. A closed control channel counts
    /// as a shutdown. Returns whether everything finished within the grace period.
    pub async fn run_until_shutdown(
        &self,
        timing: ShutdownTiming,
        servers: Vec<oneshot::Receiver<bool>>,
        admin: Option<JoinHandle<bool>>,
        controls: Controls,
        reload: impl FnMut(),
    ) -> bool {
        let delay = timing.drain_delay;
        self.run_until_drained(timing, servers, admin, controls, reload, |_| {
            tokio::time::sleep(delay)
        })
        .await
    }

    /// As [`Lifecycle::run_until_shutdown`], with the serving phase after the signal ended
    /// by `drained(signal)` rather than by the drain delay: the agent keeps serving its
    /// sessions until they go quiet.
    pub async fn run_until_drained<F: Future<Output = ()>>(
        &self,
        timing: ShutdownTiming,
        servers: Vec<oneshot::Receiver<bool>>,
        admin: Option<JoinHandle<bool>>,
        mut controls: Controls,
        mut reload: impl FnMut(),
        drained: impl FnOnce(&'static str) -> F,
    ) -> bool {
        let signal = loop {
            match controls.recv().await {
                Some(Control::Reload) => reload(),
                Some(Control::Shutdown(signal)) => break signal,
                None => break "the end of its controls",
            }
        };
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            signal,
            drain_delay = ?timing.drain_delay,
            grace = ?timing.grace,
            "shutting down: draining"
        );
        let cut_short = tokio::select! {
            () = drained(signal) => false,
            () = next_shutdown(&mut controls) => true,
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
                () = next_shutdown(&mut controls) => false,
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

/// Resolves at the next shutdown request (reloads during a shutdown are ignored); never
/// when the channel is closed, since nobody can ask any more.
async fn next_shutdown(controls: &mut Controls) {
    loop {
        match controls.recv().await {
            Some(Control::Shutdown(_)) => return,
            Some(Control::Reload) => tracing::info!("reload ignored: shutting down"),
            None => std::future::pending::<()>().await,
        }
    }
}
