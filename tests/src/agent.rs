//! Starting the real `stickyroute-agent` binary.

use crate::server::{Server, ServerBuilder};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;

/// A running agent: its process and the addresses it bound (through `Deref`).
pub struct Agent(Server);

pub type AgentBuilder = ServerBuilder<Agent>;

impl From<Server> for Agent {
    fn from(server: Server) -> Self {
        Self(server)
    }
}

impl Deref for Agent {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Agent {
    /// An agent listening on `listen_ip` (port chosen by the OS), in front of `upstream`,
    /// following `routemap`.
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
        ServerBuilder::new(
            "stickyroute-agent",
            &[
                "--listen",
                listen,
                "--admin-listen",
                admin,
                "--upstream",
                &upstream.to_string(),
            ],
        )
        .args(map_flags)
    }
}
