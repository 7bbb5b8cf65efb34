//! Where maps come from. A source runs as a task that publishes every valid new map into a
//! [`Live`] handle and reports every failure; consumers never see which kind it is.
//!
//! Each kind lives in its own module: a watched file, a ConfigMap watched through the
//! Kubernetes API (with the `kubernetes` feature), a fixed map. [`start`] picks one from a
//! [`MapLocation`].

#[cfg(feature = "kubernetes")]
mod configmap;
mod file;
mod fixed;
mod location;
pub mod watch;

#[cfg(feature = "kubernetes")]
pub use configmap::{ConfigMapSource, kube_client};
pub use file::{FileSource, read_map_file};
pub use fixed::FixedSource;
pub use location::{
    ConfigMapRef, DEFAULT_CONFIGMAP_KEY, MapLocation, StartError, is_dns_label, start,
};
pub use watch::{DEFAULT_DEBOUNCE, FileWatchOptions, PathWatch, read_regular_file};

use crate::live::{Live, Publisher};
use std::future::Future;
use std::pin::Pin;

/// The future a source runs as; it ends only if the source has nothing more to do.
pub type SourceFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A producer of route maps.
pub trait Source: Send + 'static {
    /// Shown in status and logs: a path, or `configmap:NAMESPACE/NAME#KEY`.
    fn origin(&self) -> String;

    /// Loads the map and keeps following it, publishing through `publisher`.
    fn run(self: Box<Self>, publisher: Publisher) -> SourceFuture;
}

/// Starts `source` on the current tokio runtime. The returned handle is ready once the first
/// valid map was published (see [`Live::ready`]).
pub fn spawn(source: impl Source) -> (Live, SourceTask) {
    let (live, publisher) = Live::new(source.origin());
    let task = tokio::spawn(Box::new(source).run(publisher));
    (live, SourceTask(task))
}

/// The running source; dropping it stops following changes (the last map stays loaded).
pub struct SourceTask(tokio::task::JoinHandle<()>);

impl Drop for SourceTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
