//! The demo app: a tiny stateful web app that says which backend answered and counts the
//! visits of each session in memory, so losing stickiness is visible at once.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use routemap::cookie::find_cookie;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

struct App {
    name: String,
    sessions: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

/// Serves the demo app named `name` on `addr` until the process ends.
pub async fn serve(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("demo app {name} cannot listen on {addr}: {e}"))?;
    let app = Arc::new(App {
        name: name.to_owned(),
        sessions: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(&req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

impl App {
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let cookies = || {
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes())
        };
        let sid =
            find_cookie(cookies(), b"SESSION").map(|v| String::from_utf8_lossy(v).into_owned());
        let balance =
            find_cookie(cookies(), b"balanceid").map(|v| String::from_utf8_lossy(v).into_owned());
        let mut set_cookie = None;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let (sid, visits) = match (req.uri().path(), sid) {
            ("/login", _) => {
                let sid = format!(
                    "{}-{}",
                    self.name,
                    self.next.fetch_add(1, Ordering::Relaxed)
                );
                sessions.insert(sid.clone(), 1);
                set_cookie = Some(format!("SESSION={sid}; Path=/; HttpOnly"));
                (Some(sid), Some(1))
            }
            ("/logout", Some(sid)) => {
                sessions.remove(&sid);
                set_cookie = Some("SESSION=; Path=/; Max-Age=0".to_owned());
                (None, None)
            }
            (_, Some(sid)) => {
                let visits = sessions.get_mut(&sid).map(|n| {
                    *n += 1;
                    *n
                });
                (Some(sid), visits)
            }
            (_, None) => (None, None),
        };
        drop(sessions);
        let wants_html = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let session_text = match (&sid, visits) {
            (Some(sid), Some(n)) => format!("session {sid}, visit {n}"),
            (Some(sid), None) => {
                format!("session {sid} is unknown here: its state lives on another backend")
            }
            (None, _) => "no session (log in to start one)".to_owned(),
        };
        let cookie_text = balance.map_or_else(
            || "no balanceid cookie yet".to_owned(),
            |b| format!("balanceid={b}"),
        );
        let (content_type, body) = if wants_html {
            // The session id and the cookie come from the request: escaped, so a crafted
            // cookie cannot put markup into the page. Without a session, the way to start
            // one is a link in the sentence that says so.
            let session_html = if sid.is_none() {
                "no session (<a href=\"/login\">log in</a> to start one)".to_owned()
            } else {
                stickyroute_relay::html::escape(&session_text)
            };
            (
                "text/html; charset=utf-8",
                format!(
                    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{name}</title></head>\
                     <body style=\"font-family:system-ui;margin:2em\"><h1>Served by {name}</h1>\
                     <p>{session_html}</p><p><code>{cookie_html}</code></p>\
                     <p><a href=\"/\">Reload</a> · <a href=\"/login\">Log in (new session)</a> · <a href=\"/logout\">Log out</a></p>\
                     </body></html>",
                    name = self.name,
                    cookie_html = stickyroute_relay::html::escape(&cookie_text),
                ),
            )
        } else {
            // `served by NAME: ...`: the guide's `cut -d: -f1 | sort | uniq -c` counts
            // backends by what comes before the first colon, so keep NAME first and alone.
            (
                "text/plain; charset=utf-8",
                format!("served by {}: {session_text}; {cookie_text}\n", self.name),
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(name) = HeaderValue::from_str(&self.name) {
            headers.insert("x-app", name);
        }
        if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use stickyroute_relay::html::escape as escape_html;

    #[test]
    fn markup_from_a_cookie_is_shown_as_text() {
        assert_eq!(
            escape_html("session <script>alert('x')</script>&\""),
            "session &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
