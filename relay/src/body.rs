//! The body type every handler answers with: an upstream's body streamed through untouched,
//! or a small body made here (errors, admin pages). No boxing on the request path.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub type Body = Either<Incoming, Full<Bytes>>;

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

/// Wraps an upstream response without copying its body.
pub fn streamed(response: Response<Incoming>) -> Response<Body> {
    response.map(Either::Left)
}
