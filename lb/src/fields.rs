//! Header fields as the exchange decides them, in no protocol's syntax: the edits a route
//! makes to a message ([`Edits`]) and fields lb adds ([`FieldList`]). The HTTP/1 head writers
//! apply them; an HTTP/2 encoder will apply the same values, so filters are written once.

use table::format::{ArchivedClientCertHeader, ArchivedHeaderEdits};

/// Name/value pairs kept in one buffer (one allocation however many fields): each entry is
/// the name's length (1 byte), the name, the value's length (2 bytes, little-endian), the
/// value. Names over 255 bytes and values over 64 KiB are refused by [`FieldList::push`]
/// (the table and the policies that fill these lists keep far below that).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldList {
    buf: Vec<u8>,
}

impl FieldList {
    /// An empty list (no allocation until the first push).
    pub fn new() -> FieldList {
        FieldList::default()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends a field; `false` (and nothing added) when the name or value is too long.
    pub fn push(&mut self, name: &str, value: &[u8]) -> bool {
        let (Ok(n), Ok(v)) = (u8::try_from(name.len()), u16::try_from(value.len())) else {
            return false;
        };
        if self.buf.is_empty() {
            self.buf.reserve(160);
        }
        self.buf.push(n);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(&v.to_le_bytes());
        self.buf.extend_from_slice(value);
        true
    }

    /// Appends a field whose value is a list of items joined by `", "`.
    pub fn push_list<'v>(&mut self, name: &str, items: impl Iterator<Item = &'v str>) -> bool {
        let mut value = Vec::new();
        for (i, item) in items.enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(item.as_bytes());
        }
        self.push(name, &value)
    }

    /// The fields in the order they were pushed.
    pub fn iter(&self) -> FieldIter<'_> {
        FieldIter { rest: &self.buf }
    }
}

/// Iterator over a [`FieldList`].
#[derive(Debug)]
pub struct FieldIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&n, rest) = self.rest.split_first()?;
        let (name, rest) = rest.split_at_checked(usize::from(n))?;
        let (len, rest) = rest.split_at_checked(2)?;
        let v = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (value, rest) = rest.split_at_checked(v)?;
        self.rest = rest;
        Some((name, value))
    }
}

/// What the exchange changes in one message's fields: the route's edit lists (a rule's, then
/// a backend's) and the fields lb adds itself, which replace any of `replaces` the message
/// carried (e.g. the CORS filter's response fields replace the upstream's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits<'a> {
    /// The route's `RequestHeaderModifier`/`ResponseHeaderModifier` lists, in order.
    pub lists: [Option<&'a ArchivedHeaderEdits>; 2],
    /// Fields lb adds after the route's.
    pub added: Option<&'a FieldList>,
    /// Names whose values in the message are dropped because `added` owns them.
    pub replaces: &'a [&'a str],
    /// Request only: the fields the rule chose for a TLS client's verified certificate
    /// (empty: `X-Forwarded-Client-Cert`).
    pub client_cert: &'a [ArchivedClientCertHeader],
}

impl<'a> Edits<'a> {
    /// Only a route's edit lists.
    pub fn route(lists: [Option<&'a ArchivedHeaderEdits>; 2]) -> Edits<'a> {
        Edits { lists, ..Edits::default() }
    }

    /// Whether a field of the message named `name` is dropped (removed, replaced by a `set`,
    /// or owned by the added fields).
    pub fn drops(&self, name: &str) -> bool {
        self.lists.iter().flatten().any(|e| edited(e, name))
            || (self.added.is_some_and(|a| !a.is_empty())
                && self.replaces.iter().any(|r| name.eq_ignore_ascii_case(r)))
    }

    /// Calls `f` for each field to add: the lists' `set` then `add` fields, then `added`.
    pub fn for_each_added(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for e in self.lists.iter().flatten() {
            for field in e.set.iter().chain(e.add.iter()) {
                f(field.name.as_bytes(), field.value.as_bytes());
            }
        }
        for (name, value) in self.added.into_iter().flat_map(FieldList::iter) {
            f(name, value);
        }
    }
}

/// Whether `edits` drop a field of this name (`remove`, or replaced by `set`).
fn edited(edits: &ArchivedHeaderEdits, name: &str) -> bool {
    (!edits.remove.is_empty() || !edits.set.is_empty())
        && (edits.remove.iter().any(|r| r.as_str().eq_ignore_ascii_case(name))
            || edits.set.iter().any(|f| f.name.as_str().eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use table::format::{HeaderEdits, HeaderField};

    use super::*;

    #[test]
    fn a_field_list_gives_back_what_was_pushed() {
        let mut l = FieldList::new();
        assert!(l.is_empty());
        assert!(l.push("Vary", b"Origin"));
        assert!(l.push_list("Allow", ["GET", "PUT"].into_iter()));
        assert!(l.push("Empty", b""));
        assert!(!l.push(&"n".repeat(256), b"x"));
        assert!(!l.push("Big", &vec![b'v'; 70_000]));
        let got: Vec<_> = l.iter().collect();
        assert_eq!(got, [(&b"Vary"[..], &b"Origin"[..]), (b"Allow", b"GET, PUT"), (b"Empty", b"")]);
    }

    #[test]
    fn edits_drop_and_add_in_order() {
        let e = HeaderEdits {
            set: vec![HeaderField { name: "X-Set".into(), value: "1".into() }],
            add: vec![HeaderField { name: "X-Add".into(), value: "2".into() }],
            remove: vec!["X-Gone".into()],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&e).unwrap();
        let e = rkyv::access::<ArchivedHeaderEdits, rkyv::rancor::Error>(&bytes).unwrap();
        let mut cors = FieldList::new();
        cors.push("Access-Control-Allow-Origin", b"https://a");
        let edits = Edits {
            lists: [Some(e), None],
            added: Some(&cors),
            replaces: &["access-control-allow-origin"],
            client_cert: &[],
        };
        assert!(edits.drops("x-set") && edits.drops("X-GONE") && !edits.drops("x-add"));
        assert!(edits.drops("Access-Control-Allow-Origin"));
        let mut added = Vec::new();
        edits.for_each_added(|n, v| {
            added.push(format!("{}={}", n.escape_ascii(), v.escape_ascii()))
        });
        assert_eq!(added, ["X-Set=1", "X-Add=2", "Access-Control-Allow-Origin=https://a"]);
        // With nothing added, the owned names pass.
        let empty = FieldList::new();
        let e2 = Edits { added: Some(&empty), ..edits };
        assert!(!e2.drops("access-control-allow-origin"));
    }
}
