//! Request-path normalisation (RFC 3986 §6.2.2), shared by every protocol: the path routed on
//! is the path the backend gets.

/// Normalises a request path for routing and forwarding (RFC 3986 §6.2.2), writing the result
/// to `out` and returning `true` when it differs from `path`:
///
/// - percent-encoded unreserved characters are decoded (`%61` → `a`, `%2e` → `.`; §6.2.2.2)
///   and the hex digits of the rest upper-cased (`%2f` → `%2F`; §6.2.2.1);
/// - dot-segments are removed (`/a/./b/../c` → `/a/c`, never above the root; §6.2.2.3,
///   §5.2.4), after that decoding, so `%2e%2e` is `..`;
/// - empty segments are merged (`//a` → `/a`), as nginx's `merge_slashes` does.
///
/// Encoded `/` (`%2F`) and `\` (`%5C`) stay encoded: they are data inside a segment, not
/// separators, and APIs put them in identifiers; decoding them would change the path's
/// structure. Nothing else is decoded, so `%0D%0A` never becomes a raw CR LF on the wire.
/// The backend gets the normalised path too, so routing and the backend see the same path:
/// a `PathPrefix: /admin` rule cannot be dodged with `/%61dmin`, `//admin` or
/// `/x/../admin`, and a request under it is never sent elsewhere.
///
/// The common path (no `%`, no `//`, no `/.`) is one scan with no allocation.
pub(crate) fn normalize_path(path: &[u8], out: &mut Vec<u8>) -> bool {
    let suspicious = path.windows(2).any(|w| w == b"//" || w == b"/.") || path.contains(&b'%');
    // Origin-form paths start with "/"; anything else ("*") is left as it is.
    if !suspicious || !path.starts_with(b"/") {
        return false;
    }
    out.clear();
    out.reserve(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (path.get(i + 1), path.get(i + 2))
            && let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
        {
            // Two hex digits: below 256.
            let c = (h << 4 | l) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c);
            } else {
                out.extend_from_slice(&[
                    b'%',
                    path[i + 1].to_ascii_uppercase(),
                    path[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    // Remove dot-segments and empty segments in place, keeping a trailing slash: `w` is the
    // length written, never past the segment being read (each output segment is at most the
    // input segment with its leading "/").
    let len = out.len();
    let (mut w, mut r) = (0, 0);
    loop {
        let end = out[r..].iter().position(|&b| b == b'/').map_or(len, |p| r + p);
        let last = end == len;
        let slash_ended = |out: &[u8], w: usize| w > 0 && out[w - 1] == b'/';
        match &out[r..end] {
            // The empty segment before the leading "/".
            b"" if r == 0 => {}
            b"" | b"." => {
                if last && !slash_ended(out, w) {
                    out[w] = b'/';
                    w += 1;
                }
            }
            b".." => {
                w = out[..w].iter().rposition(|&b| b == b'/').unwrap_or(0);
                if (last || w == 0) && !slash_ended(out, w) {
                    out[w] = b'/';
                    w += 1;
                }
            }
            _ => {
                if !slash_ended(out, w) {
                    out[w] = b'/';
                    w += 1;
                }
                out.copy_within(r..end, w);
                w += end - r;
            }
        }
        if last {
            break;
        }
        r = end + 1;
    }
    out.truncate(w);
    if out.is_empty() {
        out.push(b'/');
    }
    out.as_slice() != path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        let mut out = Vec::new();
        if normalize_path(p.as_bytes(), &mut out) {
            String::from_utf8(out).unwrap()
        } else {
            p.to_owned()
        }
    }

    #[test]
    fn paths_normalise_per_rfc_3986() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("/a/%2e/b", "/a/b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/a%5cb", "/a%5Cb"),
            ("/a%0d%0aSet-Cookie:%20x", "/a%0D%0ASet-Cookie:%20x"),
            ("/%7euser", "/~user"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a/..%2fb", "/a/..%2Fb"),
            ("/a/..", "/"),
            ("/..a", "/..a"),
            ("/a/.b", "/a/.b"),
            ("/./", "/"),
            ("//", "/"),
            ("/a/./", "/a/"),
            ("/a/b/../../c/", "/c/"),
            ("/a/b//../c", "/a/c"),
        ] {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn normalising_is_idempotent() {
        for p in ["/a/../b/./c//d/", "/%2e%2e%2f..", "/x/%2E./y", "/..;/admin", "/a/b/../../.."] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
            assert!(once.starts_with('/'));
        }
    }
}
