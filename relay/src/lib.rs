//! The HTTP plumbing both stickyroute binaries are built on, so the proxy and the agent
//! forward, serve, are configured and shut down the same way. By what each part is:
//!
//! - The serving side: [`serve`] (the accept loop: HTTP/1.1 and HTTP/2 on one port, the
//!   connection limit, deadlines for silent and slow clients, graceful connection
//!   shutdown, the listeners bound before a server starts, the PROXY protocol), [`tls`] (TLS termination,
//!   certificates picked by SNI and followed live) and [`request`] (what a request
//!   must be before any of it is forwarded).
//! - The upstream client: [`upstream`] (one request to an upstream over a per-worker
//!   keep-alive pool, protocol upgrades tunnelled; heads, chunked bodies, connections) and
//!   [`headers`] (hop-by-hop headers and `X-Forwarded-*`).
//! - Bodies and deadlines: [`body`] (the response body type and small response builders),
//!   [`stall`] (a deadline on one wait at a time) and [`clock`] (a cheap monotonic
//!   millisecond clock for deadlines kept in atomics).
//! - Process lifecycle: [`process`] (worker threads, logging, signals and reload,
//!   shutdown: unready, drain delay, stop accepting, grace).
//! - Settings: [`settings`] (every setting declared once; defaults < config file <
//!   environment < flags) and [`map`] (following the route map the settings name).
//! - What the admin listeners share: [`admin`] (health, map metrics), [`metrics`] (the
//!   Prometheus text format, latency histograms) and [`agent_status`] (the agent's
//!   `/status` and its in-band app state, the contract the proxy reads).
//! - [`access_log`]: one line per request, written off the request path.
//! - [`urlencoded`]: form bodies and query strings; [`html`]: escaping for served pages.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod agent_status;
pub mod body;
pub mod clock;
pub mod headers;
pub mod html;
pub mod map;
pub mod metrics;
pub mod net;
pub mod process;
pub mod request;
pub mod serve;
pub mod settings;
pub mod stall;
pub mod tls;
pub mod upstream;
pub mod urlencoded;
