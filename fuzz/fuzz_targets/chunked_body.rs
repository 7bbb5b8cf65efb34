//! The chunked body decoder, fed a member's bytes in pieces of fuzzer-chosen sizes: never
//! panics, never hands on more data bytes than arrived, and decodes the same whatever the
//! pieces are.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stickyroute_relay::upstream::chunked::{ChunkedDecoder, Step};

/// Decodes `input` fed `piece` bytes at a time; the data, and whether it ended cleanly.
fn decode(input: &[u8], piece: usize) -> (Vec<u8>, Option<bool>) {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Step::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Step::Trailers(_)) => {}
            Ok(Step::End) => return (data, Some(true)),
            Ok(Step::NeedMore) if fed < input.len() => {
                let n = piece.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(Step::NeedMore) => return (data, None),
            Err(_) => return (data, Some(false)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let (whole, whole_end) = decode(input, input.len().max(1));
    let (pieces, pieces_end) = decode(input, usize::from(piece).max(1));
    assert!(whole.len() <= input.len());
    if whole_end.is_some() && pieces_end.is_some() {
        assert_eq!(whole_end, pieces_end);
        if whole_end == Some(true) {
            assert_eq!(whole, pieces, "the same body whatever the pieces");
        }
    }
});
