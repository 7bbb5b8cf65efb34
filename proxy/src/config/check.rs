//! `--check-config`: the settings are valid, the TLS certificate/key pairs load (each key
//! belongs to its certificate), and the route map they name is valid. A map file
//! that does not exist fails the check (a typo in a path must not pass CI), although a
//! running proxy waits for it to appear.

use super::Settings;
use routemap::RouteMap;
use routemap::source::MapLocation;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};
use stickyroute_relay::process::lifecycle::EXIT_CONFIG;

/// Prints the verdict; exit status 0 when valid, [`EXIT_CONFIG`] otherwise.
pub fn run(settings: &Settings) -> ExitCode {
    if let Some(tls) = &settings.tls {
        match tls.load(&settings.source) {
            Ok(server) => {
                for cert in server.certs().status() {
                    println!(
                        "certificate {}: {} (expires at {})",
                        cert.cert.display(),
                        cert.names.join(", "),
                        expiry(cert.not_after)
                    );
                }
            }
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
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

/// A notAfter as RFC 3339.
fn expiry(not_after: i64) -> String {
    u64::try_from(not_after).map_or_else(
        |_| not_after.to_string(),
        |secs| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        },
    )
}
