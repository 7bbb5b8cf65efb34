//! Settings: every one declared once, read the same way by both binaries.
//!
//! The declaration is a field of a clap-derived options struct: its flag, help text and
//! default (a named constant, shown by `--help`) are clap attributes, and everything else
//! follows from the flag by rule: the config-file key is the flag's name with `_` for `-`,
//! the environment variable is `STICKYROUTE_` and the key in capitals (unless the field
//! names another, such as `POD_IP`). Whether a reload can change a setting is the group it
//! is declared in (see each binary's options); such a group's help heading ends with
//! [`ON_RELOAD`], so `--help` says so too.
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

/// How the help heading of every group a reload applies ends.
pub const ON_RELOAD: &str = "(applied on reload)";

/// The config-file keys of the settings in group `G`: for telling a reload what applies.
pub fn keys_of<G: clap::Args>() -> BTreeSet<String> {
    G::augment_args(clap::Command::new("group"))
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(file_key))
        .collect()
}

/// The settings of `T` whose `--help` heading disagrees with `live` (the keys a reload
/// applies) about being applied on reload; each binary's tests expect none. A group's
/// heading carries over to the groups flattened after it, so the groups a reload applies
/// come last, each with a heading of its own.
pub fn misheaded<T: clap::CommandFactory>(live: &BTreeSet<String>) -> Vec<String> {
    T::command()
        .get_arguments()
        .filter_map(|arg| {
            let key = file_key(arg.get_long()?);
            let says = arg
                .get_help_heading()
                .is_some_and(|h| h.ends_with(ON_RELOAD));
            (says != live.contains(&key)).then_some(key)
        })
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
    /// What a reload that read `read` changes: the live settings (keys in `live`) that
    /// differ from the last reload's reading `last`, and the others that differ from what
    /// the process `started` with (they stay pending until a restart, however many
    /// reloads come between).
    pub fn on_reload<T>(
        started: &Layered<T>,
        last: &Layered<T>,
        read: &Layered<T>,
        live: &BTreeSet<String>,
    ) -> Self {
        let applied = last
            .changed(read)
            .into_iter()
            .filter(|key| live.contains(key));
        let need_restart = started
            .changed(read)
            .into_iter()
            .filter(|key| !live.contains(key));
        Self {
            applied: applied.collect(),
            need_restart: need_restart.collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    #[command(next_help_heading = "Live (applied on reload)")]
    struct Live {
        #[arg(long)]
        level: Option<String>,
    }

    #[derive(Debug, clap::Args)]
    struct Fixed {
        #[arg(long)]
        format: Option<String>,
    }

    #[derive(Debug, clap::Parser)]
    struct LiveFirst {
        #[command(flatten)]
        live: Live,
        #[command(flatten)]
        fixed: Fixed,
    }

    #[derive(Debug, clap::Parser)]
    struct LiveLast {
        #[command(flatten)]
        fixed: Fixed,
        #[command(flatten)]
        live: Live,
    }

    #[test]
    fn a_heading_carried_over_to_a_restart_only_group_is_caught() {
        let live = keys_of::<Live>();
        assert_eq!(misheaded::<LiveFirst>(&live), ["format"]);
        assert_eq!(misheaded::<LiveLast>(&live), Vec::<String>::new());
    }
}
