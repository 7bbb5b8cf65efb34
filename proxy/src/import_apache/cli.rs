//! `stickyroute-proxy import-apache`: reads the Apache files, writes `routemap` and
//! `proxy.json`, and prints warnings and the next steps. The translation itself is
//! [`super::import`]; this is only its files and its output.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Apache configuration files (the proxy's, and optionally a backend's).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The RewriteMap txt: file, to check it against the BalancerMembers.
    #[arg(long, value_name = "FILE")]
    pub rewrite_map: Option<PathBuf>,
    /// The balancer to import (balancer://NAME or NAME), when the configuration has
    /// several: one stickyroute-proxy serves one balancer.
    #[arg(long, value_name = "NAME")]
    pub balancer: Option<String>,
    /// Where to write `routemap` and `proxy.json`.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Runs the importer; errors go to stderr with exit status 1.
pub fn run(args: &ImportArgs) -> ExitCode {
    match import_into(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stickyroute-proxy import-apache: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &std::path::Path) -> Result<(String, String), String> {
    std::fs::read_to_string(path)
        .map(|text| (path.display().to_string(), text))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn import_into(args: &ImportArgs) -> Result<(), String> {
    let texts = args
        .files
        .iter()
        .map(|file| read(file))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let map_text = args.rewrite_map.as_deref().map(read).transpose()?;
    let imported = super::import(
        &inputs,
        map_text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        args.balancer.as_deref(),
    )
    .map_err(|error| error.to_string())?;
    let out = &args.out;
    let (routemap_path, config_path) = (out.join("routemap"), out.join("proxy.json"));
    if !args.force && (routemap_path.exists() || config_path.exists()) {
        return Err(format!(
            "{} or {} exists; give --force to overwrite",
            routemap_path.display(),
            config_path.display()
        ));
    }
    let mut config = imported.config;
    let absolute = std::path::absolute(&routemap_path).unwrap_or_else(|_| routemap_path.clone());
    config.insert(
        "routemap".into(),
        serde_json::Value::String(absolute.display().to_string()),
    );
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| format!("cannot write the config: {e}"))?;
    std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&routemap_path, &imported.routemap))
        .and_then(|()| std::fs::write(&config_path, config_text + "\n"))
        .map_err(|e| format!("cannot write into {}: {e}", out.display()))?;
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "wrote {} and {}",
        routemap_path.display(),
        config_path.display()
    );
    println!(
        "run:   stickyroute-proxy --config {}",
        config_path.display()
    );
    if let Some(agent) = imported.agent_hint {
        println!("on each backend, instead of the RewriteRule: {agent}");
    }
    Ok(())
}
