//! The real binaries, started as child processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A workspace binary, built by `cargo build --workspace` next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// A running child process whose stderr (the log) is collected; killed when dropped.
pub struct Process {
    name: String,
    /// Whether the child leads a process group of its own, killed whole when dropped.
    group: bool,
    child: Mutex<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread collecting stderr; it ends at end-of-file, when the process is gone.
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Process {
    /// Starts `binary` with `args` and no inherited environment variables but `extra_env`
    /// (so a developer's POD_IP or STICKYROUTE_* never leaks into a test).
    pub fn start(binary: &str, args: &[String], extra_env: &[(&str, &str)]) -> Self {
        Self::start_path(&self::binary(binary), args, extra_env)
    }

    /// Like [`Process::start`], for a program given by path.
    pub fn start_path(
        program: &std::path::Path,
        args: &[String],
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(program, args, extra_env, false)
    }

    /// Like [`Process::start_path`], in a process group of its own that is killed whole
    /// when this is dropped: for programs that start children of their own (chromedriver
    /// starts the browser), which would otherwise outlive the test.
    pub fn start_group(
        program: &std::path::Path,
        args: &[String],
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(program, args, extra_env, true)
    }

    fn spawn(
        program: &std::path::Path,
        args: &[String],
        extra_env: &[(&str, &str)],
        group: bool,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let binary = program.display().to_string();
        let mut command = Command::new(program);
        if group {
            command.process_group(0);
        }
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Self {
            name: binary,
            group,
            child: Mutex::new(child),
            log,
            reader: Mutex::new(Some(reader)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.lock().id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Log lines containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until this process's admin listener at `admin` answers `/readyz` with 200.
    pub async fn wait_ready(&self, admin: SocketAddr) {
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            let ready = crate::client::get(admin, "/readyz").try_send().await;
            if ready.is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready; log:\n{}",
                self.name,
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (without blocking the async runtime) until some log line satisfies `check`.
    pub async fn eventually_logs(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| check(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {what}; log:\n{}",
                self.name,
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(line) = self.log_lines_with(needle).into_iter().next() {
                return line;
            }
            if let Ok(Some(status)) = self.try_status() {
                panic!(
                    "{} exited with {status} before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}; log:\n{}",
                self.name,
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of `key=VALUE` in the first log line containing `needle` (text format).
    pub fn logged_addr(&self, needle: &str, key: &str, patience: Duration) -> SocketAddr {
        let line = self.wait_for_log(needle, patience);
        let value = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
        value
            .parse()
            .unwrap_or_else(|e| panic!("{key}={value}: {e}"))
    }

    pub fn try_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.lock().try_wait()
    }

    /// Sends a signal by name (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code; its log is complete then.
    pub fn wait_exit(&self, patience: Duration) -> Option<i32> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.try_status().expect("try_wait") {
                let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(reader) = reader {
                    let _ = reader.join();
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {patience:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut child = self.lock();
        if self.group {
            // The whole group: the child and everything it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The processes whose command line mentions `text` (a directory only they use).
pub fn processes_mentioning(text: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(text))
        })
        .collect()
}

/// The processes of process group `group` still alive (zombies aside), from /proc.
pub fn processes_in_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp ...; comm may hold spaces, so split after ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&group.to_string().as_str())
        })
        .collect()
}
