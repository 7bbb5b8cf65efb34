//! The `routemap` command as a pre-commit hook or CI job sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn routemap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_routemap"))
        .args(args)
        .output()
        .expect("run routemap")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_valid_maps_with_count_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", "10.16.4.4 www1 10.16.4.6 www2\n");
    let b = write(dir.path(), "b", "# only a comment\n");
    let out = routemap(&["check", &a, &b]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with(&format!("{a}: ok, 2 entries, hash ")),
        "{stdout}"
    );
    let hash = lines[0].rsplit(' ').next().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(
        lines[1].starts_with(&format!("{b}: ok, 0 entries, hash ")),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_as_file_line_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good", "10.0.0.1 www1\n");
    let bad = write(
        dir.path(),
        "bad",
        "10.0.0.1 www1\n10.0.0.2 www1\n\n10.0.0.3 www.3 loadfactor=0\n",
    );
    let out = routemap(&["check", &good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{bad}:2: duplicate route www1 (first on line 1)\n\
             {bad}:4: route \"www.3\" is not valid: route contains '.'; only letters, digits, '_' and '-' are allowed\n\
             {bad}:4: loadfactor=\"0\" is not valid: a whole number from 1 to 100\n"
        )
    );
    assert!(text(&out.stdout).starts_with(&format!("{good}: ok, 1 entries")));
}

#[test]
fn check_refuses_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty", "");
    let out = routemap(&["check", &empty]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the map is empty (0 bytes)"));
}

#[test]
fn check_exits_2_on_unreadable_files_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let invalid = write(dir.path(), "bad", "a www.1\n");
    let out = routemap(&["check", &invalid, missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
    assert_eq!(routemap(&["check"]).status.code(), Some(2));
    assert_eq!(routemap(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn lookup_prints_the_route_or_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(
        dir.path(),
        "m",
        "10.16.4.4 www1\nweb-0 www0 loadfactor=20\n",
    );
    let out = routemap(&["lookup", &map, "10.16.4.4"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "www1\n");
    let out = routemap(&["lookup", &map, "WEB-0"]);
    assert_eq!(text(&out.stdout), "www0\n");
    let out = routemap(&["lookup", &map, "10.16.4.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        routemap(&["lookup", &map, "bad_key"]).status.code(),
        Some(2)
    );
    let bad = write(dir.path(), "bad", "a\n");
    assert_eq!(routemap(&["lookup", &bad, "a"]).status.code(), Some(2));
}

#[test]
fn help_is_available_on_every_command() {
    for args in [&["--help"][..], &["check", "--help"], &["lookup", "--help"]] {
        let out = routemap(args);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Usage"));
    }
}

#[test]
fn check_refuses_devices_and_fifos_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let started = std::time::Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_routemap"))
            .args(["check", path])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(5) {
                let _ = child.kill();
                panic!("routemap check {path} did not finish");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{path}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{path}: {stderr}");
    }
}

#[test]
fn check_lists_a_bounded_number_of_errors_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let line = "10.0.0.1 not.a.route\n";
    let bad = write(dir.path(), "bad", &line.repeat(50_000));
    let out = routemap(&["check", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.lines().count() <= 21,
        "{} lines",
        stderr.lines().count()
    );
    assert!(stderr.contains("more error"), "{stderr}");
}
