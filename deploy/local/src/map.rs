//! The demo's route map file. The demo invites its user to edit the map while it runs, so a
//! restart must not silently throw those edits away: the demo's own map is written only
//! when there is no file yet (or `--reset-map` asks for it); an edited map is kept, checked
//! first, and the demo says that it kept it.

use anyhow::{Context, bail};
use routemap::RouteMap;
use std::path::Path;

/// What [`prepare`] did with the map file.
pub enum Prepared {
    /// There was no file, or `--reset-map` was given: the demo's own map is in it now.
    Written,
    /// The file already held exactly the demo's own map.
    Unchanged,
    /// The file held a valid map that differs from the demo's own (the user's edits),
    /// left as it is.
    Kept { entries: usize },
    /// `--reset-map` replaced a map that differed from the demo's own.
    Reset,
}

/// Makes `path` hold a route map to start with: `default` when there is no file or `reset`
/// is set, otherwise whatever valid map the file holds. An existing map that is not valid
/// is an error listing its `FILE:LINE: reason` lines, since the proxy would never become
/// ready on it; a file that cannot be read is an error too, never silently replaced.
pub fn prepare(path: &Path, default: &str, reset: bool) -> anyhow::Result<Prepared> {
    let existing = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let outcome = match existing {
        None => Prepared::Written,
        Some(bytes) if bytes == default.as_bytes() => return Ok(Prepared::Unchanged),
        Some(_) if reset => Prepared::Reset,
        Some(bytes) => {
            let origin = path.display().to_string();
            return match RouteMap::load(&origin, &bytes) {
                Ok(map) => Ok(Prepared::Kept { entries: map.len() }),
                Err(error) => bail!(
                    "the route map kept from an earlier run is not valid:\n{}\n\
                     Fix it, or start the demo with --reset-map to write the demo's own map again.",
                    error.details().join("\n")
                ),
            };
        }
    };
    std::fs::write(path, default).with_context(|| format!("write {}", path.display()))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEFAULT: &str = "127.0.0.2 www1 loadfactor=60\n127.0.0.5 www0 loadfactor=20\n";

    /// A fresh directory of this test's own (no tempfile dependency for three tests).
    fn dir(test: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stickyroute-demo-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_map_is_written_and_an_unedited_one_left_alone() {
        let dir = dir("missing");
        let path = dir.join("routemap");
        assert!(matches!(
            prepare(&path, DEFAULT, false).unwrap(),
            Prepared::Written
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), DEFAULT);
        assert!(matches!(
            prepare(&path, DEFAULT, false).unwrap(),
            Prepared::Unchanged
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_edited_map_is_kept_unless_reset() {
        let dir = dir("edited");
        let path = dir.join("routemap");
        let edited = "127.0.0.2 www1 loadfactor=60 status=drain\n";
        std::fs::write(&path, edited).unwrap();
        assert!(matches!(
            prepare(&path, DEFAULT, false).unwrap(),
            Prepared::Kept { entries: 1 }
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
        assert!(matches!(
            prepare(&path, DEFAULT, true).unwrap(),
            Prepared::Reset
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), DEFAULT);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_edited_map_is_refused_with_its_lines_and_left_alone() {
        let dir = dir("invalid");
        let path = dir.join("routemap");
        let broken = "127.0.0.2 www1\n127.0.0.3 www1\n";
        std::fs::write(&path, broken).unwrap();
        let error = prepare(&path, DEFAULT, false).err().unwrap().to_string();
        assert!(
            error.contains("routemap:2: duplicate route www1"),
            "{error}"
        );
        assert!(error.contains("--reset-map"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
