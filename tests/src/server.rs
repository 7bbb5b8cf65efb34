//! What the agent and the proxy have in common as servers under test: a command line and
//! environment, started in-process through the library's `run` (or as a child process,
//! for what only a process shows), with the traffic and admin addresses it bound.

use crate::in_process::Runner;
use crate::process::Process;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

/// A running server and the addresses it bound.
pub struct Server {
    pub process: Runner,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The first TLS traffic address, for a proxy with `--tls-listen` started in-process.
    pub tls: Option<SocketAddr>,
}

/// Declares the handle of one server binary: a newtype over [`Server`] (its fields through
/// `Deref`) with its own builder type, so each binary gets its own builder methods.
macro_rules! server_handle {
    ($(#[$doc:meta])* $name:ident, $builder:ident) => {
        $(#[$doc])*
        pub struct $name($crate::server::Server);

        pub type $builder = $crate::server::ServerBuilder<$name>;

        impl From<$crate::server::Server> for $name {
            fn from(server: $crate::server::Server) -> Self {
                Self(server)
            }
        }

        impl std::ops::Deref for $name {
            type Target = $crate::server::Server;

            fn deref(&self) -> &$crate::server::Server {
                &self.0
            }
        }
    };
}
pub(crate) use server_handle;

/// The command line and environment of a server binary; `start` launches it and gives
/// a `T` (an [`crate::agent::Agent`] or a [`crate::proxy::Proxy`]).
pub struct ServerBuilder<T> {
    binary: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    started: PhantomData<fn() -> T>,
}

impl<T: From<Server>> ServerBuilder<T> {
    /// Draining is immediate unless a test asks otherwise: through the environment, so a
    /// test's own `--drain-delay` (and the agent's `--drain-idle`) overrides it.
    pub fn new(binary: &'static str, args: &[&str]) -> Self {
        let mut env = vec![("STICKYROUTE_DRAIN_DELAY".into(), "0s".into())];
        if binary == "stickyroute-agent" {
            env.push(("STICKYROUTE_DRAIN_IDLE".into(), "0s".into()));
        }
        Self {
            binary,
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            started: PhantomData,
        }
    }

    pub fn arg(self, arg: &str) -> Self {
        self.args(&[arg])
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the server in this process, through its library's `run`.
    pub fn start(self) -> T {
        let (process, addr, admin, tls) =
            crate::in_process::start(self.binary, &self.args, &self.env);
        T::from(Server {
            process,
            addr,
            admin,
            tls,
        })
    }

    /// Starts the binary as a child process and waits until it has logged the addresses
    /// it bound: for tests of signals, exit codes, the log, memory and descriptors.
    pub fn start_process(self) -> T {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let process = Process::start(self.binary, &self.args, &env);
        let started = format!("{} started", self.binary);
        let patience = Duration::from_secs(20);
        let addr = process.logged_addr(&started, "listen", patience);
        let admin = process.logged_addr(&started, "admin", patience);
        T::from(Server {
            process: Runner::Process(process),
            addr,
            admin,
            tls: None,
        })
    }
}
