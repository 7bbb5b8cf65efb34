//! `stickyroute-demo`: the seed's setup on loopback, in one command. Four demo apps on
//! 127.0.0.2 … 127.0.0.5, each behind a real `stickyroute-agent` (the same arguments apart
//! from listen and upstream), the real `stickyroute-proxy` in front, and a route map file
//! that both follow live. Runs until Ctrl-C.
#![forbid(unsafe_code)]

mod app;

use anyhow::{Context, bail};
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The demo servers: route, address, loadfactor (the seed's four, moved to loopback).
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.port_base;
    let (proxy_port, admin_port, agent_port, agent_admin_port, app_port) =
        (base, base + 1, base + 2, base + 3, base + 4);
    let bin = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_owned();
    for name in ["stickyroute-agent", "stickyroute-proxy"] {
        if !bin.join(name).exists() {
            bail!(
                "{} is missing: build everything first with `cargo build --release`",
                bin.join(name).display()
            );
        }
    }
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
    std::fs::write(&map, text).with_context(|| format!("write {}", map.display()))?;

    let mut children = Vec::new();
    for (route, ip, _) in SERVERS {
        let ip = IpAddr::from(ip);
        app::serve(route, SocketAddr::new(ip, app_port)).await?;
        children.push(spawn(
            &bin.join("stickyroute-agent"),
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
    children.push(spawn(
        &bin.join("stickyroute-proxy"),
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
    wait_ready(
        &mut children,
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
    )
    .await?;
    print_guide(proxy_port, admin_port, &map);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("\nstopping the demo"),
        _ = term.recv() => eprintln!("stopping the demo"),
        exited = wait_any(&mut children) => eprintln!("a demo process exited ({exited}); stopping the demo"),
    }
    for child in &mut children {
        let _ = child.kill().await;
    }
    Ok(())
}

fn spawn(program: &Path, args: &[String]) -> anyhow::Result<Child> {
    Command::new(program)
        .args(args)
        .env("STICKYROUTE_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", program.display()))
}

/// Waits until the proxy reports ready (map loaded, members usable).
async fn wait_ready(children: &mut [Child], admin: SocketAddr) -> anyhow::Result<()> {
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
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a demo process exited during start-up ({status}); is another demo running on these ports?"
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the proxy did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_any(children: &mut [Child]) -> String {
    loop {
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return status.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_guide(proxy: u16, admin: u16, map: &Path) {
    println!(
        "
stickyroute demo is running: four apps (www1, www2, www3 on 127.0.0.2-4 with loadfactor 60,
www0 on 127.0.0.5 with 20), each behind a stickyroute-agent, and stickyroute-proxy in front.
demo ready

  site:              http://127.0.0.1:{proxy}/     (log in to start a session; reload to see it stay)
  balancer-manager:  http://127.0.0.1:{admin}/balancer-manager
  route map:         {map}

Try it with curl:
  curl -c jar -b jar http://127.0.0.1:{proxy}/login   # balanced; the answer sets SESSION and balanceid
  curl -c jar -b jar http://127.0.0.1:{proxy}/        # same backend, visit 2, 3, ...
  for i in $(seq 20); do curl -s http://127.0.0.1:{proxy}/login; done | sort | uniq -c

Edit the route map while this runs (no restart): change a loadfactor, set status=drain on a
backend, rename a route, or delete a line; watch the 'member table swapped' lines below.
Ctrl-C stops everything.
",
        map = map.display()
    );
}
