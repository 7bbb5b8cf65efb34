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

/// A mounted-ConfigMap (or Secret) directory: its keys are fixed when it is created.
pub struct ConfigMapDir {
    dir: PathBuf,
    keys: Vec<String>,
    version: u32,
    current: Option<String>,
}

impl ConfigMapDir {
    /// Lays out the first version, as the kubelet does when the pod starts.
    pub fn create(dir: &Path, key: &str, content: &str) -> io::Result<Self> {
        Self::create_keys(dir, &[(key, content)])
    }

    /// Like [`ConfigMapDir::create`] with several keys (a TLS Secret's `tls.crt` and
    /// `tls.key`, say), updated together.
    pub fn create_keys(dir: &Path, files: &[(&str, &str)]) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut this = Self {
            dir: dir.to_owned(),
            keys: files.iter().map(|(key, _)| (*key).to_owned()).collect(),
            version: 0,
            current: None,
        };
        this.update_keys(files)?;
        for key in &this.keys {
            symlink(Path::new("..data").join(key), dir.join(key))?;
        }
        Ok(this)
    }

    /// The path the application reads: the visible symlink (of the first key).
    pub fn path(&self) -> PathBuf {
        self.key_path(&self.keys[0])
    }

    /// The visible symlink of `key`.
    pub fn key_path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// One AtomicWriter update of the first key.
    pub fn update(&mut self, content: &str) -> io::Result<()> {
        let key = self.keys[0].clone();
        self.update_keys(&[(&key, content)])
    }

    /// One AtomicWriter update: new timestamped directory, `..data_tmp` symlink renamed over
    /// `..data`, old directory removed. The visible symlinks are not touched.
    pub fn update_keys(&mut self, files: &[(&str, &str)]) -> io::Result<()> {
        self.version += 1;
        let stamp = format!("..2026_11_24_10_00_00.{:09}", self.version);
        // 1. the new files go into a new hidden timestamped directory
        let new_dir = self.dir.join(&stamp);
        std::fs::create_dir(&new_dir)?;
        for (key, content) in files {
            std::fs::write(new_dir.join(key), content)?;
        }
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
