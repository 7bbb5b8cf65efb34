//! Where the proxy reads a request's sticky value (URL parameter, affinity header, cookie
//! headers): any path and any header bytes give a value whose route is a valid route, or
//! none, without panicking.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use routemap::RouteId;
use stickyroute_proxy::sticky::{Sticky, StickySpec};

fuzz_target!(|data: &[u8]| {
    // The input is split at NUL bytes: a path, then header values (cookies, the header).
    let mut parts = data.split(|b| *b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut headers = HeaderMap::new();
    for (i, value) in parts.enumerate() {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if i % 3 == 2 { "x-sticky" } else { "cookie" };
        headers.append(name, value);
    }
    let spec = StickySpec::parse("balanceid|jsessionid", Some("X-Sticky")).expect("a valid spec");
    if let Sticky::Route(route) = spec.extract(&path, &headers) {
        RouteId::parse(route).expect("an extracted route is a valid route");
    }
    for value in headers.get_all("cookie") {
        for cookie in routemap::cookie::cookies(value.as_bytes()) {
            let _ = routemap::cookie::route_of(cookie.value);
        }
    }
});
