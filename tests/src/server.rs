//! What the agent and the proxy have in common as processes under test: a command line
//! and environment, started as a child, with the traffic and admin addresses it logged.

use crate::process::Process;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

/// A running server binary and the addresses it bound.
pub struct Server {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
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
    /// test's own `--drain-delay` overrides it.
    pub fn new(binary: &'static str, args: &[&str]) -> Self {
        Self {
            binary,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("STICKYROUTE_DRAIN_DELAY".into(), "0s".into())],
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

    /// Starts the binary and waits until it has logged the addresses it bound.
    pub fn start(self) -> T {
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
            process,
            addr,
            admin,
        })
    }
}
