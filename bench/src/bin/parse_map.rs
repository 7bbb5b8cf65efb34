//! Parse and index a large route map, repeatedly, and report the median time.
//!
//! `cargo run --release -p stickyroute-bench --bin parse_map -- [ENTRIES] [ROUNDS]`
//! (defaults: 100000 entries, 21 rounds). The target is under 100 ms for 100,000 entries.

use anyhow::{Context, bail};
use routemap::RouteMap;
use std::fmt::Write as _;
use std::time::Instant;
use stickyroute_bench::{ms, summarize};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .map_or(Ok(100_000), |a| a.parse())
        .context("ENTRIES")?;
    let rounds: usize = args
        .next()
        .map_or(Ok(21), |a| a.parse())
        .context("ROUNDS")?;
    let text = generate(entries);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let map = RouteMap::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{:?}", &e[..1]))?;
        samples.push(start.elapsed());
        if map.len() != entries {
            bail!("parsed {} entries, expected {entries}", map.len());
        }
    }
    let summary = summarize(&mut samples).context("no rounds")?;
    println!(
        "parse+index {entries} entries ({:.1} MiB), {rounds} rounds: {summary}",
        text.len() as f64 / (1024.0 * 1024.0)
    );
    println!(
        "target: median under 100 ms -> {}",
        if ms(summary.median) < 100.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// A realistic mix: IPv4, IPv6 and pod-name keys, some attributes, comments.
fn generate(entries: usize) -> String {
    let mut text = String::with_capacity(entries * 40);
    text.push_str("# generated benchmark map\n");
    for i in 0..entries {
        let _ = match i % 4 {
            0 => write!(
                text,
                "10.{}.{}.{} www{i}",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ),
            1 => write!(
                text,
                "fd00::{:x}:{:x} r-{i} loadfactor={}",
                i >> 16,
                i & 0xffff,
                i % 100 + 1
            ),
            2 => write!(text, "web-{i}.web.prod.svc.cluster.local pod_{i} port=8080"),
            _ => write!(text, "app-{i}   node{i}   status=drain   # draining"),
        };
        text.push('\n');
    }
    text
}
