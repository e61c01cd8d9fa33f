//! Writing heads: the request head sent upstream and the response head sent to the client,
//! both regenerated from the parsed fields (hop-by-hop fields dropped, framing fields written
//! by us), plus lb's own small responses. Writes go into a reused per-request `Vec`: no
//! allocation once it has grown to the usual head size.

use std::io::Write;
use std::net::IpAddr;

use super::body::Encode;
use super::parse::{Framing, Head, trim_ows};
use table::format::ArchivedHeaderEdits;

/// How a request field is treated when the upstream head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Copied through.
    Pass,
    /// Hop-by-hop (RFC 9110 7.6.1) or a framing field we regenerate: dropped.
    HopByHop,
    /// Written by us (Host, Expect is ours to answer, X-Forwarded-*): dropped here.
    Ours,
    /// X-Forwarded-For: replaced by the client's address, or extended with it behind trusted
    /// proxies.
    ForwardedFor,
    /// X-Forwarded-Proto and -Host: ours, or passed on behind trusted proxies.
    ForwardedOther,
    /// `Forwarded` (RFC 7239): like X-Forwarded-For.
    Forwarded,
}

/// Classifies a field name. Dispatches on length first: most fields match no candidate
/// length and cost one comparison (a scan of every name per field was ~1k instructions per
/// request).
fn classify(name: &str) -> Field {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => Field::HopByHop,
        4 if is("host") => Field::Ours,
        6 if is("expect") => Field::Ours,
        9 if is("forwarded") => Field::Forwarded,
        7 if is("trailer") || is("upgrade") => Field::HopByHop,
        10 if is("connection") || is("keep-alive") => Field::HopByHop,
        14 if is("content-length") || is("http2-settings") => Field::HopByHop,
        15 if is("x-forwarded-for") => Field::ForwardedFor,
        16 if is("proxy-connection") || is("x-forwarded-host") => {
            if is("proxy-connection") {
                Field::HopByHop
            } else {
                Field::ForwardedOther
            }
        }
        17 if is("transfer-encoding") || is("x-forwarded-proto") => {
            if is("transfer-encoding") {
                Field::HopByHop
            } else {
                Field::ForwardedOther
            }
        }
        _ => Field::Pass,
    }
}

fn hop_by_hop(name: &str) -> bool {
    classify(name) == Field::HopByHop
}

/// A client address formatted once per connection (formatting an `IpAddr` with `fmt` on every
/// request cost ~900 instructions).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp {
    bytes: [u8; 48],
    len: u8,
    v6: bool,
    trusted: bool,
}

impl ClientIp {
    /// Formats `ip`. `trusted`: the peer is a proxy we trust (`--trusted-hops` > 0), so the
    /// forwarding fields it sends are kept and extended rather than replaced.
    pub fn new(ip: IpAddr, trusted: bool) -> ClientIp {
        let mut bytes = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        let _ = write!(cursor, "{ip}");
        let len = cursor.position() as u8;
        ClientIp { bytes, len, v6: ip.is_ipv6(), trusted }
    }

    /// Writes a `Forwarded` node for this address: `1.2.3.4`, or `"[2001:db8::1]"` (RFC 7239
    /// §6: an IPv6 node is bracketed and quoted).
    fn forwarded_node(&self, out: &mut Vec<u8>) {
        if self.v6 {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(self.as_bytes());
            out.extend_from_slice(b"]\"");
        } else {
            out.extend_from_slice(self.as_bytes());
        }
    }

    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends `n` in decimal (no `fmt` machinery on the request path).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Whether the route's edits drop a client field of this name (`remove`, or replaced by `set`).
fn edited(edits: &ArchivedHeaderEdits, name: &str) -> bool {
    (!edits.remove.is_empty() || !edits.set.is_empty())
        && (edits.remove.iter().any(|r| r.as_str().eq_ignore_ascii_case(name))
            || edits.set.iter().any(|f| f.name.as_str().eq_ignore_ascii_case(name)))
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// A URL rewrite's replacements for the upstream head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewritten<'a> {
    /// `Host` to send instead of the client's (`X-Forwarded-Host` keeps the client's).
    pub host: Option<&'a [u8]>,
    /// Request target (path and query) to send instead of the client's.
    pub target: Option<&'a [u8]>,
}

/// Writes the upstream request head for `head` (parsed from `buf` into `fields`), with the
/// route's header edits and URL rewrite applied.
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &Head,
    fields: &[httparse::Header<'_>],
    client: &ClientIp,
    edits: &[Option<&ArchivedHeaderEdits>],
    rewritten: Rewritten<'_>,
) {
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    let target = rewritten.target.unwrap_or(&buf[head.origin_form.clone()]);
    // An absolute-form target with an empty path (`http://h?q`, `http://h`) is sent with "/"
    // as its path (RFC 9112 §3.2.1); "GET ?q" upstream was found by the request_head fuzz
    // target.
    if !target.starts_with(b"/") && target != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Host: the absolute-form authority wins over the Host field (RFC 9112 3.2.2).
    let host: &[u8] = match (&head.authority, head.host) {
        (Some(a), _) => &buf[a.clone()],
        (None, Some(i)) => trim_ows(fields[i].value),
        (None, None) => b"",
    };
    out.extend_from_slice(b"Host: ");
    out.extend_from_slice(rewritten.host.unwrap_or(host));
    out.extend_from_slice(b"\r\n");
    let (mut proto_kept, mut host_kept) = (false, false);
    for (i, f) in fields.iter().enumerate() {
        let name = f.name;
        if i < 128 && head.connection_nominated & (1u128 << i) != 0 && !is_framing(name) {
            continue;
        }
        if i < 128 && head.dropped & (1u128 << i) != 0 {
            continue;
        }
        let class = classify(name);
        if matches!(class, Field::HopByHop | Field::Ours) {
            continue;
        }
        if edits.iter().flatten().any(|e| edited(e, name)) {
            continue;
        }
        // Forwarding fields (docs/ARCHITECTURE.md, "Forwarding headers"): the lists are
        // written whole after the loop (extended behind trusted proxies, replaced otherwise);
        // the proto/host a trusted proxy set are passed on, an untrusted peer's dropped.
        match class {
            Field::ForwardedFor | Field::Forwarded => continue,
            Field::ForwardedOther if !client.trusted => continue,
            Field::ForwardedOther if f.name.len() == 17 => proto_kept = true,
            Field::ForwardedOther => host_kept = true,
            _ => {}
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    for f in edits.iter().flatten().flat_map(|e| e.set.iter().chain(e.add.iter())) {
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Earlier hops' lists are kept only from a trusted peer, and not when a route removes them.
    let kept = |name: &str| client.trusted && !edits.iter().flatten().any(|e| edited(e, name));
    let xff = kept("x-forwarded-for");
    forwarding_list(out, "X-Forwarded-For", fields, xff, |out| {
        out.extend_from_slice(client.as_bytes())
    });
    let fwd = kept("forwarded");
    forwarding_list(out, "Forwarded", fields, fwd, |out| forwarded_element(out, client, host));
    if !proto_kept {
        out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    }
    if !host.is_empty() && !host_kept {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        if let Some(up) = fields.iter().find(|f| f.name.eq_ignore_ascii_case("upgrade")) {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(trim_ows(up.value));
            out.extend_from_slice(b"\r\n");
        }
    }
    match head.framing {
        Framing::None => {}
        Framing::Length(n) => content_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the field `name`: the earlier hops' values when `keep` (every field of that name,
/// in order), then this hop's, written by `own`.
fn forwarding_list(
    out: &mut Vec<u8>,
    name: &str,
    fields: &[httparse::Header<'_>],
    keep: bool,
    own: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for g in fields.iter().filter(|g| keep && g.name.eq_ignore_ascii_case(name)) {
        out.extend_from_slice(trim_ows(g.value));
        out.extend_from_slice(b", ");
    }
    own(out);
    out.extend_from_slice(b"\r\n");
}

/// This hop's `Forwarded` element: `for=…;host=…;proto=http` (the host is quoted: a port's
/// `:` is not a token character).
fn forwarded_element(out: &mut Vec<u8>, client: &ClientIp, host: &[u8]) {
    out.extend_from_slice(b"for=");
    client.forwarded_node(out);
    // A Host that would need escaping inside a quoted string is left out, not escaped.
    if !host.is_empty() && !host.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host);
        out.push(b'"');
    }
    out.extend_from_slice(b";proto=http");
}

/// Content-Length and Transfer-Encoding stay ours even when Connection nominates them.
fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

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

/// What a route changes in a response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseChanges<'a> {
    /// The rule's `ResponseHeaderModifier` edits.
    pub edits: Option<&'a ArchivedHeaderEdits>,
    /// Header lines of the rule's CORS policy (replacing the upstream's own CORS fields).
    pub cors: &'a [u8],
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
    changes: ResponseChanges<'_>,
) -> (Encode, bool) {
    let ResponseChanges { edits, cors } = changes;
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
        if edits.is_some_and(|e| edited(e, f.name)) {
            continue;
        }
        if !cors.is_empty() && crate::cors::OWNED.iter().any(|o| f.name.eq_ignore_ascii_case(o)) {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    for f in edits.into_iter().flat_map(|e| e.set.iter().chain(e.add.iter())) {
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(cors);
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
        _ => status_text(status).as_bytes(),
    }
}

/// Standard reason phrases for the statuses lb produces itself.
pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// A redirect from lb itself: status, `Location`, no body.
pub fn redirect_response(out: &mut Vec<u8>, status: u16, location: &str, close: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nLocation: {location}\r\nContent-Length: 0\r\n",
        status_text(status)
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// lb's answer to an allowed CORS preflight: 200, the policy's header lines, no body.
pub fn preflight_response(out: &mut Vec<u8>, lines: &[u8], close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    out.extend_from_slice(lines);
    out.extend_from_slice(b"Content-Length: 0\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer from lb itself: status, a one-line text body, and `Connection: close` when the
/// connection ends after it.
pub fn local_response(out: &mut Vec<u8>, status: u16, close: bool, head_request: bool) {
    let text = status_text(status);
    let body_len = 4 + text.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n"
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        let _ = writeln!(out, "{status} {text}");
    }
}

#[cfg(test)]
mod tests;
