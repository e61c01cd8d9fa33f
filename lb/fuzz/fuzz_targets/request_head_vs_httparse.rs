//! Differential: where lb accepts a complete HTTP/1.0 or 1.1 request head, httparse (the field
//! parser the ecosystem relies on, and a stricter request-line reader than many) must accept
//! it too and see the same method, target and fields. lb is stricter in many places
//! (bare LF, obs-fold, target grammar, `_` in names, Host rules), so only that direction must
//! hold; a head lb accepts and httparse refuses is a leniency bug in lb.

#![no_main]

use lb::http1::parse::{self, Limits, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Some(head)) = parse::parse(data, &mut fields, &Limits::default()) else { return };
    // lb serves HTTP/1.2+ as 1.1 (RFC 9112); httparse knows only 1.0 and 1.1.
    let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    let start = data[..line_end].iter().rposition(|&b| b == b' ').map_or(0, |i| i + 1);
    if !matches!(&data[start..line_end], b"HTTP/1.1" | b"HTTP/1.0") {
        return;
    }
    // lb ignores up to two empty lines before the request line; httparse ignores them too.
    let mut theirs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut theirs);
    match req.parse(&data[..head.len]) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, head.len, "the two parsers end the head at different bytes");
            assert_eq!(req.method.map(str::as_bytes), Some(&data[head.method.clone()]));
            let fields = &fields[..head.header_count];
            assert_eq!(req.headers.len(), fields.len(), "different field counts");
            for (a, b) in req.headers.iter().zip(fields) {
                assert_eq!(a.name, b.name);
                assert_eq!(a.value, b.value);
            }
        }
        other => panic!("lb accepted a head httparse refuses: {other:?}"),
    }
});
