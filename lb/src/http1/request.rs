//! The request head lb sends upstream, regenerated from the parsed client head: hop-by-hop
//! fields and framing fields dropped (framing is written by us), the exchange's field edits and
//! URL rewrite applied, the forwarding fields written per the trust model
//! (docs/ARCHITECTURE.md, "Forwarding headers"). Writes go into a reused per-request `Vec`:
//! no allocation once it has grown to the usual head size.

use std::io::Write;
use std::net::IpAddr;

use super::parse::{Framing, Head, trim_ows};
use super::{content_length, is_framing};
use table::format::ArchivedClientCertValue;

use crate::fields::Edits;

/// How a request field is treated when the upstream head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
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
pub(super) fn classify(name: &str) -> Field {
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
        // Says which client certificate lb verified: only lb writes it (a client's own is
        // dropped, as Envoy's SANITIZE_SET does).
        23 if is("x-forwarded-client-cert") => Field::Ours,
        _ => Field::Pass,
    }
}

/// Whether a field is hop-by-hop (RFC 9110 §7.6.1) or a framing field lb writes itself.
pub(crate) fn hop_by_hop(name: &str) -> bool {
    classify(name) == Field::HopByHop
}

/// A client address formatted once per connection (formatting an `IpAddr` with `fmt` on every
/// request cost ~900 instructions).
#[derive(Debug, Clone)]
pub struct ClientIp {
    bytes: [u8; 48],
    len: u8,
    v6: bool,
    trusted: bool,
    tls: bool,
    /// The connection's verified client certificate.
    cert: Option<std::rc::Rc<ClientCert>>,
}

/// A TLS client's verified certificate in each form a rule may send it, made once per
/// connection (at the handshake), so a request only copies bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the DER certificate, lower-case hex.
    pub hash: Box<str>,
    /// The subject distinguished name (RFC 4514); empty when it is not printable ASCII.
    pub subject: Box<str>,
    /// `Hash=<hash>;Subject="<subject>"` (Envoy's `X-Forwarded-Client-Cert` element; no
    /// Subject part when the subject is empty).
    pub xfcc: Box<str>,
    /// The DER certificate as an RFC 8941 byte sequence, `:base64:` (RFC 9440 `Client-Cert`).
    pub certificate: Box<str>,
}

impl ClientCert {
    /// The form `value` names; empty when there is nothing to say (a subject that is not
    /// printable).
    pub fn value(&self, value: &ArchivedClientCertValue) -> &str {
        match value {
            ArchivedClientCertValue::Xfcc => &self.xfcc,
            ArchivedClientCertValue::Subject => &self.subject,
            ArchivedClientCertValue::Hash => &self.hash,
            ArchivedClientCertValue::Certificate => &self.certificate,
        }
    }
}

impl ClientIp {
    /// Formats `ip`. `trusted`: the peer is a proxy we trust (`--trusted-hops` > 0), so the
    /// forwarding fields it sends are kept and extended rather than replaced.
    pub fn new(ip: IpAddr, trusted: bool) -> ClientIp {
        let mut bytes = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        let _ = write!(cursor, "{ip}");
        let len = cursor.position() as u8;
        ClientIp { bytes, len, v6: ip.is_ipv6(), trusted, tls: false, cert: None }
    }

    /// The connection's verified client certificate.
    pub fn with_client_cert(self, cert: Option<std::rc::Rc<ClientCert>>) -> ClientIp {
        ClientIp { cert, ..self }
    }

    /// Marks the connection as TLS (lb terminated it): the forwarding fields say `https`.
    pub fn over_tls(self, tls: bool) -> ClientIp {
        ClientIp { tls, ..self }
    }

    /// The scheme the client used.
    fn proto(&self) -> &'static [u8] {
        if self.tls { b"https" } else { b"http" }
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

/// A URL rewrite's replacements for the upstream head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewritten<'a> {
    /// `Host` to send instead of the client's (`X-Forwarded-Host` keeps the client's).
    pub host: Option<&'a [u8]>,
    /// Request target (path and query) to send instead of the client's.
    pub target: Option<&'a [u8]>,
}

/// Writes the upstream request head for `head` (parsed from `buf` into `fields`), with the
/// exchange's field edits and URL rewrite applied.
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &Head,
    fields: &[httparse::Header<'_>],
    client: &ClientIp,
    edits: &Edits<'_>,
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
        if edits.drops(name) {
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
    edits.for_each_added(|name, value| super::field(out, name, value));
    // Earlier hops' lists are kept only from a trusted peer, and not when a route removes them.
    let kept = |name: &str| client.trusted && !edits.drops(name);
    let xff = kept("x-forwarded-for");
    forwarding_list(out, "X-Forwarded-For", fields, xff, |out| {
        out.extend_from_slice(client.as_bytes())
    });
    let fwd = kept("forwarded");
    forwarding_list(out, "Forwarded", fields, fwd, |out| forwarded_element(out, client, host));
    if !proto_kept {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(client.proto());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(cert) = &client.cert {
        // The rule's fields (a client's fields of those names were dropped as removals), or
        // the default.
        if edits.client_cert.is_empty() {
            out.extend_from_slice(b"X-Forwarded-Client-Cert: ");
            out.extend_from_slice(cert.xfcc.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for h in edits.client_cert {
            let value = cert.value(&h.value);
            if !value.is_empty() {
                super::field(out, h.name.as_bytes(), value.as_bytes());
            }
        }
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
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(client.proto());
}

/// Makes a written request head (ending in the blank line) ask for the connection to close
/// after the answer, so a reader of the answer can read to end of stream (mirror copies).
pub fn close_after(head: &mut Vec<u8>) {
    if head.ends_with(b"\r\n\r\n") {
        let at = head.len() - 2;
        head.splice(at..at, b"Connection: close\r\n".iter().copied());
    }
}
