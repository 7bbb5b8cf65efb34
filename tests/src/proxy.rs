//! Starting the real `stickyroute-proxy` binary.

use crate::process::Process;
use std::net::SocketAddr;
use std::path::Path;

/// A running proxy and the addresses it bound.
pub struct Proxy {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

pub struct ProxyBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (ports chosen by the OS) following `routemap`.
    pub fn builder(routemap: &Path) -> ProxyBuilder {
        Self::builder_with_map(&["--routemap", &routemap.display().to_string()])
    }

    /// A proxy whose map comes from the given flags (for example `--routemap-configmap`).
    pub fn builder_with_map(map_flags: &[&str]) -> ProxyBuilder {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(map_flags.iter().map(|a| a.to_string()));
        ProxyBuilder {
            args,
            // Through the environment, so a test's own --drain-delay overrides it.
            env: vec![("STICKYROUTE_DRAIN_DELAY".into(), "0s".into())],
        }
    }
}

impl ProxyBuilder {
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the proxy and waits until it has bound its listeners.
    pub fn start(self) -> Proxy {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (process, addr, admin) = Process::start_server("stickyroute-proxy", &self.args, &env);
        Proxy {
            process,
            addr,
            admin,
        }
    }
}
