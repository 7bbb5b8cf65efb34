//! The merged log. The proxy and the four agents are child processes writing to one
//! terminal; every line they write is copied to the demo's own stdout or stderr with the
//! component's name in front (`proxy      | ...`, `agent www1 | ...`), so that five logs
//! of the same binaries with the same fields can be told apart.

use std::io::Write;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// The widest name ("agent www1"), so that the bars line up.
const WIDTH: usize = 10;

/// Which of the demo's own streams a child's stream is copied to.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes one line of `name`'s output, prefix and newline included, in one write to the
/// locked stream: lines of different components never mix mid-line. The write blocks (the
/// demo is not a server whose latency matters, and a terminal or file takes it at once);
/// an error (the reader went away) loses the line and nothing else.
pub fn line(stream: Stream, name: &str, text: &[u8]) {
    let mut out = Vec::with_capacity(WIDTH + 3 + text.len() + 1);
    out.extend_from_slice(format!("{name:<WIDTH$} | ").as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(&out),
        Stream::Stderr => std::io::stderr().lock().write_all(&out),
    };
}

/// A line of the demo's own, on stderr with the children's log lines.
pub fn say(message: &str) {
    for text in message.lines() {
        line(Stream::Stderr, "demo", text.as_bytes());
    }
}

/// Copies `pipe` line by line, each with `name` in front, until it ends (the child exited).
/// Bytes are passed on as they are: a line that is not UTF-8 is still shown.
pub fn copy<R>(name: String, stream: Stream, pipe: R) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    line(stream, &name, text);
                }
            }
        }
    })
}
