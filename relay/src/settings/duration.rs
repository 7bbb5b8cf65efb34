//! Durations as operators write them (`250ms`, `5s`, `2m`, `1h`, or bare seconds), in flags,
//! environment variables and the config file alike, and shown the same way in `--help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A [`Duration`] that parses and prints in the units above, so a default declared as a
/// constant is shown in `--help` exactly as a user would write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Span> for Duration {
    fn from(span: Span) -> Self {
        span.0
    }
}

impl fmt::Display for Span {
    /// The largest unit that shows the value exactly: `150ms`, `5s`, `2m`, `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            return write!(f, "{}ms", self.0.as_secs_f64() * 1000.0);
        }
        match millis {
            0 => write!(f, "0s"),
            m if m.is_multiple_of(3_600_000) => write!(f, "{}h", m / 3_600_000),
            m if m.is_multiple_of(60_000) => write!(f, "{}m", m / 60_000),
            m if m.is_multiple_of(1000) => write!(f, "{}s", m / 1000),
            m => write!(f, "{m}ms"),
        }
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        duration(text).map(Span)
    }
}

/// Accepts `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let number = text.trim_end_matches(|c: char| !c.is_ascii_digit() && c != '.');
    let unit = text.strip_prefix(number).unwrap_or_default();
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s or 2m"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?} has an unknown unit; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("7"), Ok(Duration::from_secs(7)));
        assert!(duration("5 parsecs").is_err());
        assert!(duration("s").is_err());
    }

    #[test]
    fn spans_print_as_they_are_written_and_parse_back() {
        for text in ["150ms", "5s", "2m", "1h", "0s", "1500ms"] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.to_string(), text);
        }
        assert_eq!(Span::from_secs(90).to_string(), "90s");
    }
}
