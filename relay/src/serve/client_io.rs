//! A client's socket, with a deadline on writes: when a response (or a tunnel's bytes)
//! cannot be written for the idle timeout because the client stopped reading, the write
//! fails and the connection closes. Without it, a client that requests a large download
//! and never reads holds the connection, the member's connection and its busy count
//! forever, since the server side only waits for the socket to become writable again.
//!
//! Reads need no deadline here: a connection with no request in flight is closed by the
//! connection's own watchdog (see `super::connection`), and a request body that stops
//! arriving is timed where it is read (see `crate::body`).

use super::admission::Slot;
use super::stats::{ClientFault, ServeStats};
use crate::stall::Stall;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct ClientIo {
    stream: TcpStream,
    limit: Duration,
    /// Times a write that waits.
    stall: Stall,
    stats: Arc<ServeStats>,
    /// Held for as long as the socket is open: the connection counts against the limit.
    _slot: Slot,
}

impl ClientIo {
    pub fn new(stream: TcpStream, limit: Duration, slot: Slot, stats: Arc<ServeStats>) -> Self {
        Self {
            stream,
            limit,
            stall: Stall::new(),
            stats,
            _slot: slot,
        }
    }

    /// A write is waiting: fails once it has waited for the idle timeout.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.stall.poll_waited(cx, self.limit));
        self.stats.client_fault(ClientFault::NotReading);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {:?}; closing the connection",
                self.limit
            ),
        ))
    }

    fn written(
        &mut self,
        polled: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => self.poll_stall(cx).map(Err),
            Poll::Ready(result) => {
                self.stall.moved();
                Poll::Ready(result)
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
