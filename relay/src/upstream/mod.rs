//! The HTTP/1.1 client side: how requests reach upstreams and responses come back.
//!
//! Written for the proxy's request path rather than taken from hyper's client: the whole
//! exchange runs in the task of the client's request (no connection task, no channels), a
//! request head is encoded once and written with one `send`, and response header values
//! share the bytes they were read into. Upstreams are HTTP/1.1 servers (apps, or the
//! agent in front of them), so that is all it speaks.
//!
//! - [`head`]: encoding request heads, parsing response heads, body framing;
//! - [`chunked`]: decoding chunked response bodies;
//! - [`connection`]: one connection and one exchange on it;
//! - [`body`]: a response body read off its connection;
//! - [`pool`]: keep-alive connections per upstream and worker.

pub mod body;
pub mod chunked;
pub mod connection;
pub mod forward;
pub mod head;
pub mod pool;

pub use body::BodyReader;
pub use connection::{Connection, ExchangeError};
pub use head::{RequestHead, ResponseHead};
pub use pool::{Pool, PoolError, PoolTimeouts, Requester};

#[cfg(test)]
mod tests;
