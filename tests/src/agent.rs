//! Starting the real `stickyroute-agent` binary.

use crate::process::Process;
use std::net::SocketAddr;
use std::path::Path;

/// A running agent and the addresses it bound.
pub struct Agent {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// Options for an agent; `start` launches it.
pub struct AgentBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// An agent listening on `listen_ip` (port chosen by the OS), in front of `upstream`,
    /// following `routemap`. Draining is immediate unless a test asks otherwise.
    pub fn builder(listen_ip: &str, upstream: SocketAddr, routemap: &Path) -> AgentBuilder {
        Self::builder_at(
            &format!("{listen_ip}:0"),
            &format!("{listen_ip}:0"),
            upstream,
            routemap,
        )
    }

    /// An agent on exactly these traffic and admin addresses.
    pub fn builder_at(
        listen: &str,
        admin: &str,
        upstream: SocketAddr,
        routemap: &Path,
    ) -> AgentBuilder {
        Self::builder_with_map(
            listen,
            admin,
            upstream,
            &["--routemap", &routemap.display().to_string()],
        )
    }

    /// An agent whose map comes from the given flags (for example `--routemap-configmap`).
    pub fn builder_with_map(
        listen: &str,
        admin: &str,
        upstream: SocketAddr,
        map_flags: &[&str],
    ) -> AgentBuilder {
        let mut args: Vec<String> = [
            "--listen",
            listen,
            "--admin-listen",
            admin,
            "--upstream",
            &upstream.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(map_flags.iter().map(|a| a.to_string()));
        AgentBuilder {
            args,
            // Through the environment, so a test's own --drain-delay overrides it.
            env: vec![("STICKYROUTE_DRAIN_DELAY".into(), "0s".into())],
        }
    }
}

impl AgentBuilder {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the agent and waits until it has bound its listeners.
    pub fn start(self) -> Agent {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (process, addr, admin) = Process::start_server("stickyroute-agent", &self.args, &env);
        Agent {
            process,
            addr,
            admin,
        }
    }
}
