//! The merged log. The proxy and the four agents write to one terminal; every line has the
//! component's name in front (`proxy      | ...`, `agent www1 | ...`), so that five logs of
//! the same programs with the same fields can be told apart.

use std::io::Write;

/// The widest name ("agent www1"), so that the bars line up.
const WIDTH: usize = 10;

/// Writes one line of `name`'s output, prefix and newline included, in one write to the
/// locked stream: lines of different components never mix mid-line. The write blocks (the
/// demo is not a server whose latency matters, and a terminal or file takes it at once);
/// an error (the reader went away) loses the line and nothing else.
pub fn line(name: &str, text: &[u8]) {
    let mut out = Vec::with_capacity(WIDTH + 3 + text.len() + 1);
    out.extend_from_slice(format!("{name:<WIDTH$} | ").as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&out);
}

/// A line of the demo's own, on stderr with the children's log lines.
pub fn say(message: &str) {
    for text in message.lines() {
        line("demo", text.as_bytes());
    }
}
