//! `stickyroute-agent`: reads the settings, sets up logging, binds, and runs the library's
//! [`server::run`] until SIGTERM or SIGINT (SIGHUP reloads).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use stickyroute_agent::config::{Settings, host_name};
use stickyroute_agent::server;
use stickyroute_relay::process::lifecycle::{EXIT_CONFIG, run_main};
use stickyroute_relay::serve::listeners::Listeners;
use stickyroute_relay::settings::SettingsError;

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let settings = match Settings::read(&argv, host_name()) {
        Ok(settings) => settings,
        Err(SettingsError::CommandLine(error)) => error.exit(),
        Err(error) => {
            eprintln!("stickyroute-agent: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) =
        stickyroute_relay::process::logging::init(&settings.log_level, settings.log_format)
    {
        eprintln!("stickyroute-agent: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    run_main(|controls| async move {
        let listeners =
            Listeners::bind(&[settings.listen], settings.workers, settings.admin_listen)?;
        server::run(settings, listeners, controls).await
    })
}
