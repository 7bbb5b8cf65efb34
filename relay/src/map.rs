//! Following the route map from where the settings say, and reading it again on demand.

use routemap::Live;
use routemap::source::{self, FileWatchOptions, MapLocation, SourceTask, StartError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A followed map: the live handle, the source's task, and the way to ask for a re-read.
pub struct FollowedMap {
    pub live: Live,
    pub task: SourceTask,
    reread: Arc<Notify>,
}

impl FollowedMap {
    /// Asks the source to read the map now (a reload). A file is read again at once; a
    /// ConfigMap is followed through its watch anyway, so this changes nothing there.
    pub fn reread(&self) {
        self.reread.notify_one();
    }
}

/// Starts following the map, with the given debounce for files (see [`FileWatchOptions`]).
/// The handle becomes ready with the first valid map.
pub async fn start_map(
    location: &MapLocation,
    debounce: Duration,
) -> Result<FollowedMap, StartError> {
    let options = FileWatchOptions {
        debounce,
        ..FileWatchOptions::default()
    };
    let reread = options.reread.clone();
    let (live, task) = source::start(location, options).await?;
    Ok(FollowedMap { live, task, reread })
}
