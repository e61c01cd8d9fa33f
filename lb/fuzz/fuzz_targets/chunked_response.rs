//! Chunked response bodies (upstream → client): decoded raw for an HTTP/1.0 client or
//! re-chunked for 1.1, with no size limit (responses have none); split-invariant both ways,
//! and the two encodings carry the same data.

#![no_main]

use lb::http1::body::{BodyDecoder, Encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, body) = data.split_at(data.len().min(8));
    let raw =
        lb_fuzz::split_invariant(|| BodyDecoder::chunked(Encode::Raw, u64::MAX, 4096), body, cuts);
    let chunked = || BodyDecoder::chunked(Encode::Chunked, u64::MAX, 4096);
    let rechunked = lb_fuzz::split_invariant_as(chunked, body, cuts, lb_fuzz::dechunk);
    assert_eq!(raw.is_some(), rechunked.is_some(), "the encodings disagree on validity");
    if let (Some(raw), Some(rechunked)) = (raw, rechunked) {
        assert_eq!(raw, rechunked);
    }
});
