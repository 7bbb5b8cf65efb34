//! The route map: the contract between the stickyroute proxy, its agents and the operators
//! who edit the map in git.
//!
//! - [`route`]: the validated value types (`RouteId`, `Key`, `Status`, `LoadFactor`, `Entry`).
//! - [`parse()`]: the text format, reporting every error with its line.
//! - [`RouteMap`]: a valid map indexed by key and by route, with a content hash.
//! - [`Snapshot`]: one published version (map + generation), shared as `Arc`.
//! - [`Live`] / [`Publisher`]: the current snapshot behind `arc-swap`, change notification
//!   and status.
//! - [`source`]: where maps come from (a watched file, a fixed map), run as tasks that feed
//!   a `Live`.
//! - [`cookie`]: the sticky cookie codec both binaries share.
#![forbid(unsafe_code)]

pub mod cookie;
mod error;
mod live;
mod map;
pub mod parse;
pub mod route;
mod snapshot;
pub mod source;

pub use error::{LoadError, Located};
pub use live::{LastError, Live, MapStatus, Publisher};
pub use map::RouteMap;
pub use parse::{ErrorKind, ParseError, parse};
pub use route::{Entry, Key, LoadFactor, RouteId, Status};
pub use snapshot::Snapshot;
