//! Replays `../shared/http-cases/requests.json` (or the file named by `SLUICE_HTTP_CASES`)
//! against a real lb exactly as that folder's README describes: one route sending every host
//! to a recording stub upstream, a fresh client connection per case, the raw bytes in one
//! write, and the judging rules for `reject_NNN`, `forward_normalized` and `close`. Both case
//! files are replayed twice: over plain TCP, and over TLS to an HTTPS listener (the same cases,
//! judged the same way: TLS is a transport under the same HTTP/1 codec).

#![allow(clippy::disallowed_types, reason = "the stub upstream is a plain threaded test server")]
#![allow(clippy::unwrap_used, reason = "test code: a failure is the report")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

#[derive(Default)]
struct StubLog {
    /// Complete requests: (head, decoded body).
    requests: Vec<(String, Vec<u8>)>,
    /// Every byte received, all connections.
    raw: Vec<u8>,
    /// Protocol violations seen upstream.
    violations: Vec<String>,
}

fn stub(log: Arc<Mutex<StubLog>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || stub_connection(conn, &log));
        }
    });
    port
}

fn stub_connection(mut conn: TcpStream, log: &Mutex<StubLog>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        log.lock().unwrap().raw.extend_from_slice(&chunk[..n]);
        loop {
            match parse_request(&buf) {
                Ok(Some((head, body, used))) => {
                    buf.drain(..used);
                    log.lock().unwrap().requests.push((head, body));
                    if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log.lock().unwrap().violations.push(format!("malformed upstream request: {e}"));
                    return;
                }
            }
        }
    }
}

/// Strictly parses one request: `(head, decoded body, bytes used)`.
fn parse_request(buf: &[u8]) -> Result<Option<(String, Vec<u8>, usize)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf).map_err(|e| e.to_string())? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    if buf[..head_len].windows(2).filter(|w| w[1] == b'\n').any(|w| w[0] != b'\r') {
        return Err("bare LF in head".into());
    }
    let cl: Vec<&httparse::Header<'_>> =
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).collect();
    let te: Vec<&httparse::Header<'_>> =
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).collect();
    if !cl.is_empty() && !te.is_empty() || cl.len() > 1 || te.len() > 1 {
        return Err("ambiguous framing".into());
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let rest = &buf[head_len..];
    if let Some(te) = te.first() {
        if !te.value.eq_ignore_ascii_case(b"chunked") {
            return Err(format!("transfer-encoding {:?}", String::from_utf8_lossy(te.value)));
        }
        return Ok(dechunk(rest).map(|(body, used)| (head, body, head_len + used)));
    }
    if let Some(cl) = cl.first() {
        let n: usize = std::str::from_utf8(cl.value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or("content-length")?;
        if rest.len() < n {
            return Ok(None);
        }
        return Ok(Some((head, rest[..n].to_vec(), head_len + n)));
    }
    Ok(Some((head, Vec::new(), head_len)))
}

/// The client's connection: plain, or TLS (rustls) to an HTTPS listener.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl ClientStream {
    fn connect(port: u16, tls: Option<&Arc<rustls::ClientConfig>>) -> ClientStream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        match tls {
            None => ClientStream::Plain(s),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("cases.example").unwrap();
                let conn = rustls::ClientConnection::new(Arc::clone(config), name).unwrap();
                ClientStream::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
            }
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(t) => &t.sock,
        }
    }

    fn write_all(&mut self, raw: &[u8]) -> std::io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.write_all(raw),
            ClientStream::Tls(t) => t.write_all(raw).and_then(|()| t.flush()),
        }
    }

    /// Ends the sending side: TCP FIN, after close_notify on TLS.
    fn shutdown_write(&mut self) {
        if let ClientStream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            // The peer closing without close_notify is the end of the stream here, as TCP EOF.
            ClientStream::Tls(t) => match t.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

struct ClientResult {
    finals: Vec<u16>,
    closed: bool,
}

/// Sends the case's bytes and reads until the proxy closes or 2 s pass idle (or, once the
/// expected responses are in, 300 ms pass with nothing more).
fn run_client(
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    raw: &[u8],
    half_close: bool,
    expected_finals: usize,
    head_request: bool,
) -> ClientResult {
    let mut s = ClientStream::connect(port, tls);
    let _ = s.write_all(raw);
    if half_close {
        s.shutdown_write();
    }
    let mut buf = Vec::new();
    let mut finals = Vec::new();
    let mut closed = false;
    let mut last = Instant::now();
    let mut chunk = [0u8; 65536];
    loop {
        let idle_limit = if finals.len() >= expected_finals {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        };
        let left = idle_limit.saturating_sub(last.elapsed());
        if left.is_zero() {
            break;
        }
        s.tcp().set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last = Instant::now();
                while let Ok(Some((resp, used))) = parse_response(&buf, head_request) {
                    buf.drain(..used);
                    if resp.status >= 200 {
                        finals.push(resp.status);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    ClientResult { finals, closed }
}

fn cases_file() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_HTTP_CASES") {
        return Some(PathBuf::from(p));
    }
    shared_dir().map(|d| d.join("http-cases/requests.json"))
}

#[test]
fn http_cases_replay() {
    let Some(file) = cases_file() else { return };
    replay(&file, false);
}

#[test]
fn http_cases_replay_over_tls() {
    let Some(file) = cases_file() else { return };
    replay(&file, true);
}

/// Sluice's own cases (same format; `raw` may hold the bytes as a string, each character one
/// Latin-1 byte): the four classes the shared sample has few or none of — request-target
/// grammar, trailer grammar, `_` in field names, leniency before the request line.
#[test]
fn own_http_cases_replay() {
    replay(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/http-cases/sluice.json"), false);
}

#[test]
fn own_http_cases_replay_over_tls() {
    replay(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/http-cases/sluice.json"), true);
}

fn raw_bytes(case: &serde_json::Value) -> Vec<u8> {
    match case["raw_base64"].as_str() {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        None => case["raw"]
            .as_str()
            .unwrap()
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap())
            .collect(),
    }
}

fn replay(file: &std::path::Path, over_tls: bool) {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let log = Arc::new(Mutex::new(StubLog::default()));
    let stub_port = stub(Arc::clone(&log));
    let mut env = Env::new(if over_tls { "http-cases-tls" } else { "http-cases" });
    let port = free_port();
    let tls = if over_tls {
        let ca = pki::Ca::new("Sluice test CA");
        let https = gateway(port).replace(
            "protocol: HTTP,",
            "protocol: HTTPS, tls: {certificateRefs: [{name: cases}]},",
        );
        env.write("gateway.yaml", &https);
        env.write("secret.yaml", &pki::secret("default", "cases", &ca.leaf(&["cases.example"])));
        Some(ca.client_config())
    } else {
        env.write("gateway.yaml", &gateway(port));
        None
    };
    env.write(
        "stub.yaml",
        &service("default", "stub", &[format!("127.0.0.1:{stub_port}").parse().unwrap()]),
    );
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: all}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: stub, port: 80}]\n");
    env.config_sync();
    // The README's test profile: head 64 KiB, 100 fields, body 1 GiB, chunk extension 4 KiB
    // (lb's defaults); a short header timeout keeps slow cases quick.
    env.lb(&["--cores", "0", "--header-timeout", "2"]);
    env.wait_applied(1);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    let mut failures = Vec::new();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        let raw = raw_bytes(case);
        let expect = case["expect"].as_str().unwrap();
        let forwarded = case["forwarded_requests"].as_u64().unwrap_or(0) as usize;
        let finals_expected = case["client_final_responses"].as_u64().unwrap_or(1) as usize;
        let half_close = case["client_half_close"].as_bool().unwrap_or(false);
        {
            let mut l = log.lock().unwrap();
            *l = StubLog::default();
        }
        let result = run_client(
            port,
            tls.as_ref(),
            &raw,
            half_close,
            finals_expected,
            raw.starts_with(b"HEAD "),
        );
        std::thread::sleep(Duration::from_millis(30));
        let l = log.lock().unwrap();
        let mut problems = Vec::new();
        let got_forwarded = l.requests.len();
        if got_forwarded != forwarded {
            problems.push(format!(
                "upstream saw {got_forwarded} complete requests, expected {forwarded}"
            ));
        }
        problems.extend(l.violations.iter().cloned());
        let raw_upstream: String =
            l.raw.iter().map(|&b| (b as char).to_ascii_lowercase()).collect();
        for needle in case["forwarded_must_not_contain"].as_array().into_iter().flatten() {
            let needle = needle.as_str().unwrap_or("");
            let lowered: String = needle.chars().map(|c| c.to_ascii_lowercase()).collect();
            if !lowered.is_empty() && raw_upstream.contains(&lowered) {
                problems.push(format!("upstream bytes contain {needle:?}"));
            }
        }
        // Sluice's own cases may also say what must arrive (passed-on trailers).
        for needle in case["forwarded_must_contain"].as_array().into_iter().flatten() {
            let needle = needle.as_str().unwrap_or("");
            let lowered: String = needle.chars().map(|c| c.to_ascii_lowercase()).collect();
            if !raw_upstream.contains(&lowered) {
                problems.push(format!("upstream bytes lack {needle:?}"));
            }
        }
        if let Some(status) = expect.strip_prefix("reject_") {
            let status: u16 = status.parse().unwrap();
            if result.finals.last() != Some(&status) {
                problems
                    .push(format!("client got {:?}, expected last final {status}", result.finals));
            }
            if matches!(status, 400 | 501) && !result.closed {
                problems.push("connection not closed after a framing error".into());
            }
        } else if expect == "forward_normalized" {
            if result.finals.len() != finals_expected {
                problems.push(format!(
                    "client got finals {:?}, expected {finals_expected}",
                    result.finals
                ));
            }
            // Forwarded requests are answered by the stub (200); nothing else may answer them.
            let ok = result.finals.iter().filter(|&&s| s == 200).count();
            if ok != forwarded.min(finals_expected) {
                problems.push(format!(
                    "client got {:?}, expected {} answers from upstream",
                    result.finals,
                    forwarded.min(finals_expected)
                ));
            }
            let bodies: Vec<Vec<u8>> = case["forwarded_bodies_base64"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.as_str().unwrap_or(""))
                        .unwrap()
                })
                .collect();
            let got: Vec<Vec<u8>> = l.requests.iter().map(|(_, b)| b.clone()).collect();
            if !bodies.is_empty() && got != bodies {
                problems.push(format!(
                    "bodies {:?}, expected {:?}",
                    got.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>(),
                    bodies
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect::<Vec<_>>()
                ));
            }
        } else if expect == "close" {
            if !result.closed {
                problems.push("connection not closed".into());
            }
            if result.finals.iter().any(|&s| s != 400) {
                problems.push(format!("answered {:?} before closing", result.finals));
            }
        } else {
            problems.push(format!("unknown expectation {expect}"));
        }
        if problems.is_empty() {
            eprintln!("pass {id}");
        } else {
            eprintln!("FAIL {id}: {}", problems.join("; "));
            failures.push(format!("{id} ({expect}): {}", problems.join("; ")));
        }
    }
    let over = if over_tls { " over TLS" } else { "" };
    eprintln!("{} cases{over}, {} failed", cases.len(), failures.len());
    assert!(failures.is_empty(), "http-cases failures:\n{}", failures.join("\n"));
}
