//! HTTP/1.x: strict request parsing (`parse`), body framing (`body`), the upstream request head
//! (`request`), upstream response heads and the client's (`response`) and lb's own answers
//! (`local`). Pure functions over byte slices: no I/O, and nothing about routes or filters
//! (field changes arrive as [`crate::fields::Edits`]), so all of it is unit-tested and fuzzable
//! without sockets.

pub mod parse;
pub mod body;
pub mod request;
pub mod response;
pub mod local;

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

/// Appends one field line.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Content-Length and Transfer-Encoding stay ours even when Connection nominates them.
fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

#[cfg(test)]
mod tests;
