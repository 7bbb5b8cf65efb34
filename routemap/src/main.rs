//! `routemap`: validate and query route map files, e.g. from a git pre-commit hook or CI.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use routemap::{Key, RouteMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status for a map that is invalid, or a key that is not in it.
const EXIT_NO: u8 = 1;
/// Exit status for bad usage or a file that cannot be read (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "routemap",
    version,
    about = "Validate and query stickyroute route maps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate map files. Prints `FILE: ok, N entries, hash H` for each valid file and one
    /// `FILE:LINE: message` line per error otherwise. Exit status: 0 all valid, 1 some map
    /// invalid, 2 a file could not be read.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the route of KEY (an IP address or host name) in FILE. Exit status: 0 found,
    /// 1 not in the map, 2 the map is invalid or unreadable or KEY is malformed.
    Lookup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(value_name = "KEY")]
        key: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { files } => {
            ExitCode::from(files.iter().map(|f| check(f)).max().unwrap_or(0))
        }
        Command::Lookup { file, key } => ExitCode::from(lookup(&file, &key)),
    }
}

fn check(file: &Path) -> u8 {
    match load(file) {
        Ok(map) => {
            println!(
                "{}: ok, {} entries, hash {}",
                file.display(),
                map.len(),
                map.hash()
            );
            0
        }
        Err(code) => code,
    }
}

fn lookup(file: &Path, key: &str) -> u8 {
    let key = match Key::parse(key) {
        Ok(key) => key,
        Err(reason) => {
            eprintln!("routemap: key {key:?} is neither an IP address nor a host name: {reason}");
            return EXIT_USAGE;
        }
    };
    match load(file) {
        Ok(map) => match map.by_key(&key) {
            Some(entry) => {
                println!("{}", entry.route);
                0
            }
            None => {
                eprintln!("routemap: {key} is not in {}", file.display());
                EXIT_NO
            }
        },
        Err(_) => EXIT_USAGE,
    }
}

/// Reads and parses `file`, printing the problems; the error is the exit status to use.
fn load(file: &Path) -> Result<RouteMap, u8> {
    let origin = file.display().to_string();
    let bytes = routemap::source::read_map_file(file).map_err(|error| {
        match error {
            routemap::LoadError::NotFound { .. } => {
                eprintln!("{origin}: cannot read: no such file")
            }
            other => eprintln!("{other}"),
        }
        EXIT_USAGE
    })?;
    RouteMap::load(&origin, &bytes).map_err(|error| {
        for line in error.details() {
            eprintln!("{line}");
        }
        EXIT_NO
    })
}
