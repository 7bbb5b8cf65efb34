//! The PROXY protocol header a trusted load balancer sends first: any bytes either ask for
//! more, give a header no longer than the input, or an error, without panicking; and a
//! header, once complete, parses the same whatever bytes follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyroute_relay::serve::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((from, length))) = parse(data) else {
        return;
    };
    assert!(length <= data.len());
    assert_eq!(parse(&data[..length]), Ok(Some((from, length))));
    for cut in 0..length {
        assert!(matches!(parse(&data[..cut]), Ok(None)), "a prefix of a header asks for more");
    }
});
