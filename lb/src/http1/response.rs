//! Upstream response heads: parsed strictly (framing decided here: RFC 9112 §6.3), then
//! regenerated for the client with hop-by-hop fields dropped, the exchange's field edits
//! applied and framing written by us (chunked for a body without a length, or end-of-stream for
//! an HTTP/1.0 client).

use super::body::Encode;
use super::parse::trim_ows;
use super::request::hop_by_hop;
use super::{content_length, push_decimal};
use crate::fields::Edits;

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Content-Length.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Bytes of the head.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub framing: ResponseFraming,
    /// The upstream will close (or wants us to).
    pub close: bool,
    /// Fields parsed.
    pub header_count: usize,
    /// Content-Length to pass on for bodiless responses (HEAD).
    pub declared_length: Option<u64>,
}

/// The upstream sent something we cannot frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Field slots for [`parse_response`]; left uninitialised (initialising 128 slots per response
/// was a measurable share of the instructions per request).
pub type ResponseFields<'b> =
    [std::mem::MaybeUninit<httparse::Header<'b>>; super::parse::MAX_HEADERS];

/// Fresh uninitialised field slots.
pub fn response_fields<'b>() -> ResponseFields<'b> {
    [const { std::mem::MaybeUninit::uninit() }; super::parse::MAX_HEADERS]
}

/// Parses an upstream response head. `Ok(None)`: incomplete. On success also returns the
/// parsed fields (borrowed from `fields`).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    head_request: bool,
) -> Result<Option<(ResponseHead, &'h [httparse::Header<'b>])>, BadResponse> {
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, fields)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("too many fields")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let status = res.code.unwrap_or(0);
    // RFC 9110 §15: a three-digit code whose first digit is 1-5. httparse reads "004" as 4,
    // which lb would pass on as "HTTP/1.1 4" (found by the response_head fuzz target).
    if !(100..=599).contains(&status) {
        return Err(BadResponse("status code out of range"));
    }
    let http10 = res.version == Some(0);
    let mut close = http10;
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    for f in res.headers.iter() {
        let value = trim_ows(f.value);
        if f.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(BadResponse("Content-Length value"))?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.split(|&b| b == b',').map(trim_ows).rfind(|e| !e.is_empty());
            te = Some(last.is_some_and(|l| l.eq_ignore_ascii_case(b"chunked")));
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    if te.is_some() && length.is_some() {
        return Err(BadResponse("both Content-Length and Transfer-Encoding"));
    }
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        ResponseFraming::None
    } else {
        match (te, length) {
            (Some(true), _) => ResponseFraming::Chunked,
            (Some(false), _) => ResponseFraming::UntilClose,
            (None, Some(n)) => ResponseFraming::Length(n),
            (None, None) => ResponseFraming::UntilClose,
        }
    };
    if framing == ResponseFraming::UntilClose {
        close = true;
    }
    let head = ResponseHead {
        len,
        status,
        framing,
        close,
        header_count: res.headers.len(),
        declared_length: if bodiless { length } else { None },
    };
    Ok(Some((head, res.headers)))
}

/// The response head for the client. Returns how to encode the body and whether the client
/// connection must close after it.
pub fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: &[httparse::Header<'_>],
    client_http10: bool,
    client_keep_alive: bool,
    edits: &Edits<'_>,
) -> (Encode, bool) {
    let reason = reason_of(buf, head.status);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    // Fields the upstream's Connection nominated are hop-by-hop too (looked for only when it
    // sent a Connection field naming something other than close/keep-alive).
    let connection_lists: &[httparse::Header<'_>] = if fields.iter().any(|f| {
        f.name.len() == 10
            && f.name.eq_ignore_ascii_case("connection")
            && f.value.split(|&b| b == b',').map(trim_ows).any(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
            })
    }) {
        fields
    } else {
        &[]
    };
    let nominated = |name: &str| {
        connection_lists.iter().filter(|f| f.name.eq_ignore_ascii_case("connection")).any(|f| {
            f.value.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(name.as_bytes()))
        })
    };
    let switching = head.status == 101;
    for f in fields {
        // A 101 passes its Upgrade field on; everything hop-by-hop stays behind.
        let pass_upgrade = switching && f.name.eq_ignore_ascii_case("upgrade");
        if !pass_upgrade && (hop_by_hop(f.name) || nominated(f.name)) {
            continue;
        }
        if edits.drops(f.name) {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    edits.for_each_added(|name, value| super::field(out, name, value));
    let (encode, mut close) = match head.framing {
        ResponseFraming::None => {
            if let Some(n) = head.declared_length {
                content_length(out, n);
            }
            (Encode::Raw, false)
        }
        ResponseFraming::Length(n) => {
            content_length(out, n);
            (Encode::Raw, false)
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose if !client_http10 => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            (Encode::Chunked, false)
        }
        // An HTTP/1.0 client cannot take chunked: the body ends with the connection.
        ResponseFraming::Chunked | ResponseFraming::UntilClose => (Encode::Raw, true),
    };
    if !client_keep_alive {
        close = true;
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (encode, close)
}

/// The reason phrase the upstream sent, or the standard one.
fn reason_of(buf: &[u8], status: u16) -> &[u8] {
    // "HTTP/1.1 200 OK\r\n": the phrase starts after the 13th byte.
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(0);
    match buf.get(13..line_end) {
        Some(r) if !r.is_empty() && r.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) => r,
        _ => super::local::status_text(status).as_bytes(),
    }
}
