//! Strict HTTP/1.1 request-head parsing (RFC 9112), straight out of the connection buffer.
//!
//! The request line is parsed here by hand: httparse accepts only `HTTP/1.0` and `HTTP/1.1`,
//! while RFC 9112 wants `HTTP/1.2` served as 1.1 and `HTTP/2.0` answered with 505. Field lines
//! go through `httparse::parse_headers` into a fixed array the caller owns, so nothing is copied;
//! before that, one pass over the head rejects bare CR and bare LF (httparse accepts a lone LF
//! as a line end, which is how requests get smuggled past a lenient front end).
//!
//! Then the framing rules: Content-Length digits only and at most once, Transfer-Encoding only
//! in 1.1 with `chunked` once and last, never both, Host exactly once in 1.1. Everything a strict
//! proxy owes `../shared/http-cases` is decided here, before a byte goes upstream.

use std::ops::Range;

use table::wire::is_host_field;
pub use table::wire::is_tchar;

/// Empty lines (CRLF) ignored before a request line: RFC 9112 §2.2 asks to ignore "at least
/// one" (old clients sent a CRLF after a POST body). More is not a client's mistake, and an
/// unbounded number would let a peer grow the input buffer for the whole header timeout.
pub const MAX_LEADING_EMPTY_LINES: usize = 2;

pub use crate::settings::{Limits, Underscores};

/// Most field lines any configuration may allow: the size of the on-stack header array, and
/// the width of [`Head::connection_nominated`].
pub const MAX_HEADERS: usize = 128;

/// Why a request is refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: malformed.
    BadRequest(&'static str),
    /// 413: declared body over the limit.
    PayloadTooLarge,
    /// 414: request line over the head limit.
    UriTooLong,
    /// 417: an Expect other than 100-continue.
    ExpectationFailed,
    /// 431: head over the limit or too many fields.
    HeadersTooLarge,
    /// 501: a transfer coding or method form we do not implement.
    NotImplemented(&'static str),
    /// 505: HTTP major version other than 1.
    VersionNotSupported,
}

impl Reject {
    /// Short reason for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(r) | Reject::NotImplemented(r) => r,
            Reject::PayloadTooLarge => "declared body over the limit",
            Reject::UriTooLong => "request line over the limit",
            Reject::ExpectationFailed => "unsupported Expect",
            Reject::HeadersTooLarge => "head over the limit",
            Reject::VersionNotSupported => "HTTP major version is not 1",
        }
    }
}

/// How the message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head. Ranges index the buffer given to [`parse`]; header fields stay in
/// the caller's array.
#[derive(Debug, Clone)]
pub struct Head {
    /// Bytes of the head including the blank line (and any leading empty lines).
    pub len: usize,
    /// Method token.
    pub method: Range<usize>,
    /// Path of the target (origin-form, or the path part of an absolute-form target).
    pub path: Range<usize>,
    /// Query without `?` (empty range when none).
    pub query: Range<usize>,
    /// Path and query as forwarded (origin-form).
    pub origin_form: Range<usize>,
    /// Authority of an absolute-form target; it replaces Host (RFC 9112 3.2.2).
    pub authority: Option<Range<usize>>,
    /// `true` for HTTP/1.0.
    pub http10: bool,
    /// Number of field lines in the caller's array.
    pub header_count: usize,
    /// Index of the Host field, if any.
    pub host: Option<usize>,
    /// Body framing.
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// A protocol upgrade the proxy will pass on (HTTP/1.1, Connection: upgrade, not h2c).
    pub upgrade: bool,
    /// Field names the Connection header nominated as hop-by-hop (bit per field index).
    pub connection_nominated: u128,
    /// Method is HEAD (the response has no body).
    pub head_method: bool,
    /// Fields not to forward (names with `_` under [`Underscores::Drop`]; bit per index).
    pub dropped: u128,
}

impl Head {
    /// The body bytes that came with the head in `buf`: `Some(&[])` without a body, `None`
    /// when the body is not all there yet (or is chunked), so the request cannot be copied
    /// whole (request mirroring).
    pub fn whole_body<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        match self.framing {
            Framing::None => Some(&[]),
            Framing::Length(n) => {
                let end = self.len.checked_add(usize::try_from(n).ok()?)?;
                buf.get(self.len..end)
            }
            Framing::Chunked => None,
        }
    }
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
    limits: &Limits,
) -> Result<Option<Head>, Reject> {
    // RFC 9112 2.2: ignore empty lines before the request line, a few at most.
    let mut start = 0;
    while buf.get(start..start + 2) == Some(b"\r\n") {
        start += 2;
        if start / 2 > MAX_LEADING_EMPTY_LINES {
            return Err(Reject::BadRequest("empty lines before the request line"));
        }
    }
    if buf.len() > start && buf[start] == b'\n' {
        return Err(Reject::BadRequest("bare LF"));
    }
    let Some(line_len) = find_crlf(&buf[start..]) else {
        check_partial(&buf[start..])?;
        return if buf.len() - start > limits.max_head {
            Err(Reject::UriTooLong)
        } else {
            Ok(None)
        };
    };
    if line_len > limits.max_head {
        return Err(Reject::UriTooLong);
    }
    let line = start..start + line_len;
    let rl = request_line(buf, line)?;
    let fields_start = start + line_len + 2;
    // Find the end of the head and check every line ending on the way.
    let Some(end) = head_end(&buf[fields_start..])? else {
        return if buf.len() > limits.max_head { Err(Reject::HeadersTooLarge) } else { Ok(None) };
    };
    let len = fields_start + end;
    if len > limits.max_head {
        return Err(Reject::HeadersTooLarge);
    }
    let max = limits.max_headers.min(headers.len());
    let count = match httparse::parse_headers(&buf[fields_start..len], &mut headers[..max]) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed.len(),
        Ok(httparse::Status::Partial) => return Err(Reject::BadRequest("malformed field line")),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => return Err(Reject::BadRequest("malformed field line")),
    };
    let fields = &headers[..count];
    let mut head = Head {
        len,
        method: rl.method.clone(),
        path: rl.path,
        query: rl.query,
        origin_form: rl.origin_form,
        authority: rl.authority,
        http10: rl.http10,
        header_count: count,
        host: None,
        framing: Framing::None,
        keep_alive: !rl.http10,
        expect_continue: false,
        upgrade: false,
        connection_nominated: 0,
        head_method: &buf[rl.method] == b"HEAD",
        dropped: 0,
    };
    semantics(&mut head, fields, limits)?;
    Ok(Some(head))
}

struct RequestLine {
    method: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
    origin_form: Range<usize>,
    authority: Option<Range<usize>>,
    http10: bool,
}

fn request_line(buf: &[u8], line: Range<usize>) -> Result<RequestLine, Reject> {
    let bytes = &buf[line.clone()];
    let sp1 = bytes.iter().position(|&b| b == b' ').ok_or(Reject::BadRequest("request line"))?;
    let method = &bytes[..sp1];
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::BadRequest("method is not a token"));
    }
    let rest = &bytes[sp1 + 1..];
    let sp2 = rest.iter().position(|&b| b == b' ').ok_or(Reject::BadRequest("request line"))?;
    let target = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(Reject::BadRequest("request target"));
    }
    let http10 = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Err(Reject::VersionNotSupported);
            }
            *minor == b'0'
        }
        _ => return Err(Reject::BadRequest("HTTP version")),
    };
    let base = line.start;
    let method_range = base..base + sp1;
    let target_start = base + sp1 + 1;
    let target_range = target_start..target_start + sp2;
    let (authority, origin_form) = if target[0] == b'/' {
        (None, target_range)
    } else if let Some(after) = strip_scheme(target) {
        // absolute-form: authority up to the path, no userinfo.
        let auth_start = target_range.end - after.len();
        let auth_len = after.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(after.len());
        let auth = &after[..auth_len];
        if auth.is_empty() || auth.contains(&b'@') {
            return Err(Reject::BadRequest("absolute-form authority"));
        }
        let path_start = auth_start + auth_len;
        (Some(auth_start..path_start), path_start..target_range.end)
    } else if target == b"*" && method == b"OPTIONS" {
        (None, target_range)
    } else if method == b"CONNECT" {
        return Err(Reject::NotImplemented("CONNECT"));
    } else {
        return Err(Reject::BadRequest("request target form"));
    };
    let of = &buf[origin_form.clone()];
    if let Some(auth) = &authority
        && !is_host_field(&buf[auth.clone()])
    {
        return Err(Reject::BadRequest("absolute-form authority"));
    }
    if of != b"*" {
        target_grammar(of)?;
    }
    let (path, query) = match of.iter().position(|&b| b == b'?') {
        Some(q) => {
            (origin_form.start..origin_form.start + q, origin_form.start + q + 1..origin_form.end)
        }
        None => (origin_form.clone(), origin_form.end..origin_form.end),
    };
    Ok(RequestLine { method: method_range, path, query, origin_form, authority, http10 })
}

/// RFC 3986 / RFC 9112 §3.2: an origin-form target (or an absolute-form's path and query) is
/// `pchar`s, `/` and `?` only — unreserved, sub-delims, `:`, `@`, and `%` with two hex digits.
/// So no fragment (`#`), no `"<>\\^`{|}[]`, no space, control or non-ASCII byte, and no broken
/// percent-encoding. (HAProxy refuses the same by default; lenient parsers that pass them on
/// let a backend see a different path than the one routed on.)
fn target_grammar(target: &[u8]) -> Result<(), Reject> {
    let mut i = 0;
    while i < target.len() {
        let b = target[i];
        if b == b'%' {
            match target.get(i + 1..i + 3) {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return Err(Reject::BadRequest("broken percent-encoding in the target")),
            }
            continue;
        }
        if !TARGET_CHAR[usize::from(b)] {
            return Err(Reject::BadRequest(if b == b'#' {
                "fragment in the request target"
            } else {
                "character not allowed in the request target"
            }));
        }
        i += 1;
    }
    Ok(())
}

/// Bytes allowed as themselves in a request target's path and query.
const TARGET_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let allowed = b"-._~!$&'()*+,;=:@/?";
    let mut i = 0;
    while i < allowed.len() {
        t[allowed[i] as usize] = true;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        if (b as u8).is_ascii_alphanumeric() {
            t[b] = true;
        }
        b += 1;
    }
    t
};

/// `http://` or `https://` (scheme case-insensitive): the rest of the target.
fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

fn semantics(
    head: &mut Head,
    fields: &[httparse::Header<'_>],
    limits: &Limits,
) -> Result<(), Reject> {
    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut chunked_count = 0;
    let mut other_coding = false;
    let mut chunked_last = false;
    let mut te_elements = 0;
    let mut connection_upgrade = false;
    let mut upgrade_value: Option<&[u8]> = None;
    for (i, f) in fields.iter().enumerate() {
        let name = f.name.as_bytes();
        let value = trim_ows(f.value);
        if limits.underscores != Underscores::Allow && name.contains(&b'_') {
            if limits.underscores == Underscores::Reject {
                return Err(Reject::BadRequest("underscore in a field name"));
            }
            // Dropped: never forwarded (`message::request_head` skips it) nor read here.
            if i < 128 {
                head.dropped |= 1u128 << i;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            if head.host.is_some() {
                return Err(Reject::BadRequest("more than one Host"));
            }
            if !is_host_field(value) {
                return Err(Reject::BadRequest("Host value"));
            }
            head.host = Some(i);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Reject::BadRequest("more than one Content-Length"));
            }
            content_length = Some(parse_length(value, limits)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            for element in value.split(|&b| b == b',') {
                let element = trim_ows(element);
                if element.is_empty() {
                    continue;
                }
                te_elements += 1;
                if element.eq_ignore_ascii_case(b"chunked") {
                    chunked_count += 1;
                    chunked_last = true;
                } else {
                    let coding = element.split(|&b| b == b';').next().map(trim_ows).unwrap_or(b"");
                    if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                        return Err(Reject::BadRequest("Transfer-Encoding value"));
                    }
                    other_coding = true;
                    chunked_last = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = !fields_say_close(fields);
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
                for (j, g) in fields.iter().enumerate().take(128) {
                    if g.name.as_bytes().eq_ignore_ascii_case(token) {
                        head.connection_nominated |= 1u128 << j;
                    }
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = true;
            } else {
                return Err(Reject::ExpectationFailed);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_value = Some(value);
        }
    }
    if te_seen {
        if head.http10 {
            return Err(Reject::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        if content_length.is_some() {
            return Err(Reject::BadRequest("both Content-Length and Transfer-Encoding"));
        }
        if te_elements == 0 || chunked_count > 1 || !chunked_last {
            return Err(Reject::BadRequest("chunked must be the final coding, once"));
        }
        if other_coding {
            return Err(Reject::NotImplemented("transfer coding"));
        }
        head.framing = Framing::Chunked;
    } else if let Some(n) = content_length {
        head.framing = Framing::Length(n);
    }
    if head.host.is_none() && !head.http10 {
        return Err(Reject::BadRequest("missing Host"));
    }
    // RFC 9110 7.8: Upgrade in HTTP/1.0 is ignored. h2c is never passed through (smuggling).
    if let (false, true, Some(v)) = (head.http10, connection_upgrade, upgrade_value) {
        head.upgrade = !contains_token(v, b"h2c");
    }
    Ok(())
}

fn fields_say_close(fields: &[httparse::Header<'_>]) -> bool {
    fields
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case("connection") && contains_token(f.value, b"close"))
}

fn contains_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// 1*DIGIT, nothing else. Over the limit (or over u64) is 413.
fn parse_length(value: &[u8], limits: &Limits) -> Result<u64, Reject> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest("Content-Length value"));
    }
    let mut n: u64 = 0;
    for &d in value {
        n = match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))) {
            Some(n) => n,
            None => return Err(Reject::PayloadTooLarge),
        };
    }
    if n > limits.max_body {
        return Err(Reject::PayloadTooLarge);
    }
    Ok(n)
}

/// Finds the blank line ending the field section, checking that every line ends in CRLF and
/// that no CR stands alone. `Ok(None)` when the blank line has not arrived.
fn head_end(fields: &[u8]) -> Result<Option<usize>, Reject> {
    let mut pos = 0;
    loop {
        let Some(len) = find_crlf(&fields[pos..]) else {
            check_partial(&fields[pos..])?;
            return Ok(None);
        };
        let line = &fields[pos..pos + len];
        if line.is_empty() {
            return Ok(Some(pos + 2));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Reject::BadRequest("obsolete line folding"));
        }
        pos += len + 2;
    }
}

/// Length of the line at the start of `b` if a CRLF ends it; errors on a bare CR or LF first.
fn find_crlf(b: &[u8]) -> Option<usize> {
    let lf = b.iter().position(|&c| c == b'\n' || c == b'\r')?;
    if b[lf] == b'\r' && b.get(lf + 1) == Some(&b'\n') {
        return Some(lf);
    }
    None
}

/// In a line without CRLF yet: a bare LF, or a CR followed by anything but LF, is an error
/// now; a CR at the very end may still be followed by LF.
fn check_partial(b: &[u8]) -> Result<(), Reject> {
    match b.iter().position(|&c| c == b'\n' || c == b'\r') {
        None => Ok(()),
        Some(i) if b[i] == b'\r' && i + 1 == b.len() => Ok(()),
        Some(_) => Err(Reject::BadRequest("bare CR or LF")),
    }
}

/// Trims optional whitespace (SP and HTAB only).
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests;
