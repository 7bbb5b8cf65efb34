//! A server process's life: its worker threads, its logger, its signals and its shutdown.

pub mod lifecycle;
pub mod logging;
pub mod workers;
