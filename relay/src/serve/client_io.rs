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
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub struct ClientIo {
    stream: TcpStream,
    stall: Duration,
    /// Armed while a write waits; allocated the first time one has to.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    stats: Arc<ServeStats>,
    /// Held for as long as the socket is open: the connection counts against the limit.
    _slot: Slot,
}

impl ClientIo {
    pub fn new(stream: TcpStream, stall: Duration, slot: Slot, stats: Arc<ServeStats>) -> Self {
        Self {
            stream,
            stall,
            timer: None,
            armed: false,
            stats,
            _slot: slot,
        }
    }

    /// A write is waiting: fails once it has waited for the idle timeout.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = Instant::now() + self.stall;
        if !self.armed {
            self.armed = true;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        self.stats.client_fault(ClientFault::NotReading);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {:?}; closing the connection",
                self.stall
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
                self.armed = false;
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
