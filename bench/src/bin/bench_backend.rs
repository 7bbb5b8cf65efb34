//! A minimal, fast HTTP app for load tests: answers every request with a small fixed body,
//! so that what is measured is the hop in front of it, not the app.
//!
//! `bench_backend ADDR [NAME]`: listens on ADDR, answers `hello from NAME`, HTTP/1.1
//! keep-alive. `GET /forwarded` answers with the request's `X-Forwarded-*` values instead,
//! so the benchmark can check that every proxy sets them (the same work for each).

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().context("usage: bench_backend ADDR [NAME]")?;
    let name = args.next().unwrap_or_else(|| "backend".into());
    let body = Bytes::from(format!("hello from {name}\n"));
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let name = HeaderValue::from_str(&name)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (body, name) = (body.clone(), name.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let answer = if req.uri().path() == "/forwarded" {
                    Bytes::from(forwarded(req.headers()))
                } else {
                    body.clone()
                };
                let mut response = Response::new(Full::new(answer));
                response.headers_mut().insert("x-app", name.clone());
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `for=...; proto=...; host=...` from the request's `X-Forwarded-*` headers.
fn forwarded(headers: &http::HeaderMap) -> String {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    format!(
        "for={}; proto={}; host={}\n",
        get("x-forwarded-for"),
        get("x-forwarded-proto"),
        get("x-forwarded-host")
    )
}
