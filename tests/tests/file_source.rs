//! The file source against every way a map file really gets updated, with real files and
//! real inotify events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemap::source::{FileSource, FileWatchOptions, SourceTask, spawn};
use routemap::{Live, LoadError, RouteMap};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stickyroute_tests::kubelet::ConfigMapDir;
use stickyroute_tests::{PATIENCE, eventually};

fn start(path: &Path) -> (Live, SourceTask) {
    spawn(FileSource::new(path))
}

fn route_of(live: &Live, key: &str) -> Option<String> {
    let snapshot = live.load()?;
    Some(snapshot.by_key(&key.parse().ok()?)?.route.to_string())
}

async fn wait_route(live: &Live, key: &str, route: &str) {
    eventually(&format!("{key} -> {route}"), PATIENCE, || {
        (route_of(live, key).as_deref() == Some(route)).then_some(())
    })
    .await;
}

/// Records every snapshot published, in order.
fn record(live: &Live) -> Arc<Mutex<Vec<(u64, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (live, sink) = (live.clone(), seen.clone());
    let mut changes = live.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            if let Some(snapshot) = live.load() {
                sink.lock()
                    .unwrap()
                    .push((snapshot.generation(), snapshot.hash().to_owned()));
            }
        }
    });
    seen
}

fn map_text(route: &str, extra: usize) -> String {
    let mut text = format!("10.0.0.1 {route}\n");
    for i in 0..extra {
        text.push_str(&format!("10.1.{}.{} r{i}\n", i / 250, i % 250 + 1));
    }
    text
}

#[tokio::test]
async fn follows_in_place_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    std::fs::write(&path, "10.0.0.1 www2\n").unwrap();
    wait_route(&live, "10.0.0.1", "www2").await;
    assert_eq!(live.status().generation, 2);
}

#[tokio::test]
async fn follows_an_editors_write_to_temp_and_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    for (i, route) in ["www2", "www3"].iter().enumerate() {
        let tmp = dir.path().join(format!(".routemap.swp{i}"));
        std::fs::write(&tmp, format!("10.0.0.1 {route}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        wait_route(&live, "10.0.0.1", route).await;
    }
}

#[tokio::test]
async fn keeps_the_map_while_the_file_is_deleted_and_takes_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    std::fs::remove_file(&path).unwrap();
    eventually("not-found error in status", PATIENCE, || {
        let error = live.status().last_error?;
        error.message.contains("not found").then_some(())
    })
    .await;
    assert_eq!(
        route_of(&live, "10.0.0.1").as_deref(),
        Some("www1"),
        "last good map kept"
    );
    std::fs::write(&path, "10.0.0.1 www9\n").unwrap();
    wait_route(&live, "10.0.0.1", "www9").await;
    assert!(live.status().last_error.is_none());
}

#[tokio::test]
async fn is_not_ready_until_a_missing_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    let (live, _task) = start(&path);
    eventually("a not-found error", PATIENCE, || live.status().last_error).await;
    assert!(!live.is_ready());
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    tokio::time::timeout(PATIENCE, live.ready())
        .await
        .expect("ready once the file exists");
    assert_eq!(route_of(&live, "10.0.0.1").as_deref(), Some("www1"));
}

#[tokio::test]
async fn waits_for_a_directory_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later").join("routemap");
    // Without a watch the file is read every poll interval (2 s at most): a short one
    // finds the new directory in a fraction of that, instead of waiting out the 2 s.
    let options = FileWatchOptions {
        poll_interval: Duration::from_millis(200),
        ..FileWatchOptions::default()
    };
    let (live, _task) = spawn(FileSource::new(&path).with_options(options));
    eventually("a not-found error", PATIENCE, || live.status().last_error).await;
    let later = dir.path().join("later");
    std::fs::create_dir(&later).unwrap();
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    wait_route(&live, "10.0.0.1", "www1").await;
    // Once the directory exists it is watched (the short poll would see the edit below
    // without a watch, and so would the 2 s one within the patience: the watch itself is
    // what shows it), and later edits are seen too.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&later).unwrap());
    eventually("an inotify watch on the new directory", PATIENCE, || {
        inotify_watched_inodes().contains(&inode).then_some(())
    })
    .await;
    std::fs::write(&path, "10.0.0.1 www2\n").unwrap();
    wait_route(&live, "10.0.0.1", "www2").await;
}

/// The inodes this process has inotify watches on, from `/proc/self/fdinfo` (each watch
/// is a line `inotify wd:… ino:<hex> sdev:…` under its inotify descriptor).
fn inotify_watched_inodes() -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter(|line| line.starts_with("inotify "))
                .filter_map(|line| {
                    let hex = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("ino:"))?;
                    u64::from_str_radix(hex, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn follows_the_kubelets_configmap_volume_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("routemap-volume");
    let mut volume = ConfigMapDir::create(&mount, "routemap", "10.0.0.1 www1\n").unwrap();
    let visible = volume.path();
    let link_before = std::fs::symlink_metadata(&visible).unwrap();
    let (live, _task) = start(&visible);
    wait_route(&live, "10.0.0.1", "www1").await;
    for (i, route) in ["www2", "www3", "www4"].iter().enumerate() {
        volume.update(&format!("10.0.0.1 {route}\n")).unwrap();
        wait_route(&live, "10.0.0.1", route).await;
        assert_eq!(live.status().generation, i as u64 + 2);
    }
    let link_after = std::fs::symlink_metadata(&visible).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&link_before),
        std::os::unix::fs::MetadataExt::ino(&link_after),
        "the replay must never touch the visible file, like the kubelet"
    );
}

#[tokio::test]
async fn a_burst_of_rewrites_ends_on_the_last_content_and_never_publishes_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, map_text("v0", 500)).unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "v0").await;
    let seen = record(&live);
    let mut versions = HashSet::new();
    versions.insert(
        RouteMap::parse(map_text("v0", 500).as_bytes())
            .unwrap()
            .hash()
            .to_owned(),
    );
    for i in 1..=20 {
        let text = map_text(&format!("v{i}"), 500);
        versions.insert(RouteMap::parse(text.as_bytes()).unwrap().hash().to_owned());
        if i % 2 == 0 {
            std::fs::write(&path, &text).unwrap();
        } else {
            let tmp = dir.path().join("tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_route(&live, "10.0.0.1", "v20").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (generation, hash) in &seen {
        assert!(
            versions.contains(hash),
            "generation {generation} published a state that was never written whole"
        );
    }
    assert_eq!(route_of(&live, "10.0.0.1").as_deref(), Some("v20"));
    assert!(
        live.status().last_error.is_none(),
        "no invalid state was read"
    );
}

#[tokio::test]
async fn a_writer_pausing_mid_file_never_gets_a_torn_map_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, map_text("v0", 40)).unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "v0").await;
    let seen = record(&live);
    let mut whole = HashSet::new();
    for i in 1..=8 {
        let text = map_text(&format!("v{i}"), 40);
        whole.insert(RouteMap::parse(text.as_bytes()).unwrap().hash().to_owned());
        // Cut at a line boundary: the first half alone is a valid map, the worst case.
        let cut = text[..text.len() / 2].rfind('\n').unwrap() + 1;
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut file, &text.as_bytes()[..cut]).unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::io::Write::write_all(&mut file, &text.as_bytes()[cut..]).unwrap();
        drop(file);
        // Each whole version is published before the next write starts (which a fixed
        // 250 ms pause only allowed for), so no write is folded into the next.
        let hash = RouteMap::parse(text.as_bytes()).unwrap().hash().to_owned();
        eventually(&format!("v{i} published whole"), PATIENCE, || {
            (live.load()?.hash() == hash).then_some(())
        })
        .await;
    }
    wait_route(&live, "10.0.0.1", "v8").await;
    let seen = seen.lock().unwrap().clone();
    for (generation, hash) in &seen {
        assert!(
            whole.contains(hash),
            "generation {generation} is a torn half-written map"
        );
    }
    let snapshot = live.load().unwrap();
    assert_eq!(snapshot.len(), 41);
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_map_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n10.0.0.2 www2\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    let good = live.load().unwrap();
    std::fs::write(&path, "10.0.0.1 www1\n10.0.0.2 www1 loadfactor=0\n").unwrap();
    let error = eventually("the parse error in status", PATIENCE, || {
        live.status().last_error
    })
    .await;
    let origin = path.display().to_string();
    assert_eq!(
        error.details,
        [
            format!("{origin}:2: loadfactor=\"0\" is not valid: a whole number from 1 to 100"),
            format!("{origin}:2: duplicate route www1 (first on line 1)"),
        ]
    );
    assert!(
        Arc::ptr_eq(&good, &live.load().unwrap()),
        "the last good snapshot keeps serving"
    );
    assert!(live.status().reload_errors >= 1);
    std::fs::write(&path, "10.0.0.1 www1\n10.0.0.2 www3\n").unwrap();
    wait_route(&live, "10.0.0.2", "www3").await;
    let status = live.status();
    assert!(status.last_error.is_none());
    assert_eq!(status.generation, 2);
}

#[tokio::test]
async fn an_emptied_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    std::fs::write(&path, "").unwrap();
    let error = eventually("an error", PATIENCE, || live.status().last_error).await;
    assert!(
        error.message.contains("empty (0 bytes)"),
        "{}",
        error.message
    );
    assert_eq!(route_of(&live, "10.0.0.1").as_deref(), Some("www1"));
}

#[tokio::test]
async fn comment_only_edits_publish_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    std::fs::write(&path, "# reviewed by ops\n10.0.0.1    www1   # primary\n").unwrap();
    std::fs::write(path.with_extension("marker"), "").unwrap();
    std::fs::write(
        &path,
        "# reviewed by ops\n10.0.0.1    www1   # primary\n10.0.0.2 www2\n",
    )
    .unwrap();
    wait_route(&live, "10.0.0.2", "www2").await;
    assert_eq!(
        live.status().generation,
        2,
        "the comment-only version was not a new generation"
    );
}

#[tokio::test]
async fn polling_picks_up_changes_even_when_events_are_missed() {
    // A change made through a path the watch cannot see: the map is a symlink into another
    // directory, and the target is rewritten in place there. Only the poll notices.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real-map");
    std::fs::write(&target, "10.0.0.1 www1\n").unwrap();
    let path = dir.path().join("routemap");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let options = FileWatchOptions {
        poll_interval: Duration::from_millis(300),
        ..FileWatchOptions::default()
    };
    let (live, _task) = spawn(FileSource::new(&path).with_options(options));
    wait_route(&live, "10.0.0.1", "www1").await;
    std::fs::write(&target, "10.0.0.1 www2\n").unwrap();
    wait_route(&live, "10.0.0.1", "www2").await;
}

#[test]
fn load_errors_name_the_file() {
    let error = LoadError::NotFound {
        origin: "/etc/routemap/routemap".into(),
    };
    assert_eq!(error.to_string(), "/etc/routemap/routemap: not found");
}

/// Another program writing `file` (next to the map) every `every`, until aborted.
fn churn(file: std::path::PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0u64.. {
            let _ = std::fs::write(&file, i.to_string());
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test]
async fn a_busy_directory_does_not_starve_the_map() {
    // Another program writes a file next to the map far more often than the debounce.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    std::fs::write(&path, "10.0.0.1 www1\n").unwrap();
    let (live, _task) = start(&path);
    wait_route(&live, "10.0.0.1", "www1").await;
    let churn = churn(dir.path().join("access.log"), Duration::from_millis(20));
    std::fs::write(&path, "10.0.0.1 www2\n").unwrap();
    eventually(
        "the edit, despite the churn",
        Duration::from_secs(3),
        || (route_of(&live, "10.0.0.1").as_deref() == Some("www2")).then_some(()),
    )
    .await;
    churn.abort();
}

#[tokio::test]
async fn the_periodic_reread_runs_however_many_events_arrive() {
    // The map is a symlink into another directory (no event reaches the watch when the
    // target changes), while the watched directory itself is busy.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real-map");
    std::fs::write(&target, "10.0.0.1 www1\n").unwrap();
    let path = dir.path().join("routemap");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let options = FileWatchOptions {
        poll_interval: Duration::from_millis(300),
        ..FileWatchOptions::default()
    };
    let (live, _task) = spawn(FileSource::new(&path).with_options(options));
    wait_route(&live, "10.0.0.1", "www1").await;
    let churn = churn(dir.path().join("access.log"), Duration::from_millis(10));
    std::fs::write(&target, "10.0.0.1 www2\n").unwrap();
    eventually("the periodic re-read", Duration::from_secs(3), || {
        (route_of(&live, "10.0.0.1").as_deref() == Some("www2")).then_some(())
    })
    .await;
    churn.abort();
}

#[tokio::test]
async fn a_fifo_at_the_map_path_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let (live, _task) = start(&path);
    let error = eventually("the FIFO to be refused", Duration::from_secs(3), || {
        live.status().last_error.map(|e| e.message)
    })
    .await;
    assert!(error.contains("not a regular file"), "{error}");
    // Replaced by a real map, it is read as usual: the source was not stuck on the FIFO.
    let real = dir.path().join("routemap.new");
    std::fs::write(&real, "10.0.0.1 www1\n").unwrap();
    std::fs::rename(&real, &path).unwrap();
    wait_route(&live, "10.0.0.1", "www1").await;
}

#[tokio::test]
async fn a_megabyte_of_invalid_lines_keeps_a_bounded_error_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routemap");
    let line = "10.0.0.1 not.a.route\n";
    std::fs::write(&path, line.repeat((1 << 20) / line.len())).unwrap();
    let (live, _task) = start(&path);
    let error = eventually("the map to be refused", PATIENCE, || {
        live.status().last_error
    })
    .await;
    assert!(
        error.details.len() <= 21,
        "{} details kept",
        error.details.len()
    );
    assert!(
        error
            .details
            .last()
            .is_some_and(|l| l.contains("more error")),
        "the rest is counted: {:?}",
        error.details.last()
    );
    assert!(error.message.len() < 1024, "{}", error.message);
}
