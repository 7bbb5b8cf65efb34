//! A small stateful web app, the kind stickyroute exists for: it keeps per-session counters
//! in memory, so a request that lands on the wrong instance visibly loses state.
//!
//! | path | does |
//! | --- | --- |
//! | `/login` | creates a session: `Set-Cookie: SESSION=<id>` (+ `theme=dark`) |
//! | `/logout` | deletes the session cookie (`Max-Age=0`) |
//! | `/cookies` | answers with three `Set-Cookie` headers |
//! | `/cache?cc=V` | answers with `Cache-Control: V` |
//! | `/echo-header?name=N&value=V` | answers with the header `N: V` |
//! | `/download?bytes=N` | streams N bytes |
//! | `/upload` | counts the streamed request body, answers the count |
//! | `/slow?ms=N` | answers after N ms |
//! | `/ws` | WebSocket echo |
//! | `/status/CODE` | answers with that status |
//! | anything else | JSON: app name, session, its counter, what arrived |
//!
//! Every request with a known `SESSION` cookie increments that session's counter.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use routemap::cookie::find_cookie;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type AppBody = BoxBody<Bytes, std::io::Error>;

#[derive(Default)]
struct State {
    name: String,
    sessions: Mutex<HashMap<String, u64>>,
    next_session: AtomicU64,
    requests: AtomicU64,
}

/// A running app; stops when dropped, closing its open connections too, as a server that
/// dies does.
pub struct TestApp {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.stop.send_replace(true);
    }
}

impl TestApp {
    /// Starts an app named `name` on `ip` (an address of 127.0.0.0/8) and a free port.
    pub async fn start(name: &str, ip: &str) -> Self {
        Self::start_on(name, SocketAddr::new(ip.parse().expect("an IP address"), 0)).await
    }

    /// Starts an app on exactly `addr` (to bring a stopped member back on its address).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test app");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            name: name.to_owned(),
            ..State::default()
        });
        let shared = state.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            task: Some(task),
            stop,
        }
    }

    /// Stops the app as a server that dies does, and returns once its listener is closed
    /// (dropping it only starts that), so that the next connection is refused.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests this app has answered.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let session = find_cookie(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
        b"SESSION",
    )
    .map(|v| String::from_utf8_lossy(v).into_owned());
    let count = session.as_ref().and_then(|sid| {
        let mut sessions = state.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get_mut(sid).map(|count| {
            *count += 1;
            *count
        })
    });
    let path = req.uri().path().to_owned();
    let mut response = match path.as_str() {
        "/login" => {
            let sid = format!(
                "{}-{}",
                state.name,
                state.next_session.fetch_add(1, Ordering::SeqCst)
            );
            state
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sid.clone(), 1);
            let mut r = describe(&state, &req, Some(&sid), Some(1));
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                HeaderValue::from_str(&format!("SESSION={sid}; Path=/; HttpOnly")).expect("ascii"),
            );
            h.append(
                header::SET_COOKIE,
                HeaderValue::from_static("theme=dark; Path=/"),
            );
            r
        }
        "/logout" => {
            let mut r = full(StatusCode::OK, "bye\n");
            r.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_static("SESSION=; Max-Age=0; Path=/"),
            );
            r
        }
        "/cookies" => {
            let mut r = full(StatusCode::OK, "three cookies\n");
            for c in [
                "a=1; Path=/",
                "b=2; Path=/x; Secure",
                "c=\"quoted value\"; Max-Age=60",
            ] {
                r.headers_mut()
                    .append(header::SET_COOKIE, HeaderValue::from_static(c));
            }
            r
        }
        "/cache" => {
            let mut r = describe(&state, &req, session.as_deref(), count);
            if let Some(cc) = query(&req, "cc").and_then(|v| {
                HeaderValue::from_str(&v.replace("%20", " ").replace("%22", "\"")).ok()
            }) {
                r.headers_mut().insert(header::CACHE_CONTROL, cc);
            }
            r
        }
        "/echo-header" => {
            let mut r = describe(&state, &req, session.as_deref(), count);
            let name =
                query(&req, "name").and_then(|n| header::HeaderName::from_bytes(n.as_bytes()).ok());
            let value = query(&req, "value").and_then(|v| HeaderValue::from_str(&v).ok());
            if let (Some(name), Some(value)) = (name, value) {
                r.headers_mut().insert(name, value);
            }
            r
        }
        "/download" => {
            let total: u64 = query(&req, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    (left > 0).then(|| {
                        let n = left.min(chunk.len() as u64);
                        (
                            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n as usize))),
                            left - n,
                        )
                    })
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            // `chunked=1`: no length, so the body goes out chunked.
            if query(&req, "chunked").is_none() {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            r
        }
        // Refuses an upload at once, without reading it (as a size limit does).
        "/reject" => full(StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        return Ok(full(StatusCode::BAD_REQUEST, format!("body error: {e}\n")));
                    }
                }
            }
            return Ok(full(StatusCode::OK, format!("{total}")));
        }
        "/slow" => {
            let ms: u64 = query(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, format!("slow done by {}\n", state.name))
        }
        "/ws" => return Ok(websocket_echo(&mut req)),
        status if status.starts_with("/status/") => {
            let code = status["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            full(
                code.unwrap_or(StatusCode::BAD_REQUEST),
                format!("status from {}\n", state.name),
            )
        }
        _ => describe(&state, &req, session.as_deref(), count),
    };
    response.headers_mut().insert(
        "x-app",
        HeaderValue::from_str(&state.name).expect("ascii name"),
    );
    Ok(response)
}

/// JSON about this request, so tests can see what arrived.
fn describe(
    state: &State,
    req: &Request<Incoming>,
    session: Option<&str>,
    count: Option<u64>,
) -> Response<AppBody> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = serde_json::json!({
        "app": state.name,
        "session": session,
        "count": count,
        "path": req.uri().path(),
        "version": format!("{:?}", req.version()),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_forwarded_host": header("x-forwarded-host"),
        "connection": header("connection"),
        "x_hop": header("x-hop"),
    });
    let mut r = full(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<AppBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, "not a websocket handshake\n");
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() || ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    r
}
