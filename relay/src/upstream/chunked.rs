//! Decoding a chunked response body (RFC 9112 §7.1) as its bytes arrive, in whatever
//! pieces the network delivers them. Data is handed on without copying; the chunk framing
//! is dropped (the server side frames the body anew for its own client).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line (size and extensions).
const MAX_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 64;

#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// How much of the buffer's start was already searched for the end of a size line or
    /// of the trailers, so that bytes arriving a few at a time are not searched again: a
    /// member sending a 4 KiB size line one byte at a time must not cost 4 KiB of scanning
    /// per byte.
    scanned: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete; bytes after it were left in the buffer.
    End,
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("invalid or oversized trailer section")]
    Trailers,
}

impl ChunkedDecoder {
    /// Takes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(end) = line_end(buf, self.scanned)? else {
                        self.scanned = buf.len();
                        return Ok(Step::NeedMore);
                    };
                    self.scanned = 0;
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.state = match remaining - take as u64 {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Step::End);
                    }
                    let window = &buf[..buf.len().min(MAX_TRAILERS)];
                    // The end may straddle what was searched before: back up three bytes.
                    let from = self.scanned.saturating_sub(3).min(window.len());
                    let found = window[from..].windows(4).position(|w| w == b"\r\n\r\n");
                    let Some(end) = found.map(|at| from + at) else {
                        if buf.len() >= MAX_TRAILERS {
                            return Err(ChunkedError::Trailers);
                        }
                        self.scanned = window.len();
                        return Ok(Step::NeedMore);
                    };
                    self.scanned = 0;
                    let trailers = trailers(&buf[..end + 4])?;
                    buf.advance(end + 4);
                    self.state = State::Done;
                    return Ok(Step::Trailers(trailers));
                }
                State::Done => return Ok(Step::End),
            }
        }
    }
}

/// Where the first line in `buf` ends (the index of its CR), if it is complete; the
/// first `scanned` bytes are known to hold no line feed.
fn line_end(buf: &[u8], scanned: usize) -> Result<Option<usize>, ChunkedError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    let from = scanned.min(window.len());
    match window[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|at| from + at)
    {
        Some(lf) if lf > 0 && window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(ChunkedError::Size),
        None if buf.len() >= MAX_LINE => Err(ChunkedError::LineTooLong),
        None => Ok(None),
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]`; extensions are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkedError::Size);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = u64::from(char::from(b).to_digit(16).ok_or(ChunkedError::Size)?);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(ChunkedError::Size)?;
    }
    let rest = &line[digits..];
    let after_space = rest.iter().position(|&b| b != b' ' && b != b'\t');
    match after_space {
        None => Ok(size),
        Some(i)
            if rest[i] == b';'
                && rest
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80) =>
        {
            Ok(size)
        }
        Some(_) => Err(ChunkedError::Size),
    }
}

fn trailers(section: &[u8]) -> Result<HeaderMap, ChunkedError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(ChunkedError::Trailers),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ChunkedError::Trailers)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ChunkedError::Trailers)?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The data, the trailers and what was left in the buffer after the body.
    type Decoded = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `input` in pieces of the given sizes.
    fn run(input: &[u8], pieces: &[usize]) -> Result<Decoded, ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        let mut sizes = pieces.iter().copied().chain(std::iter::repeat(7));
        loop {
            match decoder.decode(&mut buf)? {
                Step::Data(bytes) => data.extend_from_slice(&bytes),
                Step::Trailers(map) => trailers = Some(map),
                Step::End => return Ok((data, trailers, buf.to_vec())),
                Step::NeedMore => {
                    assert!(fed < input.len(), "wanted more than the whole input");
                    let n = sizes.next().unwrap_or(1).max(1).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nExpires: never\r\n\r\nNEXT";
        let (data, trailers, rest) = run(input, &[input.len()]).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["expires"], "never");
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn refuses_broken_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"-5\r\n",
            b"5 5\r\n",
            b"1ffffffffffffffff\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(
                run(bad, &[100]).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_LINE));
        assert_eq!(
            run(long.as_bytes(), &[MAX_LINE + 10]).unwrap_err(),
            ChunkedError::LineTooLong
        );
    }

    proptest! {
        /// Any body, cut into any chunks, fed in any pieces, comes out whole, and the bytes
        /// after it stay in the buffer.
        #[test]
        fn any_chunking_and_any_split_decode_alike(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            chunk_sizes in proptest::collection::vec(1usize..100, 1..20),
            pieces in proptest::collection::vec(1usize..50, 0..40),
            with_ext in any::<bool>(),
        ) {
            let mut encoded = Vec::new();
            let mut rest = &body[..];
            for size in chunk_sizes.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*size).min(rest.len());
                let ext = if with_ext { ";a=b" } else { "" };
                encoded.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                encoded.extend_from_slice(&rest[..n]);
                encoded.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            encoded.extend_from_slice(b"0\r\n\r\nHTTP/1.1");
            let (data, trailers, left) = run(&encoded, &pieces).unwrap();
            prop_assert_eq!(data, body);
            prop_assert!(trailers.is_none());
            prop_assert!(b"HTTP/1.1".starts_with(&left));
        }
    }
}
