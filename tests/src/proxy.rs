//! Starting the real `stickyroute-proxy` binary.

use crate::server::{ServerBuilder, server_handle};
use std::path::Path;

server_handle!(
    /// A running proxy: its process and the addresses it bound (through `Deref`).
    Proxy,
    ProxyBuilder
);

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
