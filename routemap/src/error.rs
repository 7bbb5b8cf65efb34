//! Why a source could not produce a map.

use crate::parse::ParseError;
use std::fmt;

/// A failed attempt to load a map. The current snapshot is kept whenever this happens; the
/// error goes to the status, the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}: not found")]
    NotFound { origin: String },
    #[error("{origin}: cannot read: {reason}")]
    Read { origin: String, reason: String },
    /// A zero-byte file is almost always a file caught between truncate and write (or a
    /// botched deploy), so it is refused; a map that is meant to be empty can say so with
    /// a comment line.
    #[error(
        "{origin}: the map is empty (0 bytes); write at least a comment line to publish an empty map"
    )]
    Empty { origin: String },
    #[error(
        "{origin}: invalid route map, {} error(s); first: {}",
        crate::parse::error_count(errors),
        first(errors)
    )]
    Invalid {
        origin: String,
        errors: Vec<ParseError>,
    },
    /// A problem specific to a source (for example a ConfigMap without the map's key).
    #[error("{origin}: {message}")]
    Source { origin: String, message: String },
}

fn first(errors: &[ParseError]) -> String {
    errors.first().map(ToString::to_string).unwrap_or_default()
}

impl LoadError {
    /// One `ORIGIN:LINE: message` line per parse error (the format compilers use, so
    /// editors can jump to the line), or the error itself for other kinds.
    pub fn details(&self) -> Vec<String> {
        match self {
            LoadError::Invalid { origin, errors } => errors
                .iter()
                .map(|e| Located { origin, error: e }.to_string())
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Formats a parse error as `ORIGIN:LINE: message`.
pub struct Located<'a> {
    pub origin: &'a str,
    pub error: &'a ParseError,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            self.origin, self.error.line, self.error.kind
        )
    }
}
