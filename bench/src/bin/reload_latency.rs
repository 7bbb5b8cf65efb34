//! Time from a map change to the new snapshot being visible through `Live`: for an
//! editor-style rename of the file, for the kubelet's ConfigMap volume update, and for a
//! ConfigMap watched through the API (an in-process API server speaking the real
//! list/watch protocol, on loopback).
//!
//! `cargo run --release -p stickyroute-bench --bin reload_latency -- [CHANGES]` (default 40
//! per pattern). The file results are dominated by the debounce (150 ms) plus the settle
//! check (30 ms), which are what keep torn and intermediate states from being published.
//! The API source needs neither: a watch event carries one whole version of the object.
//! (The kubelet's own delay before it rewrites a mounted volume, up to about two minutes,
//! comes on top of the file numbers in a cluster and cannot be measured here.)

use anyhow::Context;
use routemap::source::{ConfigMapRef, ConfigMapSource, FileSource, Source, spawn};
use std::time::{Duration, Instant};
use stickyroute_bench::summarize;
use stickyroute_tests::kube_api::ApiServer;
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
    let editor = measure(FileSource::new(&path), changes, |i| {
        let tmp = dir.path().join(".routemap.tmp");
        std::fs::write(&tmp, format!("10.0.0.1 v{i}\n"))?;
        std::fs::rename(&tmp, &path)
    })
    .await?;
    println!("editor rename:       {changes} changes, {editor}");

    let mut volume = ConfigMapDir::create(&dir.path().join("volume"), "routemap", "10.0.0.1 v0\n")?;
    let visible = volume.path();
    let kubelet = measure(FileSource::new(&visible), changes, |i| {
        volume.update(&format!("10.0.0.1 v{i}\n"))
    })
    .await?;
    println!("kubelet atomic swap: {changes} changes, {kubelet}");

    let api = ApiServer::start().await;
    api.apply("shop", "routemap", &[("routemap", "10.0.0.1 v0\n")]);
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{}", api.addr()).parse()?))?;
    let target = ConfigMapRef::parse("shop/routemap", "routemap").map_err(anyhow::Error::msg)?;
    let watched = measure(ConfigMapSource::with_client(client, target), changes, |i| {
        api.apply(
            "shop",
            "routemap",
            &[("routemap", &format!("10.0.0.1 v{i}\n"))],
        );
        Ok(())
    })
    .await?;
    println!("ConfigMap via API:   {changes} changes, {watched}");
    Ok(())
}

async fn measure(
    source: impl Source,
    changes: usize,
    mut change: impl FnMut(usize) -> std::io::Result<()>,
) -> anyhow::Result<stickyroute_bench::Summary> {
    let (live, _task) = spawn(source);
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
