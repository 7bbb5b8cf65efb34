//! Settings: every one declared once, read the same way by both binaries.
//!
//! The declaration is a field of a clap-derived options struct: its flag, help text and
//! default (a named constant, shown by `--help`) are clap attributes, and everything else
//! follows from the flag by rule: the config-file key is the flag's name with `_` for `-`,
//! the environment variable is `STICKYROUTE_` and the key in capitals (unless the field
//! names another, such as `POD_IP`). Whether a reload can change a setting is the group it
//! is declared in (see each binary's options).
//!
//! Why clap alone rather than a layering crate such as `figment`: clap already parses flags
//! and variables with each setting's own parser and orders them, and its `--help` shows the
//! defaults and variables; a second derive (serde) would have to agree with the first on
//! every type and default. Here the config file is one more source of defaults (see
//! [`load`]), checked value by value with the same parsers, so a mistake in any layer is
//! reported with where it was made.

pub mod duration;
mod layered;
pub mod shared;

pub use duration::{Span, duration};
pub use layered::{ENV_PREFIX, Layered, Origin, SettingsError, command, env_name, file_key, load};

use std::collections::BTreeSet;

/// The config-file keys of the settings in group `G`: for telling a reload what applies.
pub fn keys_of<G: clap::Args>() -> BTreeSet<String> {
    G::augment_args(clap::Command::new("group"))
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(file_key))
        .collect()
}

/// What a reload found changed, by config-file key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied now.
    pub applied: Vec<String>,
    /// Kept at their running values until a restart.
    pub need_restart: Vec<String>,
}

impl Changes {
    /// Compares the running settings with newly read ones; `live` are the keys a reload
    /// may change.
    pub fn between<T, U>(running: &Layered<T>, read: &Layered<U>, live: &BTreeSet<String>) -> Self {
        let (applied, need_restart) = running
            .changed(read)
            .into_iter()
            .partition(|key| live.contains(key));
        Self {
            applied,
            need_restart,
        }
    }

    /// One log line per kind of change, naming each setting and its new value.
    pub fn log<U>(&self, read: &Layered<U>) {
        let describe = |keys: &[String]| {
            keys.iter()
                .map(|key| format!("{key}={}", read.shown(key)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if self.applied.is_empty() && self.need_restart.is_empty() {
            tracing::info!("reload: no setting changed");
        }
        if !self.applied.is_empty() {
            tracing::info!(settings = %describe(&self.applied), "reload: applied");
        }
        if !self.need_restart.is_empty() {
            tracing::warn!(
                settings = %describe(&self.need_restart),
                "reload: these changed but need a restart; running with the old values"
            );
        }
    }
}
