//! Shared oracles for lb's fuzz targets: every decoder of untrusted bytes must give a value or
//! an error, never a panic; beyond that, each target checks a property a strict proxy owes.

use lb::http1::body::BodyDecoder;
use lb::http1::request::{self, ClientIp, Rewritten};
use lb::http1::parse::{self, Limits, MAX_HEADERS};

/// Decodes `input` with `make()` in one piece and again split at the cut points derived from
/// `cuts`; the result (error or bytes out, consumed count, done) must not depend on the
/// splits. Returns the one-piece output when the body decoded whole.
pub fn split_invariant(
    make: impl Fn() -> BodyDecoder,
    input: &[u8],
    cuts: &[u8],
) -> Option<Vec<u8>> {
    split_invariant_as(make, input, cuts, <[u8]>::to_vec)
}

/// [`split_invariant`] comparing outputs through `canon` (re-chunked output has chunk sizes
/// that follow the reads; what must agree is the data it carries).
pub fn split_invariant_as(
    make: impl Fn() -> BodyDecoder,
    input: &[u8],
    cuts: &[u8],
    canon: impl Fn(&[u8]) -> Vec<u8>,
) -> Option<Vec<u8>> {
    let canonical = |r: (Result<Vec<u8>, String>, usize, bool)| (r.0.map(|o| canon(&o)), r.1, r.2);
    let whole = canonical(run(&mut make(), &[input]));
    let mut pieces = Vec::new();
    let mut rest = input;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let at = usize::from(c) % (rest.len() + 1);
        let (a, b) = rest.split_at(at);
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    let split = canonical(run(&mut make(), &pieces));
    // On an error only the verdict must agree: how much was consumed before the error depends
    // on where reads ended.
    match (&whole, &split) {
        ((Err(a), _, _), (Err(b), _, _)) => assert_eq!(a, b, "different errors for one input"),
        _ => assert_eq!(whole, split, "the decoder's verdict depends on how the input was split"),
    }
    match whole {
        (Ok(out), _, true) => Some(out),
        _ => None,
    }
}

/// Feeds pieces as a connection would: unconsumed bytes are kept and more appended.
fn run(d: &mut BodyDecoder, pieces: &[&[u8]]) -> (Result<Vec<u8>, String>, usize, bool) {
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0;
    for p in pieces {
        pending.extend_from_slice(p);
        loop {
            match d.decode(&pending, &mut out) {
                Ok(0) => break,
                Ok(n) => {
                    consumed += n;
                    pending.drain(..n);
                    if d.is_done() {
                        break;
                    }
                }
                Err(e) => return (Err(format!("{e:?}")), consumed, false),
            }
        }
        if d.is_done() {
            break;
        }
    }
    (Ok(out), consumed, d.is_done())
}

/// Parses a request head; when it is accepted, the upstream head lb writes for it (with
/// `edits`) must itself parse, under the same limits, as one request with the same method.
/// A head lb writes that it would refuse to read means something leaked through (a CR, LF,
/// or a field that changes framing).
pub fn request_roundtrip(data: &[u8], edits: &[Option<&table::format::ArchivedHeaderEdits>]) {
    let limits = Limits::default();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Some(head)) = parse::parse(data, &mut fields, &limits) else { return };
    let fields = &fields[..head.header_count];
    let mut out = Vec::new();
    let client =
        ClientIp::new("192.0.2.7".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), false);
    let edits = lb::Edits::route([edits.first().copied().flatten(), None]);
    request::request_head(&mut out, data, &head, fields, &client, &edits, Rewritten::default());
    let mut again = [httparse::EMPTY_HEADER; MAX_HEADERS];
    // Routes may add fields with `_` (an operator's choice), so read them back allowing it.
    let relaxed = Limits {
        max_head: usize::MAX,
        max_headers: MAX_HEADERS,
        underscores: parse::Underscores::Allow,
        ..limits
    };
    match parse::parse(&out, &mut again, &relaxed) {
        Ok(Some(h)) => {
            assert_eq!(h.len, out.len(), "the upstream head is more than one head");
            assert_eq!(&out[h.method.clone()], &data[head.method.clone()]);
            assert_eq!(h.framing, head.framing, "framing changed on the way upstream");
        }
        other => panic!(
            "lb wrote an upstream head it would refuse ({other:?}):\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// The data a complete chunked body carries (lb's own output must always be one).
pub fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut d = BodyDecoder::chunked(lb::http1::body::Encode::Raw, u64::MAX, 4096);
    let mut out = Vec::new();
    let used = d.decode(body, &mut out).expect("lb's chunked output does not decode");
    assert!(d.is_done() || used == body.len(), "lb's chunked output is cut short");
    out
}
