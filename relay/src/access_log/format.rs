//! The two line formats. `combined` is Apache's combined log format, byte for byte where
//! Apache defines it (`%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`, with
//! Apache's escaping of quotes, backslashes and non-printable bytes), followed by the
//! sticky fields as `key=value`, so tools that parse the combined format keep working and
//! ignore the rest. `json` is one object per line, for log shippers.

use super::record::{Record, protocol};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache's combined format, then the sticky fields as key=value.
    Combined,
    /// One JSON object per line.
    Json,
}

/// Appends `record` as one line (with its newline) to `out`.
pub fn write(format: Format, record: &Record, out: &mut Vec<u8>) {
    match format {
        Format::Combined => combined(record, out),
        Format::Json => json(record, out),
    }
}

fn combined(record: &Record, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Written straight into the worker's buffer: no line of its own to allocate and copy.
    let _ = write!(out, "{} - - [", record.client);
    clf_time(record.time, out);
    out.extend_from_slice(b"] \"");
    escape_into(record.method.as_str().as_bytes(), out);
    out.push(b' ');
    escape_into(record.target().as_bytes(), out);
    out.push(b' ');
    out.extend_from_slice(protocol(record.version).as_bytes());
    let _ = write!(out, "\" {} ", record.status);
    match record.response_bytes {
        0 => out.push(b'-'),
        n => {
            let _ = write!(out, "{n}");
        }
    }
    for header in [&record.referer, &record.user_agent] {
        out.extend_from_slice(b" \"");
        match header {
            Some(value) => escape_into(value.as_bytes(), out),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    let f = &record.fields;
    let dash = "-";
    let _ = writeln!(
        out,
        " route={} member={} sticky={} route_changed={} duration={} member_head={} request_bytes={} tls={} sni={} cookie={} cookie_reason={}",
        f.route.as_ref().map_or(dash, |r| r.as_str()),
        Maybe(f.upstream),
        f.sticky.unwrap_or(dash),
        f.route_changed.map_or(dash, |c| if c { "1" } else { "0" }),
        Seconds(record.duration),
        Maybe(f.upstream_head.map(Seconds)),
        record.request_bytes(),
        record.tls.as_ref().map_or(dash, |t| t.version),
        record
            .tls
            .as_ref()
            .and_then(|t| t.sni.as_deref())
            .unwrap_or(dash),
        f.cookie.unwrap_or(dash),
        f.cookie_reason.unwrap_or(dash),
    );
}

/// A value, or `-` when there is none.
struct Maybe<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Maybe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Seconds with microsecond precision, in integer arithmetic (cheaper than a float's).
struct Seconds(Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0.as_secs(), self.0.subsec_micros())
    }
}

/// Apache's `ap_escape_logitem`: `"` and `\` get a backslash, common controls their C
/// escape, and every other byte outside printable ASCII `\xhh`, so a line can neither be
/// split nor have its quoted fields forged by what a client sends.
fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &byte in text {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b' '..=b'~' => out.push(byte),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`: Apache's `%t`, in UTC. A worker writes many lines within
/// one second, so each thread keeps the last second's text.
fn clf_time(time: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            last.1.clear();
            write_clf_time(secs, &mut last.1);
            last.0 = secs;
        }
        out.extend_from_slice(&last.1);
    });
}

fn write_clf_time(secs: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[usize::from(month - 1) % 12],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[derive(Serialize)]
struct JsonLine<'a> {
    /// Written straight into the line, not through a `String` of its own.
    #[serde(serialize_with = "as_text")]
    time: humantime::Rfc3339Timestamp,
    client: std::net::IpAddr,
    method: &'a str,
    target: std::borrow::Cow<'a, str>,
    protocol: &'static str,
    status: u16,
    request_bytes: u64,
    response_bytes: u64,
    duration_seconds: f64,
    member_head_seconds: Option<f64>,
    route: Option<&'a str>,
    member: Option<std::net::SocketAddr>,
    sticky: Option<&'static str>,
    route_changed: Option<bool>,
    tls_version: Option<&'static str>,
    sni: Option<&'a str>,
    user_agent: Option<std::borrow::Cow<'a, str>>,
    referer: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie_reason: Option<&'static str>,
}

/// A header value as text (bytes that are not UTF-8 replaced, as JSON must be text).
fn text(value: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

fn as_text<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn json(record: &Record, out: &mut Vec<u8>) {
    let f = &record.fields;
    let line = JsonLine {
        time: humantime::format_rfc3339_micros(record.time),
        client: record.client,
        method: record.method.as_str(),
        target: record.target(),
        protocol: protocol(record.version),
        status: record.status,
        request_bytes: record.request_bytes(),
        response_bytes: record.response_bytes,
        duration_seconds: record.duration.as_secs_f64(),
        member_head_seconds: f.upstream_head.map(|d| d.as_secs_f64()),
        route: f.route.as_ref().map(|r| r.as_str()),
        member: f.upstream,
        sticky: f.sticky,
        route_changed: f.route_changed,
        tls_version: record.tls.as_ref().map(|t| t.version),
        sni: record.tls.as_ref().and_then(|t| t.sni.as_deref()),
        user_agent: record.user_agent.as_ref().map(text),
        referer: record.referer.as_ref().map(text),
        cookie: f.cookie,
        cookie_reason: f.cookie_reason,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::record::{Fields, UploadCount};
    use crate::tls::TlsInfo;
    use http::{Method, Version};
    use routemap::RouteId;
    use std::sync::Arc;

    fn record() -> Record {
        let uploaded = Arc::new(UploadCount::default());
        uploaded.add(12);
        Record {
            // 2000-10-10 13:55:36 UTC, the time in Apache's documentation.
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            client: "192.0.2.7".parse().unwrap(),
            method: Method::POST,
            uri: "/login?next=/a%22b".parse().unwrap(),
            version: Version::HTTP_11,
            status: 200,
            response_bytes: 2326,
            duration: Duration::from_micros(1_500),
            tls: Some(Arc::new(TlsInfo {
                version: "TLSv1.3",
                sni: Some("shop.example".into()),
                alpn: None,
            })),
            user_agent: Some(http::HeaderValue::from_bytes(b"curl/8 \xc3\xa9\"\t").unwrap()),
            referer: None,
            fields: Fields {
                route: Some(RouteId::parse("www1").unwrap()),
                upstream: Some("127.0.0.2:8080".parse().unwrap()),
                upstream_head: Some(Duration::from_micros(900)),
                sticky: Some("hit"),
                route_changed: Some(false),
                cookie: None,
                cookie_reason: None,
                uploaded: Some(uploaded),
            },
        }
    }

    #[test]
    fn combined_is_apaches_format_then_the_sticky_fields() {
        let mut out = Vec::new();
        write(Format::Combined, &record(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \"POST /login?next=/a%22b HTTP/1.1\" 200 2326 \"-\" \"curl/8 \\xc3\\xa9\\\"\\t\" \
             route=www1 member=127.0.0.2:8080 sticky=hit route_changed=0 duration=0.001500 member_head=0.000900 \
             request_bytes=12 tls=TLSv1.3 sni=shop.example cookie=- cookie_reason=-\n"
        );
    }

    #[test]
    fn an_empty_body_is_a_dash_and_absent_fields_are_dashes() {
        let mut r = record();
        r.response_bytes = 0;
        r.tls = None;
        r.fields = Fields::default();
        let mut out = Vec::new();
        write(Format::Combined, &r, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("\" 200 - \"-\""), "{line}");
        assert!(line.ends_with(
            "route=- member=- sticky=- route_changed=- duration=0.001500 member_head=- request_bytes=0 tls=- sni=- cookie=- cookie_reason=-\n"
        ), "{line}");
    }

    #[test]
    fn json_is_one_object_per_line() {
        let mut out = Vec::new();
        write(Format::Json, &record(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["time"], "2000-10-10T13:55:36.000000Z");
        assert_eq!(value["client"], "192.0.2.7");
        assert_eq!(value["target"], "/login?next=/a%22b");
        assert_eq!(value["status"], 200);
        assert_eq!(value["request_bytes"], 12);
        assert_eq!(value["route"], "www1");
        assert_eq!(value["member"], "127.0.0.2:8080");
        assert_eq!(value["sticky"], "hit");
        assert_eq!(value["route_changed"], false);
        assert_eq!(value["sni"], "shop.example");
        assert_eq!(value["user_agent"], "curl/8 \u{e9}\"\t");
        assert!(value.get("cookie").is_none());
    }

    #[test]
    fn dates_are_right_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }
}
