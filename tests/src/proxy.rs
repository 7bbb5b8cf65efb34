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

/// A map file in `dir` naming each `(route, address)` as a member on its own port.
pub fn write_map(dir: &Path, members: &[(&str, std::net::SocketAddr)]) -> std::path::PathBuf {
    let text: String = members
        .iter()
        .map(|(route, addr)| format!("{} {route} port={}\n", addr.ip(), addr.port()))
        .collect();
    let path = dir.join("routemap");
    std::fs::write(&path, text).expect("write the map");
    path
}

impl Proxy {
    /// The member with `route` as `/status` shows it.
    pub async fn member(&self, route: &str) -> serde_json::Value {
        let status = crate::client::get(self.admin, "/status")
            .send()
            .await
            .json();
        status["members"]
            .as_array()
            .and_then(|members| members.iter().find(|m| m["route"] == route))
            .cloned()
            .unwrap_or_else(|| panic!("no member {route} in {status}"))
    }

    /// Waits until the member table holds every route of the map.
    pub async fn wait_members(&self, count: usize) {
        crate::eventually_async("the members to be loaded", crate::PATIENCE, || async {
            let status = crate::client::get(self.admin, "/status")
                .try_send()
                .await
                .ok()?;
            (status.json()["members"].as_array()?.len() == count).then_some(())
        })
        .await;
    }
}
