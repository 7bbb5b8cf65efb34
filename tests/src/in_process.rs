//! The proxy and the agent run in this test process through their libraries' `run`, on
//! listeners the harness binds itself: the addresses come from the bound sockets, nothing is
//! read from log lines, and no binary has to be built first. Tests of what only a process
//! shows (signals, exit codes, its log, its memory and descriptors) start the binary
//! instead ([`crate::server::ServerBuilder::start_process`]).

use crate::process::Process;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stickyroute_relay::process::lifecycle::{self, Control};
use stickyroute_relay::serve::listeners::Listeners;
use tokio::sync::mpsc::UnboundedSender;

/// A server under test, however it was started.
pub enum Runner {
    Process(Process),
    InProcess(InProcess),
}

/// A server running on a thread of this process, shut down when dropped.
pub struct InProcess {
    controls: UnboundedSender<Control>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Twice: the second cuts the drain and the grace period short.
        let _ = self.controls.send(Control::Shutdown("the end of the test"));
        let _ = self.controls.send(Control::Shutdown("the end of the test"));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Runner {
    /// The child process, for what only a process has.
    pub fn as_process(&self) -> &Process {
        match self {
            Runner::Process(process) => process,
            Runner::InProcess(_) => {
                panic!("this test needs the server as a process: start it with start_process()")
            }
        }
    }

    /// Waits until the admin listener at `admin` answers `/readyz` with 200.
    pub async fn wait_ready(&self, admin: SocketAddr) {
        if let Runner::Process(process) = self {
            return process.wait_ready(admin).await;
        }
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            let ready = crate::client::get(admin, "/readyz").try_send().await;
            if ready.is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A reload, as SIGHUP asks a process for one.
    pub fn reload(&self) {
        match self {
            Runner::Process(process) => process.signal("HUP"),
            Runner::InProcess(server) => {
                let _ = server.controls.send(Control::Reload);
            }
        }
    }

    /// A graceful shutdown, as SIGTERM asks a process for one.
    pub fn shutdown(&self) {
        match self {
            Runner::Process(process) => process.signal("TERM"),
            Runner::InProcess(server) => {
                let _ = server.controls.send(Control::Shutdown("SIGTERM"));
            }
        }
    }

    /// Whether the server has stopped (its `run` returned, or its process exited).
    pub fn has_stopped(&self) -> bool {
        match self {
            Runner::Process(process) => process.try_status().is_ok_and(|s| s.is_some()),
            Runner::InProcess(server) => server
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished),
        }
    }

    pub fn pid(&self) -> u32 {
        self.as_process().pid()
    }

    pub fn log(&self) -> Vec<String> {
        self.as_process().log()
    }

    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.as_process().log_lines_with(needle)
    }

    pub fn rss_kib(&self) -> u64 {
        self.as_process().rss_kib()
    }

    pub fn signal(&self, signal: &str) {
        self.as_process().signal(signal)
    }

    pub fn wait_exit(&self, patience: Duration) -> Option<i32> {
        self.as_process().wait_exit(patience)
    }

    pub async fn eventually_logs(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        self.as_process().eventually_logs(what, check).await
    }
}

/// The flags that stand for the environment variables a test gives, where the test does
/// not give the flag itself (so flags still win, as over real variables).
fn environment_as_flags(args: &[String], env: &[(String, String)]) -> Vec<String> {
    let mut flags = Vec::new();
    for (name, value) in env {
        let flag = match name.as_str() {
            "POD_NAME" => "--server-name".to_owned(),
            "POD_IP" => "--server-addr".to_owned(),
            "STICKYROUTE_ADMIN_TOKEN" => continue,
            other => match other.strip_prefix("STICKYROUTE_") {
                Some(key) => format!("--{}", key.to_ascii_lowercase().replace('_', "-")),
                None => panic!("an in-process server cannot take {other}; use start_process()"),
            },
        };
        let given = args
            .iter()
            .any(|a| a == &flag || a.starts_with(&format!("{flag}=")));
        if !given {
            flags.push(format!("{flag}={value}"));
        }
    }
    flags
}

/// Starts `binary`'s library with the command line `args` and the environment `env` given
/// as flags; returns the runner and the traffic, admin and first TLS addresses as bound.
pub fn start(
    binary: &str,
    args: &[String],
    env: &[(String, String)],
) -> (Runner, SocketAddr, SocketAddr, Option<SocketAddr>) {
    let mut argv: Vec<std::ffi::OsString> = vec![binary.into()];
    argv.extend(args.iter().map(Into::into));
    argv.extend(environment_as_flags(args, env).into_iter().map(Into::into));
    // Dropping the server then ends its connections at once, as a killed process would.
    if !args.iter().any(|a| a.starts_with("--grace-period")) {
        argv.push("--grace-period=0s".into());
    }
    let token = env
        .iter()
        .find(|(name, _)| name == "STICKYROUTE_ADMIN_TOKEN")
        .map(|(_, value)| value.clone());
    let (tx, controls) = lifecycle::controls();
    let (listeners, run): (Listeners, Box<dyn FnOnce(Listeners) -> Serve + Send>) = match binary {
        "stickyroute-proxy" => {
            let settings = stickyroute_proxy::config::read(&argv)
                .and_then(|layered| stickyroute_proxy::config::Settings::new(layered, token))
                .unwrap_or_else(|e| panic!("{binary} {args:?}: {e}"));
            let mut listeners =
                Listeners::bind(&settings.listen, settings.workers, settings.admin_listen)
                    .unwrap_or_else(|e| panic!("{binary}: {e}"));
            if let Some(tls) = &settings.tls {
                listeners
                    .bind_tls(&tls.listen)
                    .unwrap_or_else(|e| panic!("{binary}: {e}"));
            }
            let run: Box<dyn FnOnce(Listeners) -> Serve + Send> = Box::new(move |listeners| {
                Box::pin(stickyroute_proxy::server::run(
                    settings, listeners, controls,
                ))
            });
            (listeners, run)
        }
        "stickyroute-agent" => {
            let host = stickyroute_agent::config::host_name();
            let settings = stickyroute_agent::config::Settings::read(&argv, host)
                .unwrap_or_else(|e| panic!("{binary} {args:?}: {e}"));
            let listeners =
                Listeners::bind(&[settings.listen], settings.workers, settings.admin_listen)
                    .unwrap_or_else(|e| panic!("{binary}: {e}"));
            let run: Box<dyn FnOnce(Listeners) -> Serve + Send> = Box::new(move |listeners| {
                Box::pin(stickyroute_agent::server::run(
                    settings, listeners, controls,
                ))
            });
            (listeners, run)
        }
        other => panic!("no library for {other}"),
    };
    let addr = listeners.traffic_addrs()[0];
    let tls = listeners.tls_addrs().first().copied();
    let admin = listeners.admin_addr().expect("admin address");
    let name = binary.to_owned();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(error) = runtime.block_on(run(listeners)) {
                eprintln!("{name}: {error:#}");
            }
        })
        .expect("a server thread");
    let runner = Runner::InProcess(InProcess {
        controls: tx,
        thread: Mutex::new(Some(thread)),
    });
    (runner, addr, admin, tls)
}

type Serve = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<bool>>>>;
