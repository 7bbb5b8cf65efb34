//! A map file on disk, followed live: its directory is watched by [`PathWatch`] (edits,
//! renames, re-creation, the kubelet's `..data` symlink swap, a periodic re-read as a
//! safety net), and only a valid map whose content hash changed is published.
//!
//! Opening the file never blocks: only a regular file is read (a FIFO or a device at the
//! map's path is an error), and at most [`MAX_MAP_BYTES`] of it.

use super::watch::{FileWatchOptions, PathWatch, read_regular_file};
use super::{Source, SourceFuture};
use crate::error::LoadError;
use crate::live::Publisher;
use crate::map::RouteMap;
use crate::parse::MAX_MAP_BYTES;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Follows one map file. See the module documentation for how.
pub struct FileSource {
    path: PathBuf,
    options: FileWatchOptions,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            options: FileWatchOptions::default(),
        }
    }

    pub fn with_options(mut self, options: FileWatchOptions) -> Self {
        self.options = options;
        self
    }
}

impl Source for FileSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn run(self: Box<Self>, publisher: Publisher) -> SourceFuture {
        Box::pin(follow(self.path, self.options, publisher))
    }
}

/// Reads a map file as every consumer must (the sources, `routemap check`, a proxy's
/// `--check-config`): through its symlinks, without ever blocking on a FIFO or a device,
/// regular files only, and at most one byte more than a map may have (the parser then
/// reports the size), so a wrong path to a huge file cannot exhaust memory.
pub fn read_map_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let origin = || path.display().to_string();
    let failed = |error: std::io::Error| match error.kind() {
        ErrorKind::NotFound => LoadError::NotFound { origin: origin() },
        _ => LoadError::Read {
            origin: origin(),
            reason: error.to_string(),
        },
    };
    match read_regular_file(path, MAX_MAP_BYTES as u64) {
        Err(error) if error.kind() == ErrorKind::InvalidInput => Err(LoadError::Read {
            origin: origin(),
            reason: format!("{error}; a route map is a plain file"),
        }),
        read => read.map_err(failed),
    }
}

async fn follow(path: PathBuf, options: FileWatchOptions, publisher: Publisher) {
    let origin = path.display().to_string();
    let mut watch = PathWatch::new("route map", std::slice::from_ref(&path), options);
    loop {
        watch.changed().await;
        let file = path.clone();
        let read = watch.read_whole(move || read_map_file(&file)).await;
        match read.and_then(|bytes| RouteMap::load(&origin, &bytes)) {
            Ok(map) => {
                publisher.publish(map);
            }
            Err(error) => publisher.fail(&error),
        }
    }
}
