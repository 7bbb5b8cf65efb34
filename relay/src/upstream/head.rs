//! The heads of an HTTP/1.1 exchange with an upstream: the request head, written once per
//! request (and written again as-is when a request goes to a second connection), and the
//! response head, parsed with `httparse` straight into the `http` types the server side
//! answers with, header values sharing the bytes they were read into.

use crate::headers::list_items;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// Most header fields in one response head.
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Largest response head, in bytes.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` (already among the headers): the bytes as they are.
    Length,
    /// `Transfer-Encoding: chunked` (added here): a body of unknown length.
    Chunked,
}

/// A request head ready to be written to any upstream.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub bytes: Bytes,
    pub framing: RequestFraming,
    /// Whether the request may be sent a second time when a reused connection turned out
    /// to be closed before any answer came (RFC 9110 §9.2.2: idempotent, and no body).
    pub replayable: bool,
    /// `HEAD` requests get a response head without a body, whatever it says.
    pub head_method: bool,
}

impl RequestHead {
    /// `headers` must be free of hop-by-hop fields (`Transfer-Encoding` included); the
    /// framing header is added from `has_body` and any `Content-Length` present.
    pub fn encode(
        method: &Method,
        path: &PathAndQuery,
        headers: &HeaderMap,
        has_body: bool,
    ) -> Self {
        let framing = match (has_body, headers.contains_key(header::CONTENT_LENGTH)) {
            (false, _) => RequestFraming::Empty,
            (true, true) => RequestFraming::Length,
            (true, false) => RequestFraming::Chunked,
        };
        let size = method.as_str().len()
            + path.as_str().len()
            + 64
            + headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum::<usize>();
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(path.as_str().as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        if framing == RequestFraming::Chunked {
            out.put_slice(b"transfer-encoding: chunked\r\n");
        }
        out.put_slice(b"\r\n");
        Self {
            bytes: out.freeze(),
            framing,
            replayable: !has_body && is_idempotent(method),
            head_method: method == Method::HEAD,
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (which then cannot be reused).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// A reason phrase other than the standard one, kept for the client.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("invalid response head: {0}")]
    Syntax(httparse::Error),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("more than {MAX_RESPONSE_HEADERS} response header fields")]
    TooManyHeaders,
    #[error("invalid response status {0}")]
    Status(u16),
    #[error("invalid response header {0:?}")]
    Header(String),
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
}

/// Parses the response head at the start of `buf`. `Ok(None)`: more bytes are needed.
/// On success the head's bytes are taken out of `buf`; what follows (body bytes) stays.
pub fn parse_response(
    buf: &mut BytesMut,
    head_method: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let Some(len) = head_len(&buf[..buf.len().min(MAX_RESPONSE_HEAD)]) else {
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(HeadError::TooLarge);
        }
        return Ok(None);
    };
    // Split off first, so that the header values can share the head's bytes.
    let head = buf.split_to(len).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(parsed_len)) if parsed_len == len => {}
        Ok(_) => return Err(HeadError::Syntax(httparse::Error::NewLine)),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(error) => return Err(HeadError::Syntax(error)),
    }
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(head.slice_ref(r.as_bytes())).ok());
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Header(field.name.to_owned()))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| HeadError::Header(name.as_str().to_owned()))?;
        headers.append(name, value);
    }
    let framing = framing(status, head_method, &mut headers)?;
    let keep_alive = keeps_alive(version, &headers)
        && framing != ResponseFraming::UntilClose
        && !(framing == ResponseFraming::Empty && announces_body(&headers));
    Ok(Some(ResponseHead {
        status,
        headers,
        reason,
        framing,
        keep_alive,
    }))
}

/// The length of the head at the start of `buf` (through the empty line that ends it,
/// `CRLF` or a bare `LF` as RFC 9112 §2.2 lets recipients accept), if it is all there.
fn head_len(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + at;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

/// RFC 9112 §6.3. A `Content-Length` next to `Transfer-Encoding` is removed (the latter
/// wins), so the client is never told a length the body does not have.
fn framing(
    status: StatusCode,
    head_method: bool,
    headers: &mut HeaderMap,
) -> Result<ResponseFraming, HeadError> {
    if head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(ResponseFraming::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return Ok(
            match list_items(headers, header::TRANSFER_ENCODING).last() {
                Some(coding) if coding.eq_ignore_ascii_case("chunked") => ResponseFraming::Chunked,
                _ => ResponseFraming::UntilClose,
            },
        );
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().unwrap_or_default();
        // `Content-Length: 5, 5` and repeated equal fields are one length; others are not.
        for item in text.split(',') {
            let item = item.trim();
            let parsed = (!item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
                .then(|| item.parse::<u64>().ok())
                .flatten();
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(HeadError::ContentLength(text.to_owned())),
            }
        }
    }
    Ok(length.map_or(ResponseFraming::UntilClose, ResponseFraming::Length))
}

/// Whether a head that carries no body (an answer to `HEAD`, a `204`, a `304`) still
/// announces one: a length other than 0, or a transfer coding. Such an answer is legal,
/// but a member that means it may send the body anyway, and those bytes would be taken for
/// the next request's answer; its connection is therefore not reused.
fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|b| (b'1'..=b'9').contains(b)))
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut tokens = list_items(headers, header::CONNECTION);
    if version == Version::HTTP_10 {
        tokens.any(|t| t.eq_ignore_ascii_case("keep-alive"))
    } else {
        !tokens.any(|t| t.eq_ignore_ascii_case("close"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(text), false)
    }

    fn head(text: &str) -> ResponseHead {
        match parse(text) {
            Ok(Some(head)) => head,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn encodes_the_request_line_headers_and_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let path = PathAndQuery::from_static("/cart?id=7");
        let get = RequestHead::encode(&Method::GET, &path, &headers, false);
        assert_eq!(
            get.bytes,
            "GET /cart?id=7 HTTP/1.1\r\nhost: shop.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        assert!(get.replayable);
        let post = RequestHead::encode(&Method::POST, &path, &headers, true);
        assert_eq!(post.framing, RequestFraming::Chunked);
        assert!(post.bytes.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
        assert!(!post.replayable);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let sized = RequestHead::encode(&Method::PUT, &path, &headers, true);
        assert_eq!(sized.framing, RequestFraming::Length);
        assert!(!sized.bytes.windows(17).any(|w| w == b"transfer-encoding"));
        assert!(!RequestHead::encode(&Method::POST, &path, &headers, false).replayable);
    }

    #[test]
    fn parses_a_response_and_leaves_the_body_bytes() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
        );
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, ResponseFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(head.reason.is_none());
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn accepts_bare_line_feeds() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\nContent-Length: 2\n\nok");
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.framing, ResponseFraming::Length(2));
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn waits_for_a_whole_head_and_refuses_an_endless_one() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(parse(&endless).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n"
            )
            .framing,
            ResponseFraming::Chunked
        );
        let t = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert!(!t.headers.contains_key(header::CONTENT_LENGTH));
        let gzip = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(gzip.framing, ResponseFraming::UntilClose);
        assert!(!gzip.keep_alive);
        assert_eq!(
            head("HTTP/1.1 200 OK\r\n\r\n").framing,
            ResponseFraming::UntilClose
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n").framing,
            ResponseFraming::Empty
        );
        assert_eq!(
            head("HTTP/1.1 304 Not Modified\r\n\r\n").framing,
            ResponseFraming::Empty
        );
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
        let to_head = parse_response(&mut buf, true).unwrap().unwrap();
        assert_eq!(to_head.framing, ResponseFraming::Empty);
        assert!(!to_head.keep_alive, "announced a body it does not carry");
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(parse_response(&mut buf, true).unwrap().unwrap().keep_alive);
        assert!(
            head("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n").keep_alive,
            "a 304 without a length is reused"
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n").framing,
            ResponseFraming::Length(4)
        );
        for bad in ["4, 5", "-1", "+4", "", "0x10", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(parse(&text), Err(HeadError::ContentLength(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn keeps_an_unusual_reason_phrase_and_refuses_garbage() {
        let head = head("HTTP/1.1 404 Gone Fishing\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.reason.unwrap().as_bytes(), b"Gone Fishing");
        assert!(matches!(
            parse("HTTP/1.1 20 OK\r\n\r\n"),
            Err(HeadError::Syntax(_))
        ));
        assert!(matches!(
            parse("SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HeadError::Syntax(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nfolded: a\r\n b\r\n\r\n"),
            Err(HeadError::Syntax(_))
        ));
    }

    proptest! {
        /// Whatever the split point, a head is either incomplete or parsed the same, and
        /// the bytes after it are left in the buffer untouched.
        #[test]
        fn any_split_parses_alike(
            values in proptest::collection::vec("[ -~]{0,20}", 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..400,
        ) {
            let mut text = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n", body.len());
            for (i, value) in values.iter().enumerate() {
                text.push_str(&format!("x-{i}: {}\r\n", value.trim()));
            }
            text.push_str("\r\n");
            let head_len = text.len();
            let mut whole = BytesMut::from(text.as_bytes());
            whole.extend_from_slice(&body);
            let cut = cut.min(whole.len());
            let mut partial = BytesMut::from(&whole[..cut]);
            let early = parse_response(&mut partial, false).unwrap();
            prop_assert_eq!(early.is_some(), cut >= head_len);
            let parsed = parse_response(&mut whole, false).unwrap().unwrap();
            prop_assert_eq!(parsed.framing, ResponseFraming::Length(body.len() as u64));
            for (i, value) in values.iter().enumerate() {
                let got = parsed.headers.get(format!("x-{i}")).unwrap();
                prop_assert_eq!(got.as_bytes(), value.trim().as_bytes());
            }
            prop_assert_eq!(&whole[..], &body[..]);
        }
    }
}
