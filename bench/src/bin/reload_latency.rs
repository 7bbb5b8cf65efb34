//! Time from a map file change to the new snapshot being visible through `Live`, for an
//! editor-style rename and for the kubelet's ConfigMap volume update.
//!
//! `cargo run --release -p stickyroute-bench --bin reload_latency -- [CHANGES]` (default 40
//! per pattern). The result is dominated by the debounce (150 ms) plus the settle check
//! (30 ms), which are what keep torn and intermediate states from being published.

use anyhow::Context;
use routemap::source::{FileSource, spawn};
use std::time::{Duration, Instant};
use stickyroute_bench::summarize;
use stickyroute_tests::kubelet::ConfigMapDir;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let changes: usize = std::env::args()
        .nth(1)
        .map_or(Ok(40), |a| a.parse())
        .context("CHANGES")?;
    let dir = tempfile::tempdir()?;

    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 v0\n")?;
    let editor = measure(&path, changes, |i| {
        let tmp = dir.path().join(".routemap.tmp");
        std::fs::write(&tmp, format!("10.0.0.1 v{i}\n"))?;
        std::fs::rename(&tmp, &path)
    })
    .await?;
    println!("editor rename:       {changes} changes, {editor}");

    let mut volume = ConfigMapDir::create(&dir.path().join("volume"), "routemap", "10.0.0.1 v0\n")?;
    let visible = volume.path();
    let kubelet = measure(&visible, changes, |i| {
        volume.update(&format!("10.0.0.1 v{i}\n"))
    })
    .await?;
    println!("kubelet atomic swap: {changes} changes, {kubelet}");
    Ok(())
}

async fn measure(
    path: &std::path::Path,
    changes: usize,
    mut change: impl FnMut(usize) -> std::io::Result<()>,
) -> anyhow::Result<stickyroute_bench::Summary> {
    let (live, _task) = spawn(FileSource::new(path));
    tokio::time::timeout(Duration::from_secs(10), live.ready()).await?;
    let mut updates = live.subscribe();
    let mut samples = Vec::with_capacity(changes);
    for i in 1..=changes {
        updates.borrow_and_update();
        let start = Instant::now();
        change(i)?;
        tokio::time::timeout(Duration::from_secs(10), updates.changed()).await??;
        samples.push(start.elapsed());
        let route = live
            .load()
            .context("loaded")?
            .by_key(&"10.0.0.1".parse()?)
            .context("key")?
            .route
            .to_string();
        anyhow::ensure!(route == format!("v{i}"), "saw {route} after change {i}");
        // Let the source go idle, so each sample starts from rest like a real edit.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summarize(&mut samples).context("no samples")
}
