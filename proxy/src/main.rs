//! `stickyroute-proxy`: reads the settings, sets up logging, binds, and runs the library's
//! [`server::run`] until SIGTERM or SIGINT (SIGHUP reloads). `import-apache` and
//! `--check-config` are programs of their own, in their modules.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use stickyroute_proxy::config::{self, Command, Settings, check};
use stickyroute_proxy::import_apache;
use stickyroute_proxy::server;
use stickyroute_relay::process::lifecycle::{EXIT_CONFIG, run_main};
use stickyroute_relay::serve::listeners::Listeners;
use stickyroute_relay::settings::SettingsError;

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let layered = match config::read(&argv) {
        Ok(layered) => layered,
        Err(error) => return invalid(error),
    };
    if let Some(Command::ImportApache(args)) = &layered.options.command {
        return import_apache::cli::run(args);
    }
    let check_only = layered.options.check_config;
    let settings = match Settings::new(layered, std::env::var(server::ADMIN_TOKEN_ENV).ok()) {
        Ok(settings) => settings,
        Err(error) => return invalid(error),
    };
    if check_only {
        return check::run(&settings);
    }
    if let Err(error) =
        stickyroute_relay::process::logging::init(&settings.log_level, settings.log_format)
    {
        eprintln!("stickyroute-proxy: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    run_main(|controls| async move {
        let mut listeners =
            Listeners::bind(&settings.listen, settings.workers, settings.admin_listen)?;
        if let Some(tls) = &settings.tls {
            listeners.bind_tls(&tls.listen)?;
        }
        server::run(settings, listeners, controls).await
    })
}

/// Usage errors, `--help` and `--version` as clap shows them; other mistakes exit 64.
fn invalid(error: SettingsError) -> ExitCode {
    match error {
        SettingsError::CommandLine(error) => error.exit(),
        error => {
            eprintln!("stickyroute-proxy: invalid configuration: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
