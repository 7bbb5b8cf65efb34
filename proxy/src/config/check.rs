//! `--check-config`: the settings are valid, and so is the route map they name. A map file
//! that does not exist fails the check (a typo in a path must not pass CI), although a
//! running proxy waits for it to appear.

use super::Settings;
use routemap::RouteMap;
use routemap::source::MapLocation;
use std::process::ExitCode;
use stickyroute_relay::process::lifecycle::EXIT_CONFIG;

/// Prints the verdict; exit status 0 when valid, [`EXIT_CONFIG`] otherwise.
pub fn run(settings: &Settings) -> ExitCode {
    let origin = settings.routemap.to_string();
    let path = match &settings.routemap {
        MapLocation::File(path) => path,
        MapLocation::ConfigMap(_) => {
            println!(
                "configuration ok; route map {origin} is read through the Kubernetes API at start (check the map itself with `routemap check`)"
            );
            return ExitCode::SUCCESS;
        }
    };
    let loaded =
        routemap::source::read_map_file(path).and_then(|bytes| RouteMap::load(&origin, &bytes));
    match loaded {
        Ok(map) => {
            println!(
                "configuration ok; route map {origin}: {} members, hash {}",
                map.len(),
                map.hash()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            for line in error.details() {
                eprintln!("{line}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
