//! The process's logger, as [`LogOptions`] select it. Logs go to stderr.

use crate::settings::shared::{LogFormat, LogOptions};

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

/// Installs the global logger.
pub fn init(options: &LogOptions) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(directives(&options.log_level))
        .map_err(|e| format!("--log-level {:?}: {e}", options.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match options.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| e.to_string())
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
}
