//! `stickyroute-agent`: a sidecar reverse proxy in front of one app instance. It forwards
//! everything unchanged, except that it sets the `balanceid=route.<ROUTE>` cookie (the
//! instance's own route from the central route map) on responses that belong to a session.
//!
//! - [`config`]: command line and validation.
//! - [`identity`]: which map entry is this instance's own (address, then name).
//! - [`session`]: whether a request or response belongs to an app session.
//! - [`inject`]: the Set-Cookie header and the shared-cache marking.
//! - [`handler`]: the request path that ties them together.
//! - [`app_health`]: whether the app can be reached (its traffic, `--app-health-path`).
//! - [`drain`]: taking no new sessions while serving the ones it has (SIGTERM, `/drain`).
//! - [`admin`] and [`metrics`]: what operators see.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_health;
pub mod config;
pub mod drain;
pub mod handler;
pub mod identity;
pub mod inject;
pub mod metrics;
pub mod server;
pub mod session;
