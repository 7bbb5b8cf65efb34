//! Reading a response body off its connection as the client takes it, and handing the
//! connection back to the pool the moment the body's last byte has been read.

use super::chunked::{ChunkedDecoder, Step};
use super::connection::Connection;
use super::head::ResponseFraming;
use super::pool::Home;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct BodyReader {
    /// `None` once the body has ended (the connection went home or was closed).
    conn: Option<Connection>,
    decoder: Decoder,
    /// Where a connection that may carry another request goes when the body is done.
    home: Option<Home>,
    /// How long the upstream may leave an awaited body without bytes.
    silence: Duration,
}

enum Decoder {
    /// `101 Switching Protocols`: no body; the connection is the tunnel's.
    Upgraded,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl BodyReader {
    pub(super) fn new(
        conn: Connection,
        framing: ResponseFraming,
        home: Option<Home>,
        silence: Duration,
    ) -> Self {
        let decoder = match framing {
            ResponseFraming::Empty => Decoder::Length(0),
            ResponseFraming::Length(n) => Decoder::Length(n),
            ResponseFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
            ResponseFraming::UntilClose => Decoder::UntilClose,
        };
        let mut reader = Self {
            conn: Some(conn),
            decoder,
            home,
            silence,
        };
        if matches!(reader.decoder, Decoder::Length(0)) {
            reader.finish();
        }
        reader
    }

    /// No body at all (what the client gets with a `101`: the bytes follow in the tunnel).
    pub fn empty() -> Self {
        Self {
            conn: None,
            decoder: Decoder::Length(0),
            home: None,
            silence: Duration::MAX,
        }
    }

    /// The answer to a request whose connection was handed over (`101`): no body.
    pub(super) fn upgraded(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            decoder: Decoder::Upgraded,
            home: None,
            silence: Duration::MAX,
        }
    }

    /// The connection of a `101 Switching Protocols` answer, for the tunnel.
    pub fn into_upgraded(mut self) -> Option<Connection> {
        match self.decoder {
            Decoder::Upgraded => self.conn.take(),
            _ => None,
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.decoder {
                Decoder::Upgraded => return Poll::Ready(None),
                Decoder::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(take).freeze();
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decoder::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(trailers)) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Step::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(error) => {
                        return Poll::Ready(Some(
                            Err(self.fail(io::ErrorKind::InvalidData, error)),
                        ));
                    }
                },
                Decoder::UntilClose => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
            }
            match conn.poll_read_more(cx, self.silence) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(self.decoder, Decoder::UntilClose) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(self.fail(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.decoder, Decoder::Upgraded)
    }

    pub fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.decoder) {
            (None, _) | (_, Decoder::Upgraded) => SizeHint::with_exact(0),
            (Some(_), Decoder::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }

    /// The body is complete: the connection goes home if it may carry another request
    /// and nothing beyond this response has arrived on it (bytes no request asked for
    /// would be taken for the next request's answer; see [`super::pool`]).
    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take())
            && !conn.has_unasked_bytes()
        {
            home.give(conn);
        }
    }

    fn fail(
        &mut self,
        kind: io::ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> io::Error {
        self.conn = None;
        io::Error::new(kind, error)
    }
}
