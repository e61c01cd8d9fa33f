//! lb's own answers: a status with a one-line text body, a redirect, a CORS preflight.

use std::io::Write;

use crate::fields::FieldList;

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
        421 => "Misdirected Request",
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

/// lb's answer to an allowed CORS preflight: 200, the policy's fields, no body.
pub fn preflight_response(out: &mut Vec<u8>, fields: &FieldList, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in fields.iter() {
        super::field(out, name, value);
    }
    out.extend_from_slice(b"Content-Length: 0\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The gRPC status lb's own answer with HTTP `status` stands for: the gRPC project's
/// HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md), refined where lb knows more — its
/// own timeouts are DEADLINE_EXCEEDED, no route is UNIMPLEMENTED (the GRPCRoute spec), an
/// invalid backend reference INTERNAL, limits RESOURCE_EXHAUSTED.
pub fn grpc_status(status: u16) -> u8 {
    match status {
        404 | 501 => 12,
        408 | 504 => 4,
        413 | 414 | 431 => 8,
        400 | 500 => 13,
        401 => 16,
        403 => 7,
        421 | 429 | 502 | 503 => 14,
        _ => 2,
    }
}

/// lb's own answer to a gRPC request: HTTP 200 with the gRPC status in the head and no body
/// (over HTTP/2, a trailers-only response: one HEADERS frame with END_STREAM), never a text
/// body a gRPC client cannot read.
pub fn grpc_response(out: &mut Vec<u8>, status: u16, close: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\ngrpc-status: {}\r\ngrpc-message: {}\r\nContent-Length: 0\r\n",
        grpc_status(status),
        // ASCII without `%`: nothing to percent-encode.
        status_text(status),
    );
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
