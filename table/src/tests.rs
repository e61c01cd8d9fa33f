//! Tests of the table round trip: build → encode → open → lookup, and of the view's refusal of
//! bad bytes.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use crate::fixtures::{entry, sample};
use crate::format::*;
use crate::lookup::{Headers, Request, Route, normalize_host};
use crate::{Router, encode};

struct NoHeaders;
impl Headers for NoHeaders {
    fn first(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

struct Pairs<'a>(&'a [(&'a str, &'a str)]);
impl Headers for Pairs<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes())
    }
}

fn open(table: &Table) -> Router {
    Router::open(&encode(table).unwrap(), Some(table.generation)).unwrap()
}

fn route_name(
    router: &Router,
    host: &str,
    method: &str,
    target: &str,
    headers: &dyn Headers,
) -> String {
    let port = router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request {
        method: method.as_bytes(),
        path: path.as_bytes(),
        query: query.as_bytes(),
        host: host.as_bytes(),
    };
    let mut scratch = router.scratch();
    match router.route(port, &req, headers, &mut scratch) {
        Route::Matched { action, .. } => action.route.as_str().to_owned(),
        Route::NoRoute { .. } => "404".into(),
        Route::NoListener => "no-listener".into(),
    }
}

#[test]
fn host_precedence_and_fallback() {
    let r = open(&sample());
    assert_eq!(route_name(&r, "a.example.com", "GET", "/exact", &NoHeaders), "r0");
    assert_eq!(route_name(&r, "a.example.com", "GET", "/v2/x", &NoHeaders), "r1");
    // Nothing in a.example.com matches /other: falls back to the wildcard, then to any.
    assert_eq!(route_name(&r, "a.example.com", "GET", "/other", &NoHeaders), "r5");
    assert_eq!(route_name(&r, "b.example.com", "GET", "/exact", &NoHeaders), "r5");
    assert_eq!(route_name(&r, "example.com", "GET", "/exact", &NoHeaders), "r5");
    assert_eq!(route_name(&r, "deep.b.example.com", "GET", "/img/12.png", &NoHeaders), "r4");
}

#[test]
fn path_prefix_is_element_wise() {
    let r = open(&sample());
    assert_eq!(route_name(&r, "a.example.com", "GET", "/v2", &NoHeaders), "r1");
    assert_eq!(route_name(&r, "a.example.com", "GET", "/v2/", &NoHeaders), "r1");
    assert_eq!(route_name(&r, "a.example.com", "GET", "/v2example", &NoHeaders), "r5");
    assert_eq!(route_name(&r, "a.example.com", "GET", "/exact/", &NoHeaders), "r5");
}

#[test]
fn method_header_query_and_regex_conditions() {
    let r = open(&sample());
    let v2 = Pairs(&[("X-Version", "two")]);
    assert_eq!(route_name(&r, "b.example.com", "POST", "/", &v2), "r2");
    assert_eq!(route_name(&r, "b.example.com", "GET", "/", &v2), "r5", "method must match too");
    assert_eq!(
        route_name(&r, "b.example.com", "POST", "/", &Pairs(&[("x-version", "three")])),
        "r5"
    );
    assert_eq!(route_name(&r, "b.example.com", "GET", "/?animal=whale", &NoHeaders), "r3");
    assert_eq!(route_name(&r, "b.example.com", "GET", "/?a=1&animal=dolphin", &NoHeaders), "r3");
    // Whole-value regex: "whales" does not match (whale|dolphin).
    assert_eq!(route_name(&r, "b.example.com", "GET", "/?animal=whales", &NoHeaders), "r5");
    assert_eq!(route_name(&r, "b.example.com", "GET", "/img/1x.png", &NoHeaders), "r5");
}

#[test]
fn reopening_reuses_regexes_and_behaves_the_same() {
    let first = open(&sample());
    let bytes = encode(&sample()).unwrap();
    let second = Router::open_reusing(&bytes, None, Some(&first)).unwrap();
    // The same chunks (identities, lengths, checksums) at the same places: none read again.
    assert_eq!(second.intake().read, 0);
    assert_eq!(second.intake().kept, 5);
    assert_eq!(route_name(&second, "b.example.com", "GET", "/?animal=whale", &NoHeaders), "r3");
    assert_eq!(route_name(&second, "b.example.com", "GET", "/img/7.png", &NoHeaders), "r4");
}

#[test]
fn port_address_precedence() {
    let mut t = sample();
    let mut specific = t.ports[0].clone();
    specific.address = Some(Address::from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))));
    specific.listeners.any = None;
    t.ports.push(specific);
    let r = open(&t);
    let p = r.port(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 8080).unwrap();
    assert!(p.address.is_some());
    let p = r.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
    assert!(p.address.is_none());
    assert!(r.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081).is_none());
}

#[test]
fn normalize_host_strips_port_and_case() {
    let mut buf = [0u8; 255];
    assert_eq!(normalize_host(b"Foo.Example.COM:8080", &mut buf).unwrap(), b"foo.example.com");
    assert_eq!(normalize_host(b"[::1]:80", &mut buf).unwrap(), b"::1");
    assert_eq!(normalize_host(b"example.com.", &mut buf).unwrap(), b"example.com");
    assert!(normalize_host(&[b'a'; 300], &mut buf).is_none());
}

/// A generation stamped into an encoded root makes exactly the root of the table encoded with
/// it, which opens with that generation; too few bytes are refused.
#[test]
fn a_stamped_generation_is_the_encoded_one() {
    for table in [sample(), Table::default()] {
        let mut bytes = encode(&table).unwrap();
        let root = crate::build::bundle_root(&bytes).unwrap();
        for generation in [7, u64::MAX, 0x0102_0304_0506_0708] {
            crate::build::stamp_generation(&mut bytes[root.clone()], generation).unwrap();
            let with = Table { generation, ..table.clone() };
            assert_eq!(bytes.as_slice(), encode(&with).unwrap().as_slice());
            assert_eq!(Router::open(&bytes, Some(generation)).unwrap().generation(), generation);
        }
    }
    assert!(crate::build::stamp_generation(&mut [0; 4], 1).is_err());
}

/// Stores chunks in memory, counting them.
#[derive(Default)]
struct Chunks {
    bytes: Vec<Vec<u8>>,
    kept: usize,
}

impl crate::build::Store for Chunks {
    fn store(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        self.bytes.push(bytes.to_vec());
        Ok(self.bytes.len() as u64 - 1)
    }

    fn keep(&mut self, _: &ChunkRef) {
        self.kept += 1;
    }
}

/// An encoder stores only the pages that changed since its last table; a page renewed with the
/// same contents keeps its chunk; what it stores opens as the table it was given.
#[test]
fn an_encoder_stores_only_the_pages_that_changed() {
    let mut table = sample();
    let six = table.actions.to_vec();
    table.actions.extend((6..300).map(|i| six[i % 6].clone()));
    table.wrr_slots = 300;
    let pages = 1 + 1 + 3 + 1 + 1;
    let mut encoder = crate::build::Encoder::default();
    let mut store = Chunks::default();
    encoder.encode(&table, 1, &mut store).unwrap();
    assert_eq!((store.bytes.len(), store.kept), (pages, 0));
    // One action changed: its page is stored again, the others kept.
    table.actions[200].rule = 9;
    encoder.encode(&table, 2, &mut store).unwrap();
    assert_eq!((store.bytes.len(), store.kept), (pages + 1, pages - 1));
    assert_eq!(
        encoder.last,
        crate::build::Reused { kept: pages - 1, stored: 1, bytes: store.bytes[pages].len() }
    );
    // Renewed to what it was: same bytes as the chunk made for that page, kept.
    let value = table.actions[200].clone();
    table.actions[200] = value;
    encoder.encode(&table, 3, &mut store).unwrap();
    assert_eq!(store.bytes.len(), pages + 1);
    // A whole table of fresh pages with the same contents stores nothing either.
    let fresh = Table { actions: table.actions.to_vec().into(), ..table.clone() };
    encoder.encode(&fresh, 4, &mut store).unwrap();
    assert_eq!(store.bytes.len(), pages + 1);
    let reopened = Router::open(&encode(&table).unwrap(), None).unwrap().to_native().unwrap();
    assert_eq!(reopened, table);
}

/// A chunk named again is shared only when everything about it is the same: a new identity,
/// checksum or place means reading it.
#[test]
fn chunks_are_shared_only_when_named_the_same() {
    let mut table = sample();
    let last = table.matches[5].clone();
    table.matches.extend((0..200).map(|_| last.clone()));
    let first = open(&table);
    let mut bytes = encode(&table).unwrap();
    let again = Router::open_reusing(&bytes, None, Some(&first)).unwrap();
    assert_eq!((again.intake().read, again.intake().kept), (0, 6));
    // The second match chunk's bytes damaged under the same name: a reader that holds the
    // chunk does not read it again; one that does not refuses it.
    let root = crate::build::bundle_root(&bytes).unwrap();
    let (chunk_at, checksum_at) = {
        let r = rkyv::access::<ArchivedRoot, rkyv::rancor::Error>(&bytes[root]).unwrap();
        let chunk = &r.matches.chunks[1];
        let at = std::ptr::from_ref(&chunk.checksum) as usize - bytes.as_ptr() as usize;
        (chunk.offset.to_native() as usize, at)
    };
    bytes[chunk_at + 8] ^= 0x40;
    assert!(Router::open_reusing(&bytes, None, Some(&first)).is_ok());
    let error = Router::open(&bytes, None).unwrap_err().to_string();
    assert!(error.contains("match chunk 1") && error.contains("checksum"), "{error}");
    // Named with another checksum: not the chunk `first` holds, so read, and refused.
    bytes[chunk_at + 8] ^= 0x40;
    bytes[checksum_at] ^= 1;
    let error = Router::open_reusing(&bytes, None, Some(&first)).unwrap_err().to_string();
    assert!(error.contains("match chunk 1") && error.contains("checksum"), "{error}");
}

#[test]
fn open_refuses_out_of_range_indices() {
    type Mutation = Box<dyn Fn(&mut Table)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("listener", Box::new(|t| t.ports[0].listeners.any = Some(7))),
        ("vhost", Box::new(|t| t.listeners[0].vhosts.exact[0].target = 9)),
        ("match", Box::new(|t| t.vhosts[0].matches.push(99))),
        ("action", Box::new(|t| t.matches[0].action = 50)),
        ("regex", Box::new(|t| t.matches[4].path = PathMatch::Regex(5))),
        ("fallback to itself", Box::new(|t| t.vhosts[1].fallback = Some(1))),
        ("wrr", Box::new(|t| t.wrr_slots = u32::MAX)),
        ("unsorted", Box::new(|t| t.listeners[0].vhosts.exact.push(entry("a.example.co", 0)))),
        (
            "upper-case host",
            Box::new(|t| t.listeners[0].vhosts.exact[0].host = "A.example.com".into()),
        ),
        ("bad regex", Box::new(|t| t.regexes[0] = "(".into())),
        (
            "header value with CRLF",
            Box::new(|t| {
                t.actions[0]
                    .request_headers
                    .add
                    .push(HeaderField { name: "X-A".into(), value: "v\r\nInjected: 1".into() })
            }),
        ),
        (
            "framing header edit",
            Box::new(|t| {
                t.actions[0]
                    .response_headers
                    .set
                    .push(HeaderField { name: "Content-Length".into(), value: "0".into() })
            }),
        ),
        (
            "header name not a token",
            Box::new(|t| t.actions[0].request_headers.remove.push("Bad Name".into())),
        ),
        (
            "client-certificate field lb owns",
            Box::new(|t| {
                t.actions[0].client_cert_headers.push(ClientCertHeader {
                    name: "Transfer-Encoding".into(),
                    value: ClientCertValue::Subject,
                })
            }),
        ),
    ];
    for (what, mutate) in cases {
        let mut t = sample();
        mutate(&mut t);
        let bytes = encode(&t).unwrap();
        assert!(Router::open(&bytes, None).is_err(), "{what} must be refused");
    }
    let bytes = encode(&sample()).unwrap();
    assert!(Router::open(&bytes, Some(4)).is_err(), "generation mismatch");
}

/// Fallbacks that loop (which config-sync never writes, and the checks no longer refuse since
/// virtual hosts may come in any order) end the lookup after `MAX_FALLBACKS` steps.
#[test]
fn a_fallback_loop_ends() {
    let mut t = sample();
    t.vhosts[2].fallback = Some(0);
    t.vhosts[0].matches.clear();
    t.vhosts[2].matches.clear();
    let r = open(&t);
    let req =
        Request { method: b"PUT", path: b"/nothing/here", query: b"", host: b"a.example.com" };
    let mut visited = Visited::default();
    let route =
        r.route_traced(&r.table().ports[0], &req, &NoHeaders, &mut r.scratch(), &mut visited);
    assert!(matches!(route, Route::NoRoute { .. }));
    assert_eq!(visited.0, crate::lookup::MAX_FALLBACKS);
}

#[derive(Default)]
struct Visited(usize);

impl crate::lookup::Trace for Visited {
    fn vhost(&mut self, _: u32) {
        self.0 += 1;
    }
}

/// A self-contained table whose header puts the root beyond any address (offset + length
/// overflows) is refused, not a panic (the fuzzer's find: the range was built before the check).
#[test]
fn a_root_beyond_any_address_is_refused() {
    for (at, len) in [(0u64, u64::MAX), (8, u64::MAX - 3), (16, u64::MAX), (u64::MAX, 1), (0, 8)] {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes[..8].copy_from_slice(&at.to_le_bytes());
        bytes[8..16].copy_from_slice(&len.to_le_bytes());
        assert!(Router::open(&bytes, None).is_err(), "root at {at}+{len}");
    }
}

fn lookups_do_not_panic(router: &Router) {
    let mut scratch = router.scratch();
    for p in router.table().ports.iter() {
        for host in ["a.example.com", "x.example.com", "", "other"] {
            let req = Request {
                method: b"GET",
                path: b"/v2/x",
                query: b"animal=whale",
                host: host.as_bytes(),
            };
            let _ = router.route(p, &req, &Pairs(&[("x-version", "two")]), &mut scratch);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(router) = Router::open(&bytes, None) {
            lookups_do_not_panic(&router);
        }
    }

    #[test]
    fn mutated_tables_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in any::<prop::sample::Index>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if cut {
            bytes.truncate(truncate.index(bytes.len()));
        }
        if let Ok(router) = Router::open(&bytes, None) {
            lookups_do_not_panic(&router);
        }
    }
}
