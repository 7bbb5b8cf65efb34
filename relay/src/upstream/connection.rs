//! One TCP connection to an upstream and the exchange of one request on it, in the task of
//! the client's request: no connection task, no channel between the two sides, and one
//! `send` per request head (hyper's client connection, which this replaces, ran as its own
//! task fed through channels, and wrote with `writev`).

use super::head::{self, HeadError, RequestFraming, RequestHead, ResponseHead};
use crate::body::{OutgoingBody, UploadError};
use crate::stall::Stall;
use bytes::{BufMut, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Smallest and largest read: reads start small (most responses are) and double while
/// they fill the space offered, for large bodies.
const MIN_READ: u32 = 8 * 1024;
const MAX_READ: u32 = 256 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection ended before any byte of a response: the upstream may never have
    /// seen the request (a reused connection it had just closed).
    #[error("the connection closed before any response")]
    ClosedBeforeResponse,
    #[error("the connection was reset before any response: {0}")]
    ResetBeforeResponse(io::Error),
    #[error("the connection closed in the middle of the response head")]
    ClosedInHead,
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("{0}")]
    Io(io::Error),
    /// The client's side of the upload failed: never the upstream's fault.
    #[error(transparent)]
    ClientBody(UploadError),
}

impl ExchangeError {
    /// Whether nothing came back, so that a request that may be repeated can be sent
    /// again on a fresh connection.
    pub fn nothing_received(&self) -> bool {
        matches!(
            self,
            ExchangeError::ClosedBeforeResponse | ExchangeError::ResetBeforeResponse(_)
        )
    }
}

/// An open connection with the bytes read from it but not yet consumed.
pub struct Connection {
    stream: TcpStream,
    pub(super) buf: BytesMut,
    read_size: u32,
    /// Times silence in the middle of a response body (see [`Self::poll_read_more`]).
    silence: Stall,
}

impl Connection {
    pub async fn connect(address: &str, timeout: Duration) -> io::Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        // Request heads are small and written whole: no reason to wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            read_size: MIN_READ,
            silence: Stall::new(),
        })
    }

    /// Whether an idle connection can take a request: nothing to read on it (a closed
    /// connection reads as end of file). Costs no system call while the event loop has
    /// seen nothing arrive on it.
    pub fn is_reusable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read of the previous response;
            // only a read tells.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    pub async fn write_head(&mut self, request: &RequestHead) -> io::Result<()> {
        self.stream.write_all(&request.bytes).await
    }

    /// After [`Self::write_head`]: sends the body and reads the response head (interim
    /// `1xx` answers other than `101` are skipped). A final answer that arrives while the
    /// body is still being sent ends the sending. Also says whether the whole body went
    /// out (the connection can be reused only then).
    pub async fn finish(
        &mut self,
        request: &RequestHead,
        body: OutgoingBody,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        let head_method = request.head_method;
        if request.framing == RequestFraming::Empty {
            drop(body);
            let head = read_head(
                &mut self.stream,
                &mut self.buf,
                &mut self.read_size,
                head_method,
            );
            return head.await.map(|head| (head, true));
        }
        // Boxed: its state (two futures side by side) would otherwise be part of every
        // request's future, which is moved by value on its way into the server connection.
        Box::pin(self.finish_with_body(request, body)).await
    }

    async fn finish_with_body(
        &mut self,
        request: &RequestHead,
        body: OutgoingBody,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        let head_method = request.head_method;
        let (mut reader, writer) = self.stream.split();
        let sending = send_body(writer, body, request.framing == RequestFraming::Chunked);
        let reading = read_head(&mut reader, &mut self.buf, &mut self.read_size, head_method);
        tokio::pin!(sending, reading);
        tokio::select! {
            biased;
            sent = &mut sending => match sent {
                Ok(()) => reading.await.map(|head| (head, true)),
                Err(SendError::Client(error)) => Err(ExchangeError::ClientBody(error)),
                // The upstream stopped reading: it may have answered (413 and closed).
                Err(SendError::Upstream(error)) => match reading.await {
                    Ok(head) => Ok((head, false)),
                    Err(_) => Err(ExchangeError::Io(error)),
                },
            },
            head = &mut reading => head.map(|head| (head, false)),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is end of file. Fails with `TimedOut`
    /// once the upstream has sent nothing for `silence` while bytes are awaited: a member
    /// that sends its head and then stalls must not hold the client, the connection and
    /// its busy count forever. Only time spent waiting counts: a body the client reads
    /// slowly is read slowly here too, and bytes that arrived meanwhile are taken first.
    pub(super) fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        silence: Duration,
    ) -> Poll<io::Result<usize>> {
        self.buf.reserve(self.read_size as usize);
        let offered = self.buf.capacity() - self.buf.len();
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf);
        match polled {
            Poll::Pending => {}
            Poll::Ready(result) => {
                self.silence.moved();
                if let Ok(n) = result
                    && n == offered
                {
                    self.read_size = (self.read_size * 2).min(MAX_READ);
                }
                return Poll::Ready(result);
            }
        }
        ready!(self.silence.poll_waited(cx, silence));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the upstream sent nothing for {silence:?} in the middle of the response body"),
        )))
    }

    /// Lets go of a large read buffer (grown for a big body) before the connection waits
    /// in the pool, where hundreds of idle connections may sit.
    pub(super) fn shrink_for_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * MIN_READ as usize {
            self.buf = BytesMut::new();
            self.read_size = MIN_READ;
        }
    }

    /// The socket and the bytes already read from it (a tunnel starts with those).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Whether the upstream sent anything after the response that was just read to its
    /// end: bytes no request asked for (see [`super::pool`]).
    pub(super) fn has_unasked_bytes(&self) -> bool {
        !self.buf.is_empty() || !self.is_reusable()
    }
}

async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    read_size: &mut u32,
    head_method: bool,
) -> Result<ResponseHead, ExchangeError> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            if let Some(head) = head::parse_response(buf, head_method)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
        }
        buf.reserve(*read_size as usize);
        match reader.read_buf(buf).await {
            Ok(0) if received => return Err(ExchangeError::ClosedInHead),
            Ok(0) => return Err(ExchangeError::ClosedBeforeResponse),
            Ok(_) => {}
            Err(error) if !received => return Err(ExchangeError::ResetBeforeResponse(error)),
            Err(error) => return Err(ExchangeError::Io(error)),
        }
    }
}

enum SendError {
    Client(UploadError),
    Upstream(io::Error),
}

/// Streams the request body, as it is (`Content-Length`) or in chunks, with the trailers
/// of a chunked body passed on.
async fn send_body<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut body: OutgoingBody,
    chunked: bool,
) -> Result<(), SendError> {
    let mut framed = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SendError::Client)?;
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if !chunked => {
                writer.write_all(&data).await.map_err(SendError::Upstream)?;
                continue;
            }
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        framed.clear();
        framed.put_slice(format!("{:X}\r\n", frame.len()).as_bytes());
        framed.put_slice(&frame);
        framed.put_slice(b"\r\n");
        writer
            .write_all(&framed)
            .await
            .map_err(SendError::Upstream)?;
    }
    if chunked {
        framed.clear();
        framed.put_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            framed.put_slice(name.as_str().as_bytes());
            framed.put_slice(b": ");
            framed.put_slice(value.as_bytes());
            framed.put_slice(b"\r\n");
        }
        framed.put_slice(b"\r\n");
        writer
            .write_all(&framed)
            .await
            .map_err(SendError::Upstream)?;
    }
    writer.flush().await.map_err(SendError::Upstream)
}
