//! The access log both binaries write (`--access-log`, `--access-log-format`): one line
//! per request, when its response body has ended, in Apache's combined format followed by
//! the sticky fields, or as JSON.
//!
//! - [`record`]: what a line says, and what a handler adds to it ([`Fields`]).
//! - [`format`](mod@format): the two line formats.
//! - [`writer`]: buffering off the request path, the writer thread, rotation.

pub mod format;
pub mod record;
pub mod writer;

pub use format::Format;
pub use record::{Fields, Record, UploadCount};
pub use writer::{AccessLog, Destination, reopen_all};

use crate::tls::TlsInfo;
use http::Request;
use http::header::{REFERER, USER_AGENT};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Where the access log goes and in which format, as the settings say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub destination: Destination,
    pub format: Format,
}

impl AccessLogConfig {
    /// Opens the log and starts its writer.
    pub fn open(&self) -> Result<AccessLog, writer::OpenError> {
        AccessLog::open(self.destination.clone(), self.format)
    }
}

/// A request's line in the making, from its complete head until its response ends.
pub(crate) struct Pending {
    log: AccessLog,
    record: Record,
    started: Instant,
}

impl Pending {
    pub(crate) fn new<B>(
        log: &AccessLog,
        request: &Request<B>,
        client: IpAddr,
        tls: Option<Arc<TlsInfo>>,
        started: Instant,
    ) -> Pending {
        let header = |name| request.headers().get(name).cloned();
        Pending {
            log: log.clone(),
            record: Record {
                time: SystemTime::now(),
                client,
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                status: 0,
                response_bytes: 0,
                duration: std::time::Duration::ZERO,
                tls,
                user_agent: header(USER_AGENT),
                referer: header(REFERER),
                fields: Fields::default(),
            },
            started,
        }
    }

    /// The response head is known.
    pub(crate) fn respond(&mut self, status: http::StatusCode, fields: Option<Fields>) {
        self.record.status = status.as_u16();
        if let Some(fields) = fields {
            self.record.fields = fields;
        }
    }

    pub(crate) fn sent(&mut self, bytes: u64) {
        self.record.response_bytes += bytes;
    }
}

impl Drop for Pending {
    /// The response body ended (or was abandoned): the line is written.
    fn drop(&mut self) {
        self.record.duration = self.started.elapsed();
        self.log.submit(&self.record);
    }
}
