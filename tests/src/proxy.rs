//! Starting the real `stickyroute-proxy` binary.

use crate::server::{Server, ServerBuilder};
use std::ops::Deref;
use std::path::Path;

/// A running proxy: its process and the addresses it bound (through `Deref`).
pub struct Proxy(Server);

pub type ProxyBuilder = ServerBuilder<Proxy>;

impl From<Server> for Proxy {
    fn from(server: Server) -> Self {
        Self(server)
    }
}

impl Deref for Proxy {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Proxy {
    /// A proxy on 127.0.0.1 (ports chosen by the OS) following `routemap`.
    pub fn builder(routemap: &Path) -> ProxyBuilder {
        Self::builder_with_map(&["--routemap", &routemap.display().to_string()])
    }

    /// A proxy whose map comes from the given flags (for example `--routemap-configmap`).
    pub fn builder_with_map(map_flags: &[&str]) -> ProxyBuilder {
        ServerBuilder::new(
            "stickyroute-proxy",
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        )
        .args(map_flags)
    }
}
