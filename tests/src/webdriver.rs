//! Just enough of the W3C WebDriver protocol to drive headless Chromium (Debian's
//! `chromium` and `chromium-driver`) through chromedriver: open a page, click, read the
//! page, take a screenshot.

use crate::client::{Reply, call};
use crate::process::Process;
use http::Method;
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the browser and driver stop when it is dropped, on every path (a
/// failed assertion included): the session is ended, then chromedriver's whole process
/// group, the browser's processes with it, is killed.
pub struct Browser {
    driver: SocketAddr,
    session: String,
    process: Process,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Drop cannot await: the session is ended with a plain blocking request.
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.driver
        );
        if let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.driver, Duration::from_secs(2))
        {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(request.as_bytes());
            // Chromedriver answers `Connection: close` but keeps the connection open, so
            // the answer ends where its Content-Length says, not at end of file.
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            while !complete(&answer) {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

/// Whether `answer` holds a whole HTTP response with a Content-Length body.
fn complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with no background networking (the
    /// build machines have no internet).
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: `apt-get install chromium chromium-driver` (scripts/test.sh does it)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // The profile is also the browser's home: everything it starts (its crash
        // handler too, which leaves the process group) names it on its command line.
        let profile = tempfile::tempdir().expect("profile dir");
        let home = profile.path().display().to_string();
        let process = Process::start_group(
            Path::new(CHROMEDRIVER),
            &[format!("--port={port}")],
            &[("HOME", &home)],
        );
        let driver = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(driver, Method::GET, "/status")
            .try_send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start; log:\n{}",
                process.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // No crash reporter: its handler starts a session of its own, outside the
            // process group that is killed at the end.
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let reply = post(driver, "/session", &capabilities).await;
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_owned();
        Browser {
            driver,
            session,
            process,
            _profile: profile,
        }
    }

    /// The process group of the driver and the browser it started.
    pub fn process_group(&self) -> u32 {
        self.process.pid()
    }

    /// The browser's profile and home directory.
    pub fn profile(&self) -> std::path::PathBuf {
        self._profile.path().to_owned()
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let mut request =
            call(self.driver, method, &path).header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let reply: Reply = request.send().await;
        let value = reply.json();
        assert!(reply.status.is_success(), "webdriver {path}: {value}");
        value["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The WebDriver id of the element matching a CSS selector.
    async fn find(&self, css: &str) -> String {
        let element = self
            .command(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        element[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {element}"))
            .to_owned()
    }

    /// Clicks the element matching a CSS selector.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.command(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The text of the element matching a CSS selector.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.command(Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn current_url(&self) -> String {
        self.command(Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Resizes the browser window (CSS pixels).
    pub async fn set_window(&self, width: u32, height: u32) {
        self.command(
            Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The element's box on the page: `(x, y, width, height)` in CSS pixels.
    pub async fn rect(&self, css: &str) -> (f64, f64, f64, f64) {
        let id = self.find(css).await;
        let r = self
            .command(Method::GET, &format!("/element/{id}/rect"), None)
            .await;
        let n = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        (n("x"), n("y"), n("width"), n("height"))
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let encoded = self.command(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("base64 screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

async fn post(driver: SocketAddr, path: &str, body: &Value) -> Value {
    call(driver, Method::POST, path)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .json()
}
