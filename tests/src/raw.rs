//! Raw sockets, for the robustness tests: a client that sends exactly the bytes a test
//! gives (malformed framing, smuggling shapes, silence, aborts) and reads exactly what comes
//! back, and a backend that records every byte it received, so a test can assert
//! byte-exactly what reached it, and answers as a script says (late bytes, stalls).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `request` on a fresh connection and reads until the peer closes or `patience`
/// passes; returns what arrived.
pub async fn exchange(target: SocketAddr, request: &[u8], patience: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(target).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    read_until_close(&mut stream, patience).await
}

/// Reads until end of file (or a reset), or until `patience` passes.
pub async fn read_until_close(stream: &mut TcpStream, patience: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + patience;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response: its head and a `Content-Length` body (or what arrived until the peer
/// closed or `patience` passed), as text.
pub async fn read_response(stream: &mut TcpStream, patience: Duration) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + patience;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= head_end + 4 + length {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the first response in `bytes`, if there is one.
pub fn status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()
}

/// Whether the peer closed `stream` within `patience` (end of file or a reset, with no
/// bytes or with some: either way the connection is gone).
pub async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One connection a [`RawBackend`] accepted: reads are recorded.
pub struct RawConn {
    stream: TcpStream,
    /// Read but not yet consumed by `read_head`/`read_body`.
    pending: Vec<u8>,
    record: Record,
}

impl RawConn {
    /// Reads through the next blank line; the head as text, or `None` if the peer closed.
    pub async fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                let head: Vec<u8> = self.pending.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads `n` body bytes; false if the peer closed first.
    pub async fn read_body(&mut self, n: usize) -> bool {
        while self.pending.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        self.pending.drain(..n);
        true
    }

    /// Reads through `marker` (e.g. the last chunk `0\r\n\r\n`); false if the peer closed.
    pub async fn read_through(&mut self, marker: &[u8]) -> bool {
        loop {
            if let Some(at) = find(&self.pending, marker) {
                self.pending.drain(..at + marker.len());
                return true;
            }
            if !self.fill().await {
                return false;
            }
        }
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                lock(&self.record).extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Waits until the peer closes the connection (recording what it still sends).
    pub async fn until_closed(&mut self) {
        while self.fill().await {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one connection received, shared with the task serving it.
type Record = Arc<Mutex<Vec<u8>>>;

/// A backend on its own 127.0.0.x address that runs `script` on every connection and
/// records, per connection, every byte it received.
pub struct RawBackend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start<F, Fut>(ip: &str, script: F) -> Self
    where
        F: Fn(RawConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        Self::start_on(SocketAddr::new(ip, 0), script).await
    }

    /// A member on `ip` that answers every request head with `200 ok` on a kept-alive
    /// connection, recording what it received (what the proxy forwarded, byte for byte).
    pub async fn answering_ok(ip: &str) -> Self {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        Self::start(ip, |mut conn| async move {
            while conn.read_head().await.is_some() {
                if !conn.write(OK).await {
                    return;
                }
            }
        })
        .await
    }

    /// Like [`RawBackend::start`], on exactly `addr`.
    pub async fn start_on<F, Fut>(addr: SocketAddr, script: F) -> Self
    where
        F: Fn(RawConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind raw backend");
        let addr = listener.local_addr().expect("local addr");
        let received: Arc<Mutex<Vec<Record>>> = Arc::default();
        let connections = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = Arc::new(Mutex::new(Vec::new()));
                lock(&connections).push(record.clone());
                tokio::spawn(script(RawConn {
                    stream,
                    pending: Vec::new(),
                    record,
                }));
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Answers every request head with `response` (bodies of requests are not read).
    pub async fn answering(ip: &str, response: &'static [u8]) -> Self {
        Self::start(ip, move |mut conn| async move {
            while conn.read_head().await.is_some() {
                if !conn.write(response).await {
                    return;
                }
            }
        })
        .await
    }

    /// A stand-in for an agent's admin listener on `addr`: every request gets a `/status`
    /// whose map hash is what `hash` gives at that moment.
    pub async fn agent_status<F>(addr: SocketAddr, hash: F) -> Self
    where
        F: Fn() -> String + Send + Sync + 'static,
    {
        let hash = Arc::new(hash);
        Self::start_on(addr, move |mut conn| {
            let hash = hash.clone();
            async move {
                while conn.read_head().await.is_some() {
                    let body = format!("{{\"map\":{{\"hash\":\"{}\",\"generation\":1}}}}", hash());
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if !conn.write(reply.as_bytes()).await {
                        return;
                    }
                }
            }
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.received).len()
    }

    /// Everything received on connection `i` (in accept order).
    pub fn received(&self, i: usize) -> Vec<u8> {
        lock(&self.received)
            .get(i)
            .map(|r| lock(r).clone())
            .unwrap_or_default()
    }

    /// Everything received on all connections, concatenated in accept order.
    pub fn all_received(&self) -> Vec<u8> {
        lock(&self.received)
            .iter()
            .flat_map(|r| lock(r).clone())
            .collect()
    }

    /// Waits until `n` connections were accepted, or `patience` passes.
    pub async fn wait_connections(&self, n: usize, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while self.connections() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}
