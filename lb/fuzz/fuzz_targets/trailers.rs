//! The trailer section (after the last chunk): lb's verdict must equal a reference reading of
//! RFC 9112 §7.1.2 / §5 written independently here: field lines of a token name, `:`, a value
//! of HTAB, SP, VCHAR or obs-text, each ended by CRLF, then an empty line; at most 16 KiB.
//! For a valid section, the fields lb passes on must be exactly the reference's fields (value
//! trimmed of SP/HTAB) that `forwardable_trailer` allows, and the re-chunked output must be
//! the last chunk, those fields and the empty line — nothing else of the sender's bytes.

#![no_main]

use lb::http1::body::{BodyDecoder, Encode, forwardable_trailer};
use libfuzzer_sys::fuzz_target;

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Some(true)`: a complete valid section; `Some(false)`: invalid; `None`: valid so far.
fn reference(t: &[u8]) -> Option<bool> {
    let mut rest = t;
    loop {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return if partial_ok(rest) { None } else { Some(false) };
        };
        let line = &rest[..end];
        if line.is_empty() {
            return Some(true);
        }
        if !line_ok(line) {
            return Some(false);
        }
        rest = &rest[end + 2..];
    }
}

fn value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80
}

fn line_ok(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
    colon > 0
        && line[..colon].iter().all(|&b| tchar(b))
        && line[colon + 1..].iter().all(|&b| value_byte(b))
}

/// A line without its CRLF yet: could it still become a valid line (or the final empty one)?
fn partial_ok(p: &[u8]) -> bool {
    if p.is_empty() || p == b"\r" {
        return true;
    }
    let Some(colon) = p.iter().position(|&b| b == b':') else {
        return p.iter().all(|&b| tchar(b));
    };
    if colon == 0 || !p[..colon].iter().all(|&b| tchar(b)) {
        return false;
    }
    let v = &p[colon + 1..];
    v.iter().enumerate().all(|(i, &b)| value_byte(b) || (b == b'\r' && i + 1 == v.len()))
}

fuzz_target!(|data: &[u8]| {
    // Stay within lb's 16 KiB trailer cap, where the two readings must agree exactly.
    if data.len() > 8 * 1024 {
        return;
    }
    let mut body = b"0\r\n".to_vec();
    body.extend_from_slice(data);
    let mut d = BodyDecoder::chunked(Encode::Raw, 1 << 20, 4096);
    let mut out = Vec::new();
    let ours = match d.decode(&body, &mut out) {
        Err(_) => Some(false),
        Ok(_) if d.is_done() => Some(true),
        Ok(_) => None,
    };
    assert_eq!(ours, reference(data), "{:?}", String::from_utf8_lossy(data));
    assert!(out.is_empty(), "no trailer byte in a raw body: trailers() hands them over");
    if ours != Some(true) {
        return;
    }
    let want = fields(data);
    let got: Vec<(Vec<u8>, Vec<u8>)> = d.trailers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
    assert_eq!(got, want);
    let mut chunked = BodyDecoder::chunked(Encode::Chunked, 1 << 20, 4096);
    let mut rechunked = Vec::new();
    chunked.decode(&body, &mut rechunked).unwrap();
    let mut expected = b"0\r\n".to_vec();
    for (n, v) in &want {
        expected.extend_from_slice(n);
        expected.extend_from_slice(b": ");
        expected.extend_from_slice(v);
        expected.extend_from_slice(b"\r\n");
    }
    expected.extend_from_slice(b"\r\n");
    assert_eq!(rechunked, expected);
});

/// The reference's fields of a valid section that may be passed on.
fn fields(t: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for line in t.split(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\r") else { break };
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':').unwrap();
        let name = &line[..colon];
        let mut value = &line[colon + 1..];
        while let [b' ' | b'\t', rest @ ..] = value {
            value = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = value {
            value = rest;
        }
        if forwardable_trailer(name) {
            out.push((name.to_vec(), value.to_vec()));
        }
    }
    out
}
