//! Starting the real `stickyroute-agent` binary.

use crate::server::{ServerBuilder, server_handle};
use std::net::SocketAddr;
use std::path::Path;

server_handle!(
    /// A running agent: its process and the addresses it bound (through `Deref`).
    Agent,
    AgentBuilder
);

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
