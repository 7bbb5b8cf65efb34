//! `stickyroute-demo`: the classic Apache mod_proxy_balancer setup (four backends, www1 to
//! www3 with loadfactor 60 and www0 with 20, a `balanceid=route.<id>` cookie set from a
//! central route map) on loopback, in one command. Four demo apps on 127.0.0.2 … 127.0.0.5,
//! each behind a stickyroute agent (the same arguments apart from listen and upstream), the
//! stickyroute proxy in front, and a route map file that both follow live. All of them run
//! in this process, the agents and the proxy through their libraries' `run` exactly as the
//! binaries do; every log line has the component's name in front. Runs until Ctrl-C.
#![forbid(unsafe_code)]

mod app;
mod component;
mod map;
mod output;

use anyhow::{Context, bail};
use clap::Parser;
use component::{Component, Kind};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// The demo servers: route, address, loadfactor (the classic setup's four BalancerMembers,
/// moved to loopback).
const SERVERS: [(&str, [u8; 4], u8); 4] = [
    ("www1", [127, 0, 0, 2], 60),
    ("www2", [127, 0, 0, 3], 60),
    ("www3", [127, 0, 0, 4], 60),
    ("www0", [127, 0, 0, 5], 20),
];

/// Runs a complete stickyroute setup on loopback addresses.
#[derive(Parser)]
#[command(name = "stickyroute-demo", version)]
struct Args {
    /// Directory for the route map file (created).
    #[arg(long, default_value = "target/stickyroute-demo")]
    dir: PathBuf,
    /// First of five ports: proxy, proxy admin, agents, agent admins, apps.
    #[arg(long, default_value_t = 8080)]
    port_base: u16,
    /// Write the demo's own route map even when the file holds an edited one (by default
    /// an edited map is kept across restarts).
    #[arg(long)]
    reset_map: bool,
}

/// Errors end the demo with one message (context included, no backtrace: what went wrong
/// is the user's to fix, not a bug) and exit status 1.
#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickyroute-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The handlers come first: once they exist, Ctrl-C and SIGTERM stop the demo through
    // `stop`, which shuts every component down before the demo exits.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let base = args.port_base;
    let (proxy_port, admin_port, agent_port, agent_admin_port, app_port) =
        (base, base + 1, base + 2, base + 3, base + 4);
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let map = std::fs::canonicalize(&args.dir)?.join("routemap");
    let text: String =
        std::iter::once("# stickyroute demo route map: edit me while the demo runs\n".to_owned())
            .chain(
                SERVERS.iter().map(|(route, ip, lf)| {
                    format!("{} {route} loadfactor={lf}\n", IpAddr::from(*ip))
                }),
            )
            .collect();
    let kept = match map::prepare(&map, &text, args.reset_map)? {
        map::Prepared::Written | map::Prepared::Unchanged => false,
        map::Prepared::Reset => {
            output::say(&format!(
                "--reset-map: wrote the demo's own route map over the edited one in {}",
                map.display()
            ));
            false
        }
        map::Prepared::Kept { entries } => {
            output::say(&format!(
                "keeping the route map edited in an earlier run: {} ({entries} entries); \
                 start with --reset-map to write the demo's own again",
                map.display()
            ));
            true
        }
    };

    let mut children = Vec::new();
    for (route, ip, _) in SERVERS {
        let ip = IpAddr::from(ip);
        app::serve(route, SocketAddr::new(ip, app_port)).await?;
        children.push(Component::start(
            Kind::Agent,
            &format!("agent {route}"),
            &[
                format!("--listen={ip}:{agent_port}"),
                format!("--upstream={ip}:{app_port}"),
                format!("--admin-listen={ip}:{agent_admin_port}"),
                format!("--routemap={}", map.display()),
                "--session-cookie=SESSION".to_owned(),
                "--drain-delay=0s".to_owned(),
            ],
        )?);
    }
    children.push(Component::start(
        Kind::Proxy,
        "proxy",
        &[
            format!("--listen=127.0.0.1:{proxy_port}"),
            format!("--admin-listen=127.0.0.1:{admin_port}"),
            format!("--routemap={}", map.display()),
            format!("--member-port={agent_port}"),
            "--stickysession=balanceid".to_owned(),
            "--nofailover".to_owned(),
            format!("--agent-admin-port={agent_admin_port}"),
            "--agent-poll-interval=2s".to_owned(),
            "--drain-delay=0s".to_owned(),
        ],
    )?);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let ready = tokio::select! {
        ready = wait_ready(&children, admin) => ready.map(|()| true),
        _ = interrupt.recv() => {
            output::say("Ctrl-C during start-up: stopping the demo");
            Ok(false)
        }
        _ = terminate.recv() => {
            output::say("SIGTERM during start-up: stopping the demo");
            Ok(false)
        }
    };
    match ready {
        Ok(true) => {}
        Ok(false) => {
            stop(&mut children);
            return Ok(());
        }
        Err(e) => {
            stop(&mut children);
            if kept {
                bail!(
                    "{e:#}\nThe route map was kept from an earlier run: does it still have a \
                     usable member? Start with --reset-map to write the demo's own map again."
                );
            }
            return Err(e);
        }
    }
    print_guide(proxy_port, admin_port, &map, kept);

    tokio::select! {
        _ = interrupt.recv() => output::say("Ctrl-C: stopping the demo"),
        _ = terminate.recv() => output::say("SIGTERM: stopping the demo"),
        exited = wait_any(&children) => output::say(&format!("{exited}; stopping the demo")),
    }
    stop(&mut children);
    Ok(())
}

/// Shuts every component down, the proxy first so that no request meets a stopped agent.
fn stop(children: &mut [Component]) {
    for component in children.iter_mut().rev() {
        component.stop();
    }
}

/// Waits until the proxy reports ready (map loaded, members usable).
async fn wait_ready(children: &[Component], admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if let Some(component) = children.iter().find(|c| c.has_stopped()) {
            bail!(
                "{} stopped during start-up (its log says why)",
                component.name
            );
        }
        if Instant::now() > deadline {
            bail!("the proxy did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until some component exits, and says which and how.
async fn wait_any(children: &[Component]) -> String {
    loop {
        if let Some(component) = children.iter().find(|c| c.has_stopped()) {
            return format!("{} stopped", component.name);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guide printed once everything is ready: what runs where, and what to try. On
/// stdout, unprefixed, so that its commands can be copied as they are.
fn print_guide(proxy: u16, admin: u16, map: &Path, kept: bool) {
    let map_note = if kept {
        "(kept from an earlier run, with your edits; --reset-map writes the demo's own)"
    } else {
        "(edit it while the demo runs)"
    };
    println!(
        "
stickyroute demo is running: four apps (www1, www2, www3 on 127.0.0.2-4 with loadfactor 60,
www0 on 127.0.0.5 with 20), each behind a stickyroute agent, and the stickyroute proxy in front.
demo ready

  site:              http://127.0.0.1:{proxy}/     (log in to start a session; reload to see it stay)
  balancer-manager:  http://127.0.0.1:{admin}/balancer-manager
  route map:         {map} {map_note}

Try it with curl:
  curl -c jar -b jar http://127.0.0.1:{proxy}/login   # balanced; the answer sets SESSION and balanceid
  curl -c jar -b jar http://127.0.0.1:{proxy}/        # same backend, visit 2, 3, ...
  # 200 new sessions (no cookie jar) by backend: 60 60 60 20 as the loadfactors (exactly
  # on a fresh demo; sticky requests count too, so after other traffic it is close to that)
  for i in $(seq 200); do curl -s http://127.0.0.1:{proxy}/login; done | cut -d: -f1 | sort | uniq -c

Edit the route map while this runs (no restart): change a loadfactor, set status=drain on a
backend, rename a route, or delete a line; watch the 'member table swapped' lines below.
A restart keeps an edited map. Ctrl-C stops everything.
",
        map = map.display()
    );
}
