#![allow(clippy::unwrap_used, reason = "test code")]

use table::format::ArchivedHeaderEdits;

use super::body::Encode;
use super::local::local_response;
use super::parse::{Limits, parse};
use super::push_decimal;
use super::request::{ClientCert, ClientIp, Field, Rewritten, classify, request_head};
use super::response::{ResponseFraming, parse_response, response_fields, response_head};
use crate::fields::{Edits, FieldList};

fn forward(raw: &[u8]) -> String {
    forward_with(raw, &table::format::HeaderEdits::default())
}

fn forward_with(raw: &[u8], edits: &table::format::HeaderEdits) -> String {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(edits).unwrap();
    let edits = rkyv::access::<ArchivedHeaderEdits, rkyv::rancor::Error>(&bytes).unwrap();
    let client = ClientIp::new("10.0.0.1".parse().unwrap(), false);
    upstream_head(raw, &client, &Edits::route([Some(edits), None]), Rewritten::default())
}

fn forward_from(raw: &[u8], client: &ClientIp) -> String {
    upstream_head(raw, client, &Edits::default(), Rewritten::default())
}

/// Parses `raw` and writes the upstream head lb sends for it.
fn upstream_head(
    raw: &[u8],
    client: &ClientIp,
    edits: &Edits<'_>,
    rewritten: Rewritten<'_>,
) -> String {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let head = parse(raw, &mut fields, &Limits::default()).unwrap().unwrap();
    let mut out = Vec::new();
    request_head(&mut out, raw, &head, &fields[..head.header_count], client, edits, rewritten);
    String::from_utf8(out).unwrap()
}

#[test]
fn found_by_fuzzing() {
    // response_head: a status outside 100-599 ("004" parses as 4) is a bad response.
    let mut fields = response_fields();
    assert!(parse_response(b"HTTP/1.1 004 X\r\n\r\n", &mut fields, false).is_err());
    let mut fields = response_fields();
    assert!(parse_response(b"HTTP/1.1 600 X\r\n\r\n", &mut fields, false).is_err());
    // request_head: an absolute-form target with an empty path goes upstream with "/".
    let out = forward(b"GET http://h.example?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("GET /?q=1 HTTP/1.1\r\nHost: h.example\r\n"), "{out}");
    let out = forward(b"GET http://h.example HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
}

#[test]
fn forwarding_fields_are_replaced_at_the_edge_and_extended_behind_trusted_proxies() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoof\r\nx-forwarded-for: 7.7.7.7\r\n\r\n";
    let edge = forward_from(raw, &ClientIp::new("10.0.0.1".parse().unwrap(), false));
    assert_eq!(
        edge,
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;host=\"h\";proto=http\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
    );
    let behind = forward_from(raw, &ClientIp::new("2001:db8::2".parse().unwrap(), true));
    assert_eq!(
        behind,
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoof\r\nX-Forwarded-For: 6.6.6.6, 7.7.7.7, 2001:db8::2\r\nForwarded: for=6.6.6.6, for=\"[2001:db8::2]\";host=\"h\";proto=http\r\n\r\n"
    );
}

#[test]
fn rewrite_replaces_host_and_target_but_not_forwarded_host() {
    let raw = b"GET /a?q=1 HTTP/1.1\r\nHost: client.example\r\n\r\n";
    let client = ClientIp::new("10.0.0.1".parse().unwrap(), false);
    let rewritten = Rewritten { host: Some(b"backend.example"), target: Some(b"/b?q=1") };
    let out = upstream_head(raw, &client, &Edits::default(), rewritten);
    assert_eq!(
        out,
        "GET /b?q=1 HTTP/1.1\r\nHost: backend.example\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;host=\"client.example\";proto=http\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: client.example\r\n\r\n"
    );
}

#[test]
fn header_edits_remove_set_and_add_case_insensitively() {
    use table::format::{HeaderEdits, HeaderField};
    let field = |n: &str, v: &str| HeaderField { name: n.into(), value: v.into() };
    let edits = HeaderEdits {
        set: vec![field("X-Set", "new")],
        add: vec![field("X-Add", "more")],
        remove: vec!["X-Remove".into()],
    };
    let out = forward_with(
        b"GET / HTTP/1.1\r\nHost: h\r\nx-set: old\r\nX-SET: older\r\nx-add: first\r\nx-remove: gone\r\nKeep: k\r\n\r\n",
        &edits,
    );
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: h\r\nx-add: first\r\nKeep: k\r\nX-Set: new\r\nX-Add: more\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;host=\"h\";proto=http\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
    );
}

#[test]
fn request_head_regenerates_framing_and_drops_hop_by_hop() {
    let out = forward(b"POST /p?q HTTP/1.1\r\nHost: Example.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nTransfer-Encoding: ,chunked\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nUser-Agent: t\r\n\r\n");
    assert_eq!(
        out,
        "POST /p?q HTTP/1.1\r\nHost: Example.com\r\nUser-Agent: t\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;host=\"Example.com\";proto=http\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: Example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn absolute_form_replaces_host_and_version() {
    let out = forward(b"GET http://example.com/x HTTP/1.2\r\nHost: evil.example\r\n\r\n");
    assert!(out.starts_with("GET /x HTTP/1.1\r\nHost: example.com\r\n"), "{out}");
    assert!(!out.contains("evil"));
}

#[test]
fn nominated_content_length_stays_framing() {
    let out = forward(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: Content-Length\r\n\r\nabc",
    );
    assert!(out.ends_with("Content-Length: 3\r\n\r\n"), "{out}");
}

fn respond(
    raw: &[u8],
    head_req: bool,
    http10: bool,
    keep: bool,
) -> (String, Encode, bool, ResponseFraming) {
    let mut fields = response_fields();
    let (head, fields) = parse_response(raw, &mut fields, head_req).unwrap().unwrap();
    let mut out = Vec::new();
    let (enc, close) = response_head(&mut out, raw, &head, fields, http10, keep, &Edits::default());
    (String::from_utf8(out).unwrap(), enc, close, head.framing)
}

#[test]
fn response_framing() {
    let (h, enc, close, f) = respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        false,
        false,
        true,
    );
    assert_eq!(h, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    assert_eq!((enc, close, f), (Encode::Raw, false, ResponseFraming::Length(2)));
    let (h, enc, _, _) =
        respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, false, true);
    assert!(h.contains("Transfer-Encoding: chunked\r\n"));
    assert_eq!(enc, Encode::Chunked);
    let (h, enc, close, _) = respond(b"HTTP/1.0 200 OK\r\n\r\n", false, true, true);
    assert_eq!((enc, close), (Encode::Raw, true));
    assert!(h.contains("Connection: close"));
    let (h, _, _, f) = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, false, true);
    assert_eq!(f, ResponseFraming::None);
    assert!(h.contains("Content-Length: 99"));
    let (_, _, _, f) = respond(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false, true);
    assert_eq!(f, ResponseFraming::None);
    let mut fields = response_fields();
    assert!(
        parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut fields,
            false
        )
        .is_err()
    );
}

#[test]
fn field_classes() {
    for n in [
        "TE",
        "Trailer",
        "upgrade",
        "Connection",
        "keep-alive",
        "Content-Length",
        "HTTP2-Settings",
        "Proxy-Connection",
        "Transfer-Encoding",
    ] {
        assert_eq!(classify(n), Field::HopByHop, "{n}");
    }
    for n in ["X-Forwarded-Host", "x-forwarded-proto"] {
        assert_eq!(classify(n), Field::ForwardedOther, "{n}");
    }
    assert_eq!(classify("Forwarded"), Field::Forwarded);
    for n in ["Host", "expect"] {
        assert_eq!(classify(n), Field::Ours, "{n}");
    }
    assert_eq!(classify("X-Forwarded-For"), Field::ForwardedFor);
    for n in ["te2", "Accept", "Cookie", "x-forwarded-port", "content-type", "connectio"] {
        assert_eq!(classify(n), Field::Pass, "{n}");
    }
}

#[test]
fn decimals() {
    for n in [0u64, 7, 10, 4096, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
    }
    assert_eq!(ClientIp::new("2001:db8::1".parse().unwrap(), false).as_bytes(), b"2001:db8::1");
}

#[test]
fn local_responses() {
    let mut out = Vec::new();
    local_response(&mut out, 404, false, false);
    assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n404 Not Found\n");
}

#[test]
fn response_edits_and_added_fields_replace_the_upstreams() {
    use table::format::{HeaderEdits, HeaderField};
    let edits = HeaderEdits {
        set: vec![HeaderField { name: "X-Set".into(), value: "ours".into() }],
        add: vec![],
        remove: vec!["Server".into()],
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&edits).unwrap();
    let edits = rkyv::access::<ArchivedHeaderEdits, rkyv::rancor::Error>(&bytes).unwrap();
    let mut cors = FieldList::new();
    cors.push("Access-Control-Allow-Origin", b"https://a.example");
    let changes = Edits {
        lists: [Some(edits), None],
        added: Some(&cors),
        replaces: &["access-control-allow-origin", "access-control-expose-headers"],
        client_cert: &[],
    };
    let raw = b"HTTP/1.1 200 OK\r\nServer: x\r\nX-Set: theirs\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: y\r\nContent-Length: 0\r\n\r\n";
    let mut fields = response_fields();
    let (head, fields) = parse_response(raw, &mut fields, false).unwrap().unwrap();
    let mut out = Vec::new();
    response_head(&mut out, raw, &head, fields, false, true, &changes);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nX-Set: ours\r\nAccess-Control-Allow-Origin: https://a.example\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn tls_connections_say_https_and_only_lb_writes_the_client_certificate_field() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: Hash=forged\r\nx-forwarded-client-cert: Subject=\"CN=admin\"\r\n\r\n";
    let plain = forward_from(raw, &ClientIp::new("10.0.0.1".parse().unwrap(), false));
    assert!(!plain.to_ascii_lowercase().contains("x-forwarded-client-cert"), "{plain}");
    assert!(
        plain.contains("X-Forwarded-Proto: http\r\n") && plain.contains(";proto=http\r\n"),
        "{plain}"
    );
    let tls = ClientIp::new("10.0.0.1".parse().unwrap(), false).over_tls(true);
    let anonymous = forward_from(raw, &tls);
    assert!(anonymous.contains("X-Forwarded-Proto: https\r\n"), "{anonymous}");
    assert!(anonymous.contains(";proto=https\r\n"), "{anonymous}");
    assert!(!anonymous.to_ascii_lowercase().contains("x-forwarded-client-cert"), "{anonymous}");
    let verified = tls.with_client_cert(Some(std::rc::Rc::new(client_cert())));
    let out = forward_from(raw, &verified);
    assert_eq!(out.matches("X-Forwarded-Client-Cert").count(), 1, "{out}");
    assert!(out.contains("X-Forwarded-Client-Cert: Hash=abc;Subject=\"CN=client\"\r\n"), "{out}");
    assert!(!out.contains("forged") && !out.contains("admin"), "{out}");
}

fn client_cert() -> ClientCert {
    ClientCert {
        hash: "abc".into(),
        subject: "CN=client".into(),
        xfcc: "Hash=abc;Subject=\"CN=client\"".into(),
        certificate: ":MIIB:".into(),
    }
}

#[test]
fn a_rule_chooses_the_client_certificate_fields_and_the_client_cannot_send_them() {
    use table::format::{ClientCertHeader, ClientCertValue, HeaderEdits};
    // What config-sync compiles for a rule with two ClientCertificateHeader filters: the
    // fields, and their names among the rule's removals.
    let chosen = vec![
        ClientCertHeader { name: "X-Client-Subject".into(), value: ClientCertValue::Subject },
        ClientCertHeader { name: "Client-Cert".into(), value: ClientCertValue::Certificate },
    ];
    let removals = HeaderEdits {
        remove: vec!["X-Client-Subject".into(), "Client-Cert".into()],
        ..HeaderEdits::default()
    };
    let chosen_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&chosen).unwrap();
    let chosen =
        rkyv::access::<rkyv::Archived<Vec<ClientCertHeader>>, rkyv::rancor::Error>(&chosen_bytes)
            .unwrap();
    let removal_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&removals).unwrap();
    let removals =
        rkyv::access::<ArchivedHeaderEdits, rkyv::rancor::Error>(&removal_bytes).unwrap();
    let edits = Edits { client_cert: chosen, ..Edits::route([Some(removals), None]) };
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nx-client-subject: CN=admin\r\nClient-Cert: :Zm9yZ2Vk:\r\n\r\n";
    let tls = ClientIp::new("10.0.0.1".parse().unwrap(), false).over_tls(true);
    let verified = tls.clone().with_client_cert(Some(std::rc::Rc::new(client_cert())));
    let out = upstream_head(raw, &verified, &edits, Rewritten::default());
    assert!(out.contains("X-Client-Subject: CN=client\r\nClient-Cert: :MIIB:\r\n"), "{out}");
    assert!(!out.contains("admin") && !out.contains("Zm9yZ2Vk"), "{out}");
    // The rule's choice replaces the default field.
    assert!(!out.to_ascii_lowercase().contains("x-forwarded-client-cert"), "{out}");
    // Without a verified certificate, the fields are absent, never the client's.
    let out = upstream_head(raw, &tls, &edits, Rewritten::default());
    assert!(!out.to_ascii_lowercase().contains("x-client-subject"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("client-cert"), "{out}");
}
