//! What the proxy checks before forwarding a request: any Host, target and
//! Transfer-Encoding bytes are refused or give a host that is a valid header value.
#![no_main]

use http::{HeaderValue, Request, Version};
use libfuzzer_sys::fuzz_target;
use stickyroute_relay::request::admit;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let (Some(host), target, coding) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let mut builder = Request::builder().version(Version::HTTP_11);
    if let Some(target) = target
        && let Ok(text) = std::str::from_utf8(target)
    {
        builder = builder.uri(text);
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    if let Ok(host) = HeaderValue::from_bytes(host) {
        request.headers_mut().insert("host", host);
    }
    if let Some(coding) = coding.and_then(|c| HeaderValue::from_bytes(c).ok()) {
        request.headers_mut().insert("transfer-encoding", coding);
    }
    if admit(&mut request).is_ok() {
        let mut hosts = request.headers().get_all("host").iter();
        if let Some(host) = hosts.next() {
            assert!(hosts.next().is_none(), "one Host is forwarded");
            assert!(!host.as_bytes().contains(&b'@'));
            http::uri::Authority::try_from(host.as_bytes()).expect("a forwarded host is an authority");
        }
    }
});
