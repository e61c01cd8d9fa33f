//! The wire rules both processes enforce, defined once: what an HTTP token, a field value, a
//! header a route may edit, a `Host`, a host name and a route path value are. config-sync's
//! validation refuses objects that break them (with the field named), the table view refuses a
//! table that breaks them (a table is untrusted bytes), and lb's HTTP/1 parser applies the same
//! definitions to requests. When two places disagree about a rule, a table config-sync accepted
//! could be refused by lb, or a field config-sync let through could break a head lb writes.
//!
//! (ReferenceGrant is not here: only config-sync resolves references; lb only ever sees the
//! resolved endpoints.)

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RFC 9110 token: a method, or a field name lb may read or write.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A field value lb may write verbatim: visible characters, spaces and tabs — no CR, LF, NUL or
/// other control, which would end or corrupt the head.
pub fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || b == b' ' || (b >= 0x21 && b != 0x7f))
}

/// Fields a route may not set, add or remove: framing and connection management are lb's
/// (a route-set Content-Length or Host would make the message ambiguous downstream). `Expect`
/// is lb's to answer: a route-set `Expect` would make the backend wait for, or refuse with 417,
/// a continuation lb never negotiates (found by the `header_edits` fuzz target).
const NOT_EDITABLE: &[&str] = &[
    "host",
    "expect",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Whether a route may set, add or remove this header.
pub fn is_editable(name: &str) -> bool {
    !NOT_EDITABLE.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A `Host` field value or absolute-form authority (RFC 9112 §3.2, RFC 3986 §3.2.2):
/// `uri-host [ ":" port ]`, where uri-host is a bracketed IP literal or a reg-name.
pub fn is_host_field(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else { return false };
        let literal = &rest[..close];
        if literal.is_empty()
            || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    let host_ok =
        host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// A host name lb may write into a `Location` or a rewritten `Host`: letters, digits, `-`
/// and `.` (a redirect's or URL rewrite's `hostname`).
pub fn is_host_name(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
}

/// An RFC 1123 label, lower-case (Kubernetes namespaces, listener names' parts).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// An RFC 1123 subdomain, lower-case (most Kubernetes names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Why a route's `Exact` or `PathPrefix` value breaks the CRD's rules (which keep it a
/// normalised path, so it can match what lb routes on), if it does.
pub fn path_value_problem(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return Some(format!("{p:?} must start with /"));
    }
    let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
    if let Some(b) = bad.iter().find(|b| p.contains(*b)) {
        return Some(format!("{p:?} must not contain {b:?}"));
    }
    if p.ends_with("/..") || p.ends_with("/.") {
        return Some(format!("{p:?} must not end with /. or /.."));
    }
    if p.len() > 1024 {
        return Some("longer than 1024 bytes".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_values_and_editable_fields() {
        assert!(is_token(b"X-Custom_1") && is_token(b"GET") && !is_token(b""));
        assert!(!is_token(b"a b") && !is_token(b"a:b") && !is_token(b"caf\xc3\xa9"));
        assert!(is_field_value(b"a b\tc ~") && is_field_value(b""));
        assert!(!is_field_value(b"a\r\nb") && !is_field_value(b"\0") && !is_field_value(b"\x7f"));
        assert!(is_editable("X-Forwarded-For") && !is_editable("Content-Length"));
        assert!(!is_editable("HOST") && !is_editable("expect") && !is_editable("TE"));
    }

    #[test]
    fn hosts() {
        for ok in ["a.example", "a.example:8080", "[::1]", "[::1]:80", "127.0.0.1:1", ""] {
            assert!(is_host_field(ok.as_bytes()), "{ok}");
        }
        for bad in ["a b", "a/b", "a:port", "a:123456", "[::1", "[]", "[::1]x", "a@b"] {
            assert!(!is_host_field(bad.as_bytes()), "{bad}");
        }
        assert!(is_host_name("a-b.example") && !is_host_name("a_b") && !is_host_name(""));
        assert!(is_dns_label("a-1") && !is_dns_label("-a") && !is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(
            is_dns_subdomain("a.b-c.d") && !is_dns_subdomain("a..b") && !is_dns_subdomain("a_b")
        );
    }

    #[test]
    fn path_values() {
        assert_eq!(path_value_problem("/a/b"), None);
        for bad in ["a", "/a//b", "/a/..", "/a/./b", "/a%2Fb", "/a#b"] {
            assert!(path_value_problem(bad).is_some(), "{bad}");
        }
    }
}
