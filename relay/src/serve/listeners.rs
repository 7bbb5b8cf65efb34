//! The sockets a server runs on, bound before it starts: by `main` from the settings, or
//! by a test on addresses of its choosing, which then reads the ports the system gave.

use std::net::SocketAddr;

/// The traffic listeners (one list per worker, see [`crate::process::workers::bind_for_workers`]),
/// the TLS traffic listeners (likewise; none unless [`Listeners::bind_tls`] was called)
/// and the admin listener.
#[derive(Debug)]
pub struct Listeners {
    pub traffic: Vec<Vec<std::net::TcpListener>>,
    pub tls: Vec<Vec<std::net::TcpListener>>,
    pub admin: std::net::TcpListener,
}

impl Listeners {
    /// Binds every traffic address once per worker, and the admin address.
    pub fn bind(
        traffic: &[SocketAddr],
        workers: usize,
        admin: SocketAddr,
    ) -> std::io::Result<Self> {
        let traffic = crate::process::workers::bind_for_workers(traffic, workers)?;
        let admin = std::net::TcpListener::bind(admin)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {admin}: {e}")))?;
        admin.set_nonblocking(true)?;
        let tls = traffic.iter().map(|_| Vec::new()).collect();
        Ok(Self {
            traffic,
            tls,
            admin,
        })
    }

    /// Binds every TLS traffic address once per worker (as many workers as [`Listeners::bind`]
    /// was given).
    pub fn bind_tls(&mut self, addrs: &[SocketAddr]) -> std::io::Result<()> {
        self.tls = crate::process::workers::bind_for_workers(addrs, self.traffic.len())?;
        Ok(())
    }

    /// The TLS traffic addresses as bound.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .first()
            .map(|first| first.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_default()
    }

    /// Takes the TLS lists out (one per worker), for [`crate::process::workers::spawn_with_tls`].
    pub fn take_tls(&mut self) -> Vec<Vec<std::net::TcpListener>> {
        std::mem::take(&mut self.tls)
    }

    /// The traffic addresses as bound (ports chosen by the system filled in).
    pub fn traffic_addrs(&self) -> Vec<SocketAddr> {
        self.traffic
            .first()
            .map(|first| first.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_default()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Splits into the traffic lists and the admin listener on the current runtime.
    pub fn into_parts(
        self,
    ) -> std::io::Result<(Vec<Vec<std::net::TcpListener>>, tokio::net::TcpListener)> {
        Ok((self.traffic, tokio::net::TcpListener::from_std(self.admin)?))
    }
}
