//! `stickyroute-proxy`: the front load balancer. It routes each request by the route suffix
//! of its sticky value, balances new sessions by loadfactor, and rebuilds its member table
//! from the live route map, swapping it in without a restart or a lock on the request path.
//!
//! - [`config`]: flags and JSON file, merged and validated.
//! - [`sticky`]: where the sticky value comes from (parameter, header, cookie).
//! - [`member`]: a member and its runtime state (health, counters, score, overrides).
//! - [`table`]: the member table built from one snapshot, with its swap diff.
//! - [`balancer`]: the live table, following map changes and the members' addresses.
//! - [`membership`]: where name keys' addresses come from (DNS, or EndpointSlices).
//! - [`balance`]: Apache's byrequests and bybusyness.
//! - [`health`]: active health checks.
//! - [`redirect`]: `--https-redirect`'s 308 to the https URL.
//! - [`handler`]: the request path; [`admin`] and [`metrics`]: what operators see.
//! - [`manager`]: the balancer-manager page and API (see and steer members at runtime).
//! - [`overrides`]: the balancer-manager's changes as one set, kept in process or in a
//!   file every proxy sharing it follows.
//! - [`import_apache`]: translating an Apache mod_proxy_balancer configuration.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod balancer;

pub mod config;
pub mod handler;
pub mod health;
pub mod import_apache;
pub mod manager;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod overrides;
pub mod redirect;
pub mod replicas;
pub mod server;
pub mod sticky;
pub mod table;
