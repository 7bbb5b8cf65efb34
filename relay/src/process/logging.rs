//! The process's logger, as the log settings select it. Logs go to stderr.
//!
//! The format is chosen once, when the logger is installed: the writer is built for it. The
//! filter sits behind a reload layer whose handle is kept here, so that a reload (SIGHUP)
//! can turn a running process's level up to `debug` and back, as `systemctl reload` does
//! for nginx's `error_log` level, without a restart that would drop its connections.

use crate::settings::shared::LogFormat;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The installed logger's filter, set once by [`init`]: a process has one global logger.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// A log filter known to parse, so that one read by a reload can always be applied: a bad
/// one is refused with the rest of the settings, and then nothing changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    /// `text` as `--log-level` takes it: a level, or tracing directives.
    pub fn parse(text: &str) -> Result<LogFilter, String> {
        let filter = LogFilter(text.to_owned());
        filter.build()?;
        Ok(filter)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A filter for the subscriber; one is consumed by each install or reload.
    fn build(&self) -> Result<EnvFilter, String> {
        EnvFilter::try_new(directives(&self.0))
            .map_err(|e| format!("{:?} is not a log filter: {e}", self.0))
    }
}

/// The filter, with the Kubernetes client's own per-attempt error lines off unless the
/// filter names it: the ConfigMap source reports the same errors once each, with the
/// ConfigMap they concern, instead of one line per retry.
fn directives(level: &str) -> String {
    if level.contains("kube") {
        level.to_owned()
    } else {
        format!("{level},kube_client=off,kube_runtime=off")
    }
}

/// Installs the global logger, keeping its filter's handle for [`set_filter`].
pub fn init(filter: &LogFilter, format: LogFormat) -> Result<(), String> {
    let (filter, handle) = reload::Layer::new(filter.build()?);
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| e.to_string())?;
    // Only one logger can be installed, so the handle is set at most once.
    let _ = FILTER.set(handle);
    Ok(())
}

/// Applies `filter` to the logger [`init`] installed. `Ok(false)` when there is none (a
/// server run inside a test process, which leaves logging to the test): nothing to change.
pub fn set_filter(filter: &LogFilter) -> Result<bool, String> {
    let Some(handle) = FILTER.get() else {
        return Ok(false);
    };
    handle
        .reload(filter.build()?)
        .map_err(|e| format!("the log filter could not be changed: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_clients_retry_lines_are_off_unless_asked_for() {
        assert_eq!(directives("info"), "info,kube_client=off,kube_runtime=off");
        assert_eq!(
            directives("info,kube_client=debug"),
            "info,kube_client=debug"
        );
    }

    #[test]
    fn filters_are_checked_when_read_and_applying_one_without_a_logger_is_a_no_op() {
        let debug = LogFilter::parse("debug").unwrap();
        assert_eq!(debug.as_str(), "debug");
        assert!(LogFilter::parse("info,stickyroute_relay=debug").is_ok());
        let error = LogFilter::parse("info,stickyroute_relay=loud").unwrap_err();
        assert!(error.starts_with("\"info,stickyroute_relay=loud\" is not a log filter"));
        // Unit tests never install the process's logger.
        assert_eq!(set_filter(&debug), Ok(false));
    }
}
