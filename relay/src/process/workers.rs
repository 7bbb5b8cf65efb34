//! One event loop per core, like nginx's worker processes: each worker thread runs its own
//! single-threaded runtime with its own `SO_REUSEPORT` listener (the kernel spreads new
//! connections over them) and its own upstream connection pool. A request then never
//! crosses threads, which on a busy machine costs more than the proxying itself.
//! Shared state (the member table, the map, counters) stays shared through `Arc`s.

use crate::serve::admission::Admission;
use crate::serve::{Handler, ServerLimits, serve, serve_tls};
use crate::tls::TlsServer;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// One worker per available core unless told otherwise.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `addr` with `SO_REUSEPORT`, so that every worker can bind it too. Port 0 is
/// resolved by the first bind; bind the others to the returned address.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds every address once per worker: `count` lists of listeners, one per address each.
///
/// Another process that listens on the address with `SO_REUSEPORT` too (a second proxy
/// started by mistake) would otherwise silently share the traffic, so the address is first
/// probed with an exclusive bind, which fails with "address in use" as usual.
pub fn bind_for_workers(
    addrs: &[SocketAddr],
    count: usize,
) -> std::io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut workers: Vec<Vec<std::net::TcpListener>> =
        (0..count.max(1)).map(|_| Vec::new()).collect();
    for addr in addrs {
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?);
        }
        let first = bind_shared(*addr)?;
        let bound = first.local_addr()?;
        workers[0].push(first);
        for worker in workers.iter_mut().skip(1) {
            worker.push(bind_shared(bound)?);
        }
    }
    Ok(workers)
}

/// Starts one thread per listener list, each serving its listeners with the handler that
/// `make(worker)` builds on that worker's runtime. `admission` (the connection limit) is
/// shared by all of them. Each receiver resolves when its worker has stopped (after `stop`
/// and the grace period), with whether it drained in time.
pub fn spawn<H, F>(
    listeners: Vec<Vec<std::net::TcpListener>>,
    make: F,
    limits: ServerLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<Vec<oneshot::Receiver<bool>>>
where
    H: Handler,
    F: Fn(usize) -> Arc<H> + Send + Sync + 'static,
{
    spawn_with_tls(listeners, None, make, limits, admission, stop, grace)
}

/// [`spawn`], with each worker also serving its list of TLS listeners (from `tls`: the
/// lists, one per worker, and the TLS configuration they share) with the same handler.
pub fn spawn_with_tls<H, F>(
    listeners: Vec<Vec<std::net::TcpListener>>,
    tls: Option<(Vec<Vec<std::net::TcpListener>>, Arc<TlsServer>)>,
    make: F,
    limits: ServerLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<Vec<oneshot::Receiver<bool>>>
where
    H: Handler,
    F: Fn(usize) -> Arc<H> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut done = Vec::new();
    let (mut tls_lists, tls) = match tls {
        Some((lists, tls)) => (lists.into_iter(), Some(tls)),
        None => (Vec::new().into_iter(), None),
    };
    for (index, listeners) in listeners.into_iter().enumerate() {
        let tls_listeners = tls_lists.next().unwrap_or_default();
        let tls = tls.clone();
        let (tx, rx) = oneshot::channel();
        let (make, stop, admission) = (make.clone(), stop.clone(), admission.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The worker logs where its caller does: the process's logger, or the one of the
        // component that started it when several run in one process (the demo).
        let logger = tracing::dispatcher::get_default(Clone::clone);
        std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                let _logging = tracing::dispatcher::set_default(&logger);
                let drained = runtime.block_on(async move {
                    let handler = make(index);
                    let mut servers = Vec::new();
                    for listener in listeners {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => servers.push(tokio::spawn(serve(
                                listener,
                                handler.clone(),
                                limits,
                                admission.clone(),
                                stop.clone(),
                                grace,
                            ))),
                            Err(error) => {
                                tracing::error!(%error, worker = index, "cannot use a listener")
                            }
                        }
                    }
                    for listener in tls_listeners {
                        let Some(tls) = tls.clone() else { break };
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => servers.push(tokio::spawn(serve_tls(
                                listener,
                                handler.clone(),
                                limits,
                                admission.clone(),
                                stop.clone(),
                                grace,
                                tls,
                            ))),
                            Err(error) => {
                                tracing::error!(%error, worker = index, "cannot use a TLS listener")
                            }
                        }
                    }
                    let mut all = true;
                    for server in servers {
                        all &= server.await.unwrap_or(false);
                    }
                    all
                });
                let _ = tx.send(drained);
            })?;
        done.push(rx);
    }
    Ok(done)
}
