//! A replay of how the kubelet updates a ConfigMap mounted as a volume
//! (`pkg/volume/util/atomic_writer.go`), step by step, so that the file source is tested
//! against the sequence of events production really produces.
//!
//! ```text
//! ..2026_11_24_10_00_00.000000001/routemap   real file of the current version
//! ..data -> ..2026_11_24_10_00_00.000000001
//! routemap -> ..data/routemap                 visible symlink, never touched
//! ```

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A mounted-ConfigMap directory holding one key.
pub struct ConfigMapDir {
    dir: PathBuf,
    key: String,
    version: u32,
    current: Option<String>,
}

impl ConfigMapDir {
    /// Lays out the first version, as the kubelet does when the pod starts.
    pub fn create(dir: &Path, key: &str, content: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut this = Self {
            dir: dir.to_owned(),
            key: key.to_owned(),
            version: 0,
            current: None,
        };
        this.update(content)?;
        symlink(Path::new("..data").join(key), dir.join(key))?;
        Ok(this)
    }

    /// The path the application reads: the visible symlink.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.key)
    }

    /// One AtomicWriter update: new timestamped directory, `..data_tmp` symlink renamed over
    /// `..data`, old directory removed. The visible symlink is not touched.
    pub fn update(&mut self, content: &str) -> io::Result<()> {
        self.version += 1;
        let stamp = format!("..2026_11_24_10_00_00.{:09}", self.version);
        // 1. the new files go into a new hidden timestamped directory
        let new_dir = self.dir.join(&stamp);
        std::fs::create_dir(&new_dir)?;
        std::fs::write(new_dir.join(&self.key), content)?;
        // 2. a `..data_tmp` symlink points at it
        let tmp = self.dir.join("..data_tmp");
        symlink(&stamp, &tmp)?;
        // 3. renamed over `..data`: the atomic step
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        // 4. visible symlinks for new keys (only the first time; the key set is fixed here)
        // 5. the old timestamped directory is deleted
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}
