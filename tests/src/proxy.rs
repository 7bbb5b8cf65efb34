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
}

impl Proxy {
    /// A proxy on 127.0.0.1 (ports chosen by the OS) following `routemap`.
    pub fn builder(routemap: &Path) -> ProxyBuilder {
        ProxyBuilder {
            args: vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--routemap".into(),
                routemap.display().to_string(),
            ],
        }
    }
}

impl ProxyBuilder {
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts the proxy and waits until it has bound its listeners.
    pub fn start(self) -> Proxy {
        let (process, addr, admin) = Process::start_server(
            "stickyroute-proxy",
            &self.args,
            &[("STICKYROUTE_DRAIN_DELAY", "0s")],
        );
        Proxy {
            process,
            addr,
            admin,
        }
    }
}
