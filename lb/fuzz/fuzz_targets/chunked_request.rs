//! Chunked request bodies (lb → upstream re-chunked): the verdict never depends on how the
//! bytes were split across reads, and what lb re-chunks decodes to the data the original
//! carried.

#![no_main]

use lb::http1::body::{BodyDecoder, Encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, body) = data.split_at(data.len().min(8));
    let chunked = || BodyDecoder::chunked(Encode::Chunked, 1 << 20, 4096);
    let raw = || BodyDecoder::chunked(Encode::Raw, 1 << 20, 4096);
    let carried = lb_fuzz::split_invariant(raw, body, cuts);
    let rechunked = lb_fuzz::split_invariant_as(chunked, body, cuts, lb_fuzz::dechunk);
    assert_eq!(carried.is_some(), rechunked.is_some(), "the encodings disagree on validity");
    if let (Some(carried), Some(rechunked)) = (carried, rechunked) {
        assert_eq!(carried, rechunked);
    }
});
