//! Defaults < config file < environment < flags, for any clap-derived options struct.
//!
//! Clap already orders flags over environment variables over defaults, so the config file
//! is slotted in as a replacement for the defaults: each key's value becomes that setting's
//! default in the command that parses the command line. Before that, every value from the
//! file and from the environment is checked with the setting's own value parser on its
//! own, so that a mistake is reported where it was made (`STICKYROUTE_RETRY`, or the file
//! and key) rather than as if it had been given as a flag.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

/// Every setting's environment variable is this prefix and its config-file key in capitals.
pub const ENV_PREFIX: &str = "STICKYROUTE_";

/// The largest config file read: far more than any real one, small enough to never matter.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Arguments that are not settings: they select a file or an action, so they cannot come
/// from the config file, and `--config` is read from the command line or its variable only.
const NOT_SETTINGS: [&str; 4] = ["config", "check_config", "help", "version"];

/// Where one setting's value came from, named as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(String),
    Env(String),
    File { path: PathBuf, key: String },
    Default,
}

impl Origin {
    /// Flags over the environment over the file over defaults.
    pub fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File { .. } => 1,
            Origin::Env(_) => 2,
            Origin::Flag(_) => 3,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File { path, key } => write!(f, "{} key {key:?}", path.display()),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// From the command line itself, including `--help` and `--version`: a binary shows it
    /// with [`clap::Error::exit`], which prints usage and picks the exit status.
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Value { origin: Origin, message: String },
}

/// Parsed options, with where each setting came from.
#[derive(Debug, Clone)]
pub struct Layered<T> {
    pub options: T,
    /// The command line these were read from, so that a reload reads them the same way.
    pub argv: Vec<OsString>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    origins: BTreeMap<String, Origin>,
    /// Each setting's values as given, by config-file key: what a reload compares.
    values: BTreeMap<String, Vec<OsString>>,
    /// The setting names under a key, for messages: `--retry`.
    flags: BTreeMap<String, String>,
}

impl<T> Layered<T> {
    /// Where the setting with this config-file key came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The setting as a message should name it: the flag, variable or file key it came
    /// from, or the flag when it holds its default.
    pub fn name(&self, key: &str) -> String {
        match self.origin(key) {
            Origin::Default => self
                .flags
                .get(key)
                .cloned()
                .unwrap_or_else(|| key.to_owned()),
            origin => origin.to_string(),
        }
    }

    /// An error about the setting `key`, naming where its value came from.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> SettingsError {
        SettingsError::Value {
            origin: match self.origin(key) {
                Origin::Default => Origin::Flag(self.name(key)),
                origin => origin,
            },
            message: message.into(),
        }
    }

    /// The config-file keys whose values differ between `self` and `other`.
    pub fn changed<U>(&self, other: &Layered<U>) -> Vec<String> {
        let keys = self.values.keys().chain(other.values.keys());
        let mut changed: Vec<String> = keys
            .filter(|key| self.values.get(*key) != other.values.get(*key))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }

    /// The value of `key` as given (joined by commas), for a log line.
    pub fn shown(&self, key: &str) -> String {
        self.values.get(key).map_or_else(String::new, |values| {
            values
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// The config-file key of a flag: its name with `_` for `-`.
pub fn file_key(long: &str) -> String {
    long.replace('-', "_")
}

/// The environment variable of a flag when it declares none of its own.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", file_key(long).to_ascii_uppercase())
}

fn is_setting(arg: &Arg) -> bool {
    !arg.is_positional() && !NOT_SETTINGS.contains(&arg.get_id().as_str())
}

/// The command as users see it: every setting with its environment variable (one it
/// declares, such as `POD_IP`, or the prefixed name of its flag).
pub fn command<T: CommandFactory>() -> Command {
    T::command().mut_args(|arg| match arg.get_long() {
        Some(long) if is_setting(&arg) && arg.get_env().is_none() => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    })
}

/// Parses `argv` (program name first) under the layering rule, with `defaults` replacing
/// declared defaults where a binary's differ from the shared declaration.
pub fn load<T: CommandFactory + FromArgMatches>(
    argv: &[OsString],
    defaults: &[(&str, &str)],
) -> Result<Layered<T>, SettingsError> {
    let mut command = command::<T>();
    for (key, value) in defaults {
        command = command.mut_arg(*key, |arg| {
            arg.default_value(value.to_string()).required(false)
        });
    }
    check_environment(&command, argv)?;
    // The command line alone, for `--config` (required settings may come from the file).
    let first = command
        .clone()
        .mut_args(|arg| arg.required(false))
        .try_get_matches_from(argv)?;
    let config_file = first
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let mut from_file = BTreeMap::new();
    if let Some(path) = config_file
        .as_deref()
        .filter(|_| first.subcommand().is_none())
    {
        from_file = read_config(&command, path)?;
        for (key, values) in &from_file {
            let id = id_of(&command, key).unwrap_or_default();
            // Clap does not count a default as giving a required setting.
            command = command.mut_arg(id, |arg| arg.default_values(values.clone()).required(false));
        }
    }
    let matches = command.clone().try_get_matches_from(argv)?;
    let options = T::from_arg_matches(&matches)?;
    let mut layered = Layered {
        options,
        argv: argv.to_vec(),
        config_file,
        origins: BTreeMap::new(),
        values: BTreeMap::new(),
        flags: BTreeMap::new(),
    };
    for arg in command.get_arguments().filter(|arg| is_setting(arg)) {
        let Some(long) = arg.get_long() else { continue };
        let key = file_key(long);
        let origin = origin_of(&matches, arg, &key, config_file_of(&layered), &from_file);
        if let Some(values) = raw_values(&matches, arg) {
            layered.values.insert(key.clone(), values);
        }
        layered.flags.insert(key.clone(), format!("--{long}"));
        layered.origins.insert(key, origin);
    }
    Ok(layered)
}

fn config_file_of<T>(layered: &Layered<T>) -> Option<&Path> {
    layered.config_file.as_deref()
}

fn origin_of(
    matches: &ArgMatches,
    arg: &Arg,
    key: &str,
    file: Option<&Path>,
    from_file: &BTreeMap<String, Vec<String>>,
) -> Origin {
    let id = arg.get_id().as_str();
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => {
            Origin::Flag(format!("--{}", arg.get_long().unwrap_or(id)))
        }
        Some(ValueSource::EnvVariable) => Origin::Env(
            arg.get_env()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        Some(ValueSource::DefaultValue) if from_file.contains_key(key) => Origin::File {
            path: file.map(Path::to_owned).unwrap_or_default(),
            key: key.to_owned(),
        },
        _ => Origin::Default,
    }
}

fn raw_values(matches: &ArgMatches, arg: &Arg) -> Option<Vec<OsString>> {
    let raw = matches.get_raw(arg.get_id().as_str())?;
    Some(raw.map(OsStr::to_owned).collect())
}

fn id_of(command: &Command, key: &str) -> Option<String> {
    command
        .get_arguments()
        .filter(|arg| is_setting(arg))
        .find(|arg| arg.get_long().is_some_and(|long| file_key(long) == key))
        .map(|arg| arg.get_id().as_str().to_owned())
}

/// Every variable that is set for a setting the command line does not give is checked on
/// its own, so that its error names the variable.
fn check_environment(command: &Command, argv: &[OsString]) -> Result<(), SettingsError> {
    for arg in command.get_arguments().filter(|arg| is_setting(arg)) {
        let (Some(long), Some(name)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        if on_command_line(argv, long) {
            continue;
        }
        let origin = Origin::Env(name.to_string_lossy().into_owned());
        let value = value.to_string_lossy().into_owned();
        let values: Vec<&str> = match arg.get_value_delimiter() {
            Some(delimiter) => value.split(delimiter).collect(),
            None => vec![value.as_str()],
        };
        for value in values {
            check_value(arg, value).map_err(|message| SettingsError::Value {
                origin: origin.clone(),
                message,
            })?;
        }
    }
    Ok(())
}

fn on_command_line(argv: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    argv.iter().skip(1).any(|word| {
        let word = word.to_string_lossy();
        word == flag.as_str()
            || word
                .strip_prefix(flag.as_str())
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// The config file: a JSON object whose keys are settings' keys, each checked.
fn read_config(
    command: &Command,
    path: &Path,
) -> Result<BTreeMap<String, Vec<String>>, SettingsError> {
    let failed = |message: String| SettingsError::File {
        path: path.to_owned(),
        message,
    };
    let text = read_bounded(path).map_err(|source| SettingsError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|error| failed(format!("not a JSON object of settings: {error}")))?;
    let mut values = BTreeMap::new();
    for (key, value) in object {
        let Some(arg) = command
            .get_arguments()
            .filter(|arg| is_setting(arg))
            .find(|arg| arg.get_long().is_some_and(|long| file_key(long) == key))
        else {
            return Err(failed(unknown_key(command, &key)));
        };
        let texts = file_values(arg, &value).map_err(|m| failed(format!("key {key:?}: {m}")))?;
        let origin = Origin::File {
            path: path.to_owned(),
            key: key.clone(),
        };
        for text in &texts {
            check_value(arg, text).map_err(|message| SettingsError::Value {
                origin: origin.clone(),
                message,
            })?;
        }
        values.insert(key, texts);
    }
    Ok(values)
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_CONFIG_BYTES / 1024
        )));
    }
    Ok(text)
}

fn unknown_key(command: &Command, key: &str) -> String {
    let keys: Vec<String> = command
        .get_arguments()
        .filter(|arg| is_setting(arg))
        .filter_map(|arg| arg.get_long().map(file_key))
        .collect();
    let closest = keys
        .iter()
        .map(|known| (edit_distance(known, key), known))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match closest {
        Some((_, known)) => format!("unknown key {key:?} (did you mean {known:?}?)"),
        None => format!("unknown key {key:?} (keys are the flags' names with _ for -)"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// A JSON value as the command-line words it stands for.
fn file_values(arg: &Arg, value: &serde_json::Value) -> Result<Vec<String>, String> {
    use serde_json::Value;
    let word = |value: &Value| match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Null => Err("null is not a value (leave the key out for the default)".to_owned()),
        Value::Array(_) | Value::Object(_) => Err("expected a single value".to_owned()),
    };
    match value {
        Value::Array(items) if takes_many(arg) => items.iter().map(word).collect(),
        Value::Array(_) => Err("takes one value, not a list".to_owned()),
        single => word(single).map(|word| vec![word]),
    }
}

fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

/// Checks one value with the setting's own parser, through a command of that setting alone.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            other => Err(format!("{other:?} is not true or false")),
        };
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let alone = arg
        .clone()
        .env(None::<&str>)
        .default_value(None::<&str>)
        .required(false);
    Command::new("check")
        .arg(alone)
        .try_get_matches_from(["check".to_owned(), format!("--{long}={value}")])
        .map(drop)
        .map_err(|error| explain(&error, value))
}

fn explain(error: &clap::Error, value: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("{value:?} is not one of {}", valid.join(", "));
    }
    format!("{value:?}: {}", error.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Options {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "60s")]
        retry: crate::settings::Span,
        #[arg(long, value_delimiter = ',')]
        failonstatus: Vec<u16>,
        #[arg(long)]
        track_all: bool,
        #[arg(long)]
        upstream: String,
    }

    fn argv(words: &[&str]) -> Vec<OsString> {
        std::iter::once("test")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_file_fills_in_under_the_flags_and_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("settings.json");
        std::fs::write(
            &file,
            r#"{"retry": "30s", "failonstatus": [500, 503], "track_all": true, "upstream": "a:1"}"#,
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let loaded: Layered<Options> = load(&argv(&["--config", config]), &[]).unwrap();
        assert_eq!(loaded.options.retry.to_string(), "30s");
        assert_eq!(loaded.options.failonstatus, [500, 503]);
        assert!(loaded.options.track_all);
        assert_eq!(
            loaded.options.upstream, "a:1",
            "a required setting may come from the file"
        );
        assert!(matches!(loaded.origin("retry"), Origin::File { .. }));

        let flagged: Layered<Options> =
            load(&argv(&["--config", config, "--retry", "5s"]), &[]).unwrap();
        assert_eq!(flagged.options.retry.to_string(), "5s");
        assert_eq!(flagged.origin("retry"), Origin::Flag("--retry".into()));
        assert_eq!(flagged.changed(&loaded), ["retry"]);

        std::fs::write(&file, r#"{"retry": "5 parsecs", "upstream": "a:1"}"#).unwrap();
        let error = load::<Options>(&argv(&["--config", config]), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{config} key \"retry\": \"5 parsecs\" has an unknown unit; use ms, s, m or h")
        );
        std::fs::write(&file, r#"{"retyr": "5s"}"#).unwrap();
        let error = load::<Options>(&argv(&["--config", config]), &[]).unwrap_err();
        assert!(
            error.to_string().contains("did you mean \"retry\""),
            "{error}"
        );
        std::fs::write(&file, r#"{"retry": ["5s"]}"#).unwrap();
        let error = load::<Options>(&argv(&["--config", config]), &[]).unwrap_err();
        assert!(error.to_string().contains("not a list"), "{error}");
    }

    #[test]
    fn every_setting_has_a_variable_named_after_its_flag() {
        let command = command::<Options>();
        let variable = |id: &str| {
            command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .and_then(|arg| arg.get_env())
                .map(|name| name.to_string_lossy().into_owned())
        };
        assert_eq!(
            variable("track_all").as_deref(),
            Some("STICKYROUTE_TRACK_ALL")
        );
        assert_eq!(variable("config"), None);
    }

    #[test]
    fn suggestions_are_close_keys() {
        assert_eq!(edit_distance("nofailover", "nofailvoer"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
