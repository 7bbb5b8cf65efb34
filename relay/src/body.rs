//! Body types: an upstream's body streamed through (optionally metered), a small body made
//! here (errors, admin pages), and the request body sent upstream, which comes back when a
//! connection attempt failed before any of it was sent.

use crate::stall::Stall;
use crate::upstream::BodyReader;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub type Body = Either<Streamed, Full<Bytes>>;

/// Counts what flows through a proxied exchange (per member, in the proxy). The meter is
/// shared by the request body and the response body; when the last of them is dropped, the
/// exchange is over (the proxy's in-flight count ends there, whatever path it took).
pub trait Meter: Send + Sync + 'static {
    /// Request body bytes sent upstream.
    fn received(&self, bytes: u64);
    /// Response body bytes sent to the client.
    fn sent(&self, bytes: u64);
    /// The upstream failed in the middle of the response body (it closed, broke the
    /// framing, or went silent for the idle timeout): its fault, never the client's.
    fn failed(&self, error: &std::io::Error);
    /// Request body bytes this meter saw, for the access log.
    fn uploaded(&self) -> u64 {
        0
    }
}

/// An upstream response body on its way to the client. A meter (the proxy's per-member
/// counters) sees its bytes and any failure of the upstream; its connection goes back to
/// the pool as soon as the last byte has been read (see [`crate::upstream::pool`]).
pub struct Streamed {
    reader: BodyReader,
    meter: Option<Arc<dyn Meter>>,
    /// What the handler adds to this exchange's access log line: carried here rather
    /// than in the response's extensions, which cost three allocations per request.
    log_fields: Option<Box<crate::access_log::Fields>>,
}

impl Streamed {
    pub(crate) fn new(reader: BodyReader) -> Self {
        Self {
            reader,
            meter: None,
            log_fields: None,
        }
    }

    fn set_log_fields(&mut self, fields: crate::access_log::Fields) {
        self.log_fields = Some(Box::new(fields));
    }

    fn take_log_fields(&mut self) -> Option<crate::access_log::Fields> {
        self.log_fields.take().map(|fields| *fields)
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = self.reader.poll_frame(cx);
        if let Some(meter) = &self.meter {
            match &polled {
                Poll::Ready(Some(Err(error))) => meter.failed(error),
                polled => {
                    let len = data_len(polled);
                    if len > 0 {
                        meter.sent(len);
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.reader.size_hint()
    }
}

/// The number of data bytes in a polled frame (0 for trailers, errors and pending).
fn data_len<E>(polled: &Poll<Option<Result<Frame<Bytes>, E>>>) -> u64 {
    match polled {
        Poll::Ready(Some(Ok(frame))) => frame.data_ref().map_or(0, |d| d.len() as u64),
        _ => 0,
    }
}

/// A locally made response with a `text/plain` body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body.into())
}

/// A locally made response with a JSON body.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => with_type(status, "application/json", bytes.into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render JSON: {e}\n"),
        ),
    }
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Attaches a handler's access log fields to its response: on a streamed body, where it
/// costs one allocation; on a body made here (errors, refusals), in the extensions.
pub fn set_log_fields(response: &mut Response<Body>, fields: crate::access_log::Fields) {
    match response.body_mut() {
        Either::Left(streamed) => streamed.set_log_fields(fields),
        Either::Right(_) => {
            response.extensions_mut().insert(fields);
        }
    }
}

/// The fields [`set_log_fields`] attached, if any.
pub(crate) fn take_log_fields(
    head: &mut http::response::Parts,
    body: &mut Body,
) -> Option<crate::access_log::Fields> {
    match body {
        Either::Left(streamed) => streamed.take_log_fields(),
        Either::Right(_) => None,
    }
    .or_else(|| head.extensions.remove())
}

/// Wraps an upstream response without copying its body; `meter` sees its bytes and end.
pub fn streamed(response: Response<Streamed>, meter: Option<Arc<dyn Meter>>) -> Response<Body> {
    response.map(|mut body| {
        body.meter = meter;
        Either::Left(body)
    })
}

/// Why the client's request body could not be sent on: the client's fault, never the
/// member's.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body broke off or its framing was invalid.
    #[error("the request body from the client is broken: {0}")]
    Broken(hyper::Error),
    /// The client stopped sending the body.
    #[error("the client sent no request body bytes for {0:?}")]
    Stalled(Duration),
}

/// The request body as sent upstream. If the connection attempt fails before the body was
/// touched, dropping it hands the body back (see [`OutgoingBody::guard`]), so the request
/// can go to another upstream; once any of it was read, it is never replayed.
///
/// A client that stops sending its body for the idle timeout ends the upload with
/// [`UploadError::Stalled`].
pub struct OutgoingBody {
    inner: Option<Incoming>,
    touched: bool,
    home: Option<oneshot::Sender<Incoming>>,
    meter: Option<Arc<dyn Meter>>,
    /// `None` for an empty body, which never waits.
    progress: Option<Arc<Progress>>,
    /// Times a wait for the client's bytes.
    stall: Stall,
}

/// When an upload last moved and whose turn it is, so that a slow upload is told from a
/// stalled one and a stall is blamed on the right side: the response timeout counts from
/// the last byte that moved (see `forward`) and only while the member is the one awaited.
pub(crate) struct Progress {
    started: Instant,
    /// Milliseconds after `started` when the last bytes were read from the client (each
    /// read waits until the previous bytes were written upstream).
    last_ms: AtomicU64,
    /// The client's next bytes are awaited (rather than the member taking the last ones).
    awaiting_client: AtomicBool,
    /// How long the client may leave the body without new bytes. (Kept here, with the
    /// rest of what only a body with bytes needs, to keep the body itself small: it is
    /// moved by value through every layer of an exchange.)
    idle: Duration,
}

impl Progress {
    fn new(idle: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            awaiting_client: AtomicBool::new(false),
            idle,
        }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (the start, before any did).
    pub(crate) fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether the upload waits for the client (whose stalls the body times itself).
    pub(crate) fn awaiting_client(&self) -> bool {
        self.awaiting_client.load(Ordering::Relaxed)
    }
}

/// Where an untouched body comes back to.
pub type Reclaim = oneshot::Receiver<Incoming>;

impl OutgoingBody {
    /// Wraps `body`; `idle` is how long the client may leave it without new bytes. An
    /// empty body needs no way back (it can be rebuilt), so none is made.
    pub fn guard(
        body: Incoming,
        meter: Option<Arc<dyn Meter>>,
        idle: Duration,
    ) -> (Self, Option<Reclaim>) {
        let empty = http_body::Body::is_end_stream(&body);
        let (home, reclaim) = if empty {
            (None, None)
        } else {
            let (home, reclaim) = oneshot::channel();
            (Some(home), Some(reclaim))
        };
        let body = Self {
            inner: Some(body),
            touched: false,
            home,
            meter,
            progress: (!empty).then(|| Arc::new(Progress::new(idle))),
            stall: Stall::new(),
        };
        (body, reclaim)
    }

    /// An empty body, for retrying a request that had none.
    pub fn empty(meter: Option<Arc<dyn Meter>>) -> Self {
        Self {
            inner: None,
            touched: false,
            home: None,
            meter,
            progress: None,
            stall: Stall::new(),
        }
    }

    /// The upload's progress; `None` when there is nothing to upload.
    pub(crate) fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.clone()
    }

    /// The client's bytes are awaited: an error once they have been for the idle time.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<UploadError> {
        let Some(idle) = self.progress.as_ref().map(|p| p.idle) else {
            return Poll::Pending;
        };
        self.stall
            .poll_waited(cx, idle)
            .map(|()| UploadError::Stalled(idle))
    }
}

impl http_body::Body for OutgoingBody {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        self.touched = true;
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let awaiting = polled.is_pending();
        if let Some(progress) = &this.progress {
            progress.awaiting_client.store(awaiting, Ordering::Relaxed);
        }
        if awaiting {
            return this.poll_stall(cx).map(|error| Some(Err(error)));
        }
        this.stall.moved();
        let len = data_len(&polled);
        if len > 0 {
            if let Some(progress) = &this.progress {
                progress.moved();
            }
            if let Some(meter) = &this.meter {
                meter.received(len);
            }
        }
        polled.map(|frame| frame.map(|result| result.map_err(UploadError::Broken)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for OutgoingBody {
    fn drop(&mut self) {
        if !self.touched
            && let (Some(home), Some(inner)) = (self.home.take(), self.inner.take())
        {
            let _ = home.send(inner);
        }
    }
}
