//! A plain HTTP client for tests: one fresh connection per request (from a chosen local
//! address when needed), HTTP/1.1 or HTTP/2, full response collected.

use bytes::Bytes;
use http::header::{HeaderMap, SET_COOKIE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::{TcpSocket, TcpStream};

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Every `Set-Cookie` header, in order.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The `Set-Cookie` headers for cookie `name`.
    pub fn set_cookies_named(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}=");
        self.set_cookies()
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), as a gRPC or API client would on plain TCP.
    Http2,
}

/// Builds and sends one request.
pub struct Call {
    target: SocketAddr,
    from: Option<std::net::IpAddr>,
    protocol: Protocol,
    request: http::request::Builder,
    body: Bytes,
}

/// `GET path` to `target`.
pub fn get(target: SocketAddr, path: &str) -> Call {
    call(target, Method::GET, path)
}

pub fn call(target: SocketAddr, method: Method, path: &str) -> Call {
    Call {
        target,
        from: None,
        protocol: Protocol::Http1,
        request: Request::builder()
            .method(method)
            .uri(path)
            .header("host", target.to_string()),
        body: Bytes::new(),
    }
}

impl Call {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request = self.request.header(name, value);
        self
    }

    /// Replaces the Host header.
    pub fn host(mut self, host: &str) -> Self {
        if let Some(headers) = self.request.headers_mut() {
            headers.insert("host", host.parse().expect("valid host"));
        }
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Connects from this local address (to play a client on another host).
    pub fn from(mut self, ip: &str) -> Self {
        self.from = Some(ip.parse().expect("valid ip"));
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub async fn send(self) -> Reply {
        self.try_send().await.expect("request failed")
    }

    pub async fn try_send(self) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        let stream = connect(self.target, self.from).await?;
        let mut request = self.request.body(Full::new(self.body))?;
        let response = match self.protocol {
            Protocol::Http1 => {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
            Protocol::Http2 => {
                let authority = self.target.to_string();
                *request.uri_mut() = format!("http://{authority}{}", request.uri()).parse()?;
                request.headers_mut().remove("host");
                let (mut sender, conn) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A TCP connection to `target`, optionally from a chosen local address.
pub async fn connect(
    target: SocketAddr,
    from: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    match from {
        None => TcpStream::connect(target).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(target).await
        }
    }
}

/// Sends each text over the WebSocket and asserts it comes back unchanged.
pub async fn assert_echoes<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, texts: &[&str])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for text in texts {
        ws.send(Message::text(*text))
            .await
            .expect("send over the websocket");
        let echoed = tokio::time::timeout(crate::PATIENCE, ws.next())
            .await
            .expect("an echo in time")
            .expect("the websocket stays open")
            .expect("a well-formed frame");
        assert_eq!(echoed.into_text().expect("a text frame").as_str(), *text);
    }
}
