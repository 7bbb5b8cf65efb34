//! The upstream response head parser, on whatever a member sends: never panics, and a
//! parsed head leaves exactly the bytes after it in the buffer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stickyroute_relay::upstream::head::{MAX_RESPONSE_HEAD, parse_response};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(data);
    match parse_response(&mut buf, flags & 1 == 1) {
        Ok(Some(head)) => {
            assert!(data.len() - buf.len() <= MAX_RESPONSE_HEAD);
            assert!(data.ends_with(&buf));
            let _ = (head.status, head.framing, head.keep_alive);
        }
        Ok(None) => assert_eq!(buf.len(), data.len(), "an incomplete head takes nothing"),
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
