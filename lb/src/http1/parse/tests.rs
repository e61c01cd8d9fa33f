use super::*;

fn p(raw: &[u8]) -> Result<Option<Head>, Reject> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse(raw, &mut h, &Limits::default())
}

fn status(raw: &[u8]) -> u16 {
    match p(raw) {
        Ok(Some(_)) => 200,
        Ok(None) => 0,
        Err(r) => r.status(),
    }
}

#[test]
fn simple_get() {
    let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest";
    let h = p(raw).unwrap().unwrap();
    assert_eq!(&raw[h.path.clone()], b"/a");
    assert_eq!(&raw[h.query.clone()], b"b=1");
    assert_eq!(h.len, raw.len() - 4);
    assert!(h.keep_alive);
    assert_eq!(h.framing, Framing::None);
}

#[test]
fn partial_heads_ask_for_more() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r"), 0);
    assert_eq!(status(b"GET / HTT"), 0);
    assert_eq!(status(b""), 0);
    assert_eq!(status(b"\r\n"), 0);
}

#[test]
fn line_endings() {
    assert_eq!(status(b"GET / HTTP/1.1\nHost: x\n\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"), 400);
    assert_eq!(status(b"GET /\r HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n a\r\n\r\n"), 400);
}

#[test]
fn versions_and_targets() {
    assert_eq!(status(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.10\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    assert_eq!(status(b"GET /\r\n\r\n"), 400);
    assert_eq!(status(b"GET admin HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    assert_eq!(status(b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    let raw = b"GET HTTP://example.com:8080/p?q HTTP/1.1\r\nHost: evil\r\n\r\n";
    let h = p(raw).unwrap().unwrap();
    assert_eq!(&raw[h.authority.clone().unwrap()], b"example.com:8080");
    assert_eq!(&raw[h.origin_form], b"/p?q");
    assert_eq!(status(b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

#[test]
fn framing_rules() {
    let post =
        |fields: &str| status(format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n").as_bytes());
    assert_eq!(post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: chunked, chunked\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: gzip, chunked\r\n"), 501);
    assert_eq!(post("Transfer-Encoding: chunked, gzip\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: ,chunked\r\n"), 200);
    assert_eq!(post("Transfer-Encoding: CHUNKED\r\n"), 200);
    assert_eq!(post("Transfer-Encoding:\tchunked\r\n"), 200);
    assert_eq!(post("Transfer-Encoding: \r\n"), 400);
    assert_eq!(post("Content-Length: 5\r\nContent-Length: 5\r\n"), 400);
    assert_eq!(post("Content-Length: 5, 5\r\n"), 400);
    assert_eq!(post("Content-Length: +5\r\n"), 400);
    assert_eq!(post("Content-Length: 0005\r\n"), 200);
    assert_eq!(post("Content-Length: 10737418240\r\n"), 413);
    assert_eq!(post("Content-Length: 99999999999999999999999\r\n"), 413);
    assert_eq!(post("Expect: 100-continue\r\nContent-Length: 1\r\n"), 200);
    assert_eq!(post("Expect: something\r\n"), 417);
    assert_eq!(status(b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
}

#[test]
fn host_rules() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: \r\n\r\n"), 200);
}

#[test]
fn field_syntax() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\nX-A b\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xe9\r\n\r\n"), 200);
}

#[test]
fn connection_and_upgrade() {
    let h = p(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
    assert!(h.keep_alive);
    let h = p(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive);
    let h = p(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, X-Drop\r\nUpgrade: websocket\r\nX-Drop: 1\r\n\r\n").unwrap().unwrap();
    assert!(h.upgrade);
    assert_eq!(h.connection_nominated, 0b1100, "Upgrade and X-Drop");
    let h = p(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.upgrade);
    let h =
        p(b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
    assert!(!h.upgrade);
}

#[test]
fn limits() {
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 70 * 1024));
    assert_eq!(status(&long), 414);
    long.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&long), 414);
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    assert_eq!(status(&big), 431);
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(status(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()), 431);
}
