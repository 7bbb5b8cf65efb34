//! The PROXY protocol (HAProxy's, versions 1 and 2), read at the start of a connection
//! from a load balancer in front that speaks it (`--proxy-protocol`): the first bytes say
//! which client the balancer accepted, so the client address survives a cloud L4 balancer
//! that would otherwise hide it behind its own.
//!
//! Only the addresses are read. v2's TLVs are skipped, and families other than TCP over
//! IPv4/IPv6 (UNIX, UDP, `UNSPEC`), v1's `UNKNOWN` and v2's `LOCAL` (the balancer's own
//! health checks) leave the connection's addresses as they are. A header is at most
//! [`MAX_HEADER`] bytes, so a peer cannot make us buffer without end, and it must arrive
//! within the deadline the caller gives.
//!
//! Hand-written rather than a crate's: it is a few dozen lines over a format fixed since
//! 2014, and it must stop at the header's last byte without copying the rest.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// v2's fixed first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// The most v2 address and TLV bytes accepted after the 16-byte fixed part.
const V2_MAX_BODY: usize = 4096;
/// The longest header accepted.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;

/// What the PROXY header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedFrom {
    /// The original client and the address it connected to.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer speaking for itself (v1 `UNKNOWN`, v2 `LOCAL`), or a family other than
    /// TCP over IPv4/IPv6: the connection's own addresses stand.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header (a connection from this peer must start with one)")]
    NotProxy,
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("unsupported PROXY v2 version or command byte 0x{0:02x}")]
    V2Command(u8),
    #[error("PROXY v2 address block of {got} bytes is too short for its family ({need})")]
    V2ShortAddresses { got: usize, need: usize },
    #[error("PROXY v2 header of {0} bytes is over the limit of {V2_MAX_BODY}")]
    V2TooLong(usize),
    #[error("the connection closed before its PROXY header was complete")]
    Closed,
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Parses a header at the start of `buf`: `Ok(None)` while the bytes so far could still
/// become one, `Ok(Some((what, length)))` once complete, and an error as soon as they
/// cannot.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxiedFrom, usize)>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxiedFrom, usize)>, ProxyHeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let seen = buf.len().min(PREFIX.len());
    if buf[..seen] != PREFIX[..seen] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let Some(end) = buf.iter().take(V1_MAX).position(|b| *b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(ProxyHeaderError::V1Malformed("the line must end with CRLF"));
    };
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1Malformed("not ASCII"))?;
    let mut words = line.split(' ');
    let _proxy = words.next();
    let from = match words.next() {
        Some("UNKNOWN") => ProxiedFrom::Unknown,
        Some(family @ ("TCP4" | "TCP6")) => {
            let v6 = family == "TCP6";
            let mut field = |what| words.next().ok_or(ProxyHeaderError::V1Malformed(what));
            let source = v1_address(field("no source address")?, v6)?;
            let destination = v1_address(field("no destination address")?, v6)?;
            let source_port = v1_port(field("no source port")?)?;
            let destination_port = v1_port(field("no destination port")?)?;
            if words.next().is_some() {
                return Err(ProxyHeaderError::V1Malformed("more than six fields"));
            }
            ProxiedFrom::Client {
                source: SocketAddr::new(source, source_port),
                destination: SocketAddr::new(destination, destination_port),
            }
        }
        _ => {
            return Err(ProxyHeaderError::V1Malformed(
                "the protocol must be TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(Some((from, end + 1)))
}

fn v1_address(text: &str, v6: bool) -> Result<IpAddr, ProxyHeaderError> {
    let parsed = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    parsed.map_err(|_| ProxyHeaderError::V1Malformed("an address does not match its family"))
}

fn v1_port(text: &str) -> Result<u16, ProxyHeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits && !leading_zero => Ok(port),
        _ => Err(ProxyHeaderError::V1Malformed(
            "a port is not a number from 0 to 65535",
        )),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxiedFrom, usize)>, ProxyHeaderError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let Some(&[command, family, high, low]) = buf.get(12..16) else {
        // Decide on the version and command as soon as their byte is here.
        return match buf.get(12) {
            Some(&command) if command != 0x20 && command != 0x21 => {
                Err(ProxyHeaderError::V2Command(command))
            }
            _ => Ok(None),
        };
    };
    if command != 0x20 && command != 0x21 {
        return Err(ProxyHeaderError::V2Command(command));
    }
    let length = usize::from(u16::from_be_bytes([high, low]));
    if length > V2_MAX_BODY {
        return Err(ProxyHeaderError::V2TooLong(length));
    }
    let need = match family {
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    if length < need {
        return Err(ProxyHeaderError::V2ShortAddresses { got: length, need });
    }
    let Some(body) = buf.get(16..16 + length) else {
        return Ok(None);
    };
    let total = 16 + length;
    if command == 0x20 {
        return Ok(Some((ProxiedFrom::Unknown, total)));
    }
    let from = match (family, body) {
        (0x11, [s0, s1, s2, s3, d0, d1, d2, d3, sp0, sp1, dp0, dp1, ..]) => ProxiedFrom::Client {
            source: SocketAddr::new(
                Ipv4Addr::new(*s0, *s1, *s2, *s3).into(),
                u16::from_be_bytes([*sp0, *sp1]),
            ),
            destination: SocketAddr::new(
                Ipv4Addr::new(*d0, *d1, *d2, *d3).into(),
                u16::from_be_bytes([*dp0, *dp1]),
            ),
        },
        (0x21, body) => {
            let octets = |at: usize| -> [u8; 16] {
                let mut out = [0; 16];
                out.copy_from_slice(&body[at..at + 16]);
                out
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            ProxiedFrom::Client {
                source: SocketAddr::new(Ipv6Addr::from(octets(0)).into(), port(32)),
                destination: SocketAddr::new(Ipv6Addr::from(octets(16)).into(), port(34)),
            }
        }
        _ => ProxiedFrom::Unknown,
    };
    Ok(Some((from, total)))
}

/// Reads one header from `io` within `timeout`. The bytes read past it (the start of a
/// TLS handshake or of a request) are handed back in front of the rest of `io`.
pub async fn read_header<IO: AsyncRead + Unpin>(
    mut io: IO,
    timeout: Duration,
) -> Result<(ProxiedFrom, Rewound<IO>), ProxyHeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some((from, length)) = parse(&buf)? {
                let rest = buf.split_off(length);
                return Ok((from, rest));
            }
            // Never more than the longest header, plus what one read may bring past it.
            if buf.len() > MAX_HEADER {
                return Err(ProxyHeaderError::V2TooLong(buf.len()));
            }
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (from, rest) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))??;
    Ok((
        from,
        Rewound {
            front: rest,
            at: 0,
            inner: io,
        },
    ))
}

/// `inner` with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewound<IO> {
    front: Vec<u8>,
    at: usize,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(left) = this.front.get(this.at..).filter(|left| !left.is_empty()) {
            let n = left.len().min(out.remaining());
            out.put_slice(&left[..n]);
            this.at += n;
            if this.at == this.front.len() {
                this.front = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client(source: &str, destination: &str) -> ProxiedFrom {
        ProxiedFrom::Client {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v2_for(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x21
            }
            _ => unreachable!("one family"),
        };
        body.extend_from_slice(&source.port().to_be_bytes());
        body.extend_from_slice(&destination.port().to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(0x21, family, &body)
    }

    fn v1_for(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    #[test]
    fn v1_lines_of_each_family() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(
            parse(line),
            Ok(Some((
                client("192.0.2.7:56324", "10.0.0.1:443"),
                line.len() - 5
            )))
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n";
        assert_eq!(
            parse(line),
            Ok(Some((
                client("[2001:db8::7]:56324", "[2001:db8::1]:443"),
                line.len()
            )))
        );
        let line = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(parse(line), Ok(Some((ProxiedFrom::Unknown, line.len()))));
    }

    #[test]
    fn bad_v1_lines_say_what_is_wrong() {
        for (line, message) in [
            (&b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\n"[..], "CRLF"),
            (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "family"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n", "port"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 +80 443\r\n", "port"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 080 443\r\n", "port"),
            (b"PROXY TCP4  192.0.2.7 10.0.0.1 80 443\r\n", "address"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 80\r\n", "destination port"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 80 443 x\r\n", "six fields"),
            (b"PROXY UDP4 192.0.2.7 10.0.0.1 80 443\r\n", "TCP4"),
        ] {
            let error = parse(line).unwrap_err().to_string();
            assert!(error.contains(message), "{line:?}: {error}");
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::NotProxy)
        );
        assert_eq!(parse(b"PRX"), Err(ProxyHeaderError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyHeaderError::NotProxy));
    }

    #[test]
    fn v2_headers_of_each_command_and_family() {
        let header = v2_for(
            "192.0.2.7:56324".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            &[0x04, 0, 1, b'x'],
        );
        assert_eq!(
            parse(&header),
            Ok(Some((
                client("192.0.2.7:56324", "10.0.0.1:443"),
                header.len()
            ))),
            "TLVs are skipped"
        );
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(parse(&local), Ok(Some((ProxiedFrom::Unknown, 16))));
        let unix = v2(0x21, 0x31, &[0; 216]);
        assert_eq!(parse(&unix), Ok(Some((ProxiedFrom::Unknown, 232))));
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 8])),
            Err(ProxyHeaderError::V2ShortAddresses { got: 8, need: 12 })
        );
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(ProxyHeaderError::V2Command(0x11))
        );
        let mut huge = v2(0x21, 0x11, &[]);
        huge[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyHeaderError::V2TooLong(5000)));
    }

    #[test]
    fn every_prefix_of_a_valid_header_asks_for_more() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".to_vec(),
            v2_for(
                "[2001:db8::7]:1".parse().unwrap(),
                "[2001:db8::1]:2".parse().unwrap(),
                &[1, 2, 3],
            ),
        ];
        for header in headers {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(None), "{cut} of {header:?}");
            }
        }
    }

    #[tokio::test]
    async fn read_header_hands_back_the_bytes_after_it() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (from, mut rest) = read_header(&bytes[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(from, client("192.0.2.7:56324", "10.0.0.1:443"));
        let mut after = Vec::new();
        rest.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            read_header(&b"PROXY TCP4 1.2"[..], Duration::from_secs(1))
                .await
                .unwrap_err(),
            ProxyHeaderError::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_half_a_header_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 ")
            .await
            .unwrap();
        let error = read_header(server, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(error, ProxyHeaderError::Timeout(Duration::from_secs(3)));
        drop(client);
    }

    fn address() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv4Addr::from(d).into(), dp)
                )),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp)
                )),
        ]
    }

    proptest! {
        #[test]
        fn any_encoded_header_reads_back_exactly(
            (source, destination) in address(),
            v1 in any::<bool>(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..64),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = if v1 { v1_for(source, destination) } else { v2_for(source, destination, &tlvs) };
            let bytes = [header.clone(), after].concat();
            prop_assert_eq!(
                parse(&bytes),
                Ok(Some((ProxiedFrom::Client { source, destination }, header.len())))
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, length))) = parse(&bytes) {
                prop_assert!(length <= bytes.len());
            }
        }
    }
}
