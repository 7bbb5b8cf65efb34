//! The HTTP plumbing both stickyroute binaries are built on, so the proxy and the agent
//! forward, serve and shut down the same way.
//!
//! - [`serve`]: the accept loop: HTTP/1.1 and HTTP/2 on one port, the connection limit,
//!   deadlines for silent and slow clients, graceful connection shutdown.
//! - [`request`]: what a request must be before any of it is forwarded.
//! - [`workers`]: one single-threaded event loop per core with `SO_REUSEPORT` listeners.
//! - [`forward`]: one request to an upstream over a keep-alive pool, with protocol upgrades
//!   (WebSocket) tunnelled.
//! - [`upstream`]: the HTTP/1.1 client for upstreams: heads, chunked bodies, connections,
//!   and the per-worker keep-alive pool they return to when a response has been read.
//! - [`headers`]: hop-by-hop headers and `X-Forwarded-*`.
//! - [`body`]: the response body type and small response builders.
//! - [`lifecycle`]: SIGTERM/SIGINT handling: unready, drain delay, stop accepting, grace.
//! - [`admin`]: what both admin listeners serve the same way (health, map metrics).
//! - [`metrics`]: the Prometheus text format.
//! - [`urlencoded`]: form bodies and query strings.
//! - [`clock`]: a cheap monotonic millisecond clock for deadlines kept in atomics.
//! - [`stall`]: a deadline on one wait at a time (uploads, response bodies, slow readers).
//! - [`cli`]: command-line options both binaries share, and logging setup.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent_status;
pub mod body;
pub mod clock;
pub mod forward;
pub mod headers;
pub mod lifecycle;
pub mod logging;
pub mod map;
pub mod metrics;
pub mod request;
pub mod serve;
pub mod settings;
pub mod stall;
pub mod upstream;
pub mod urlencoded;
pub mod workers;
