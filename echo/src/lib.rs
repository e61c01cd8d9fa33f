//! The echo backend used by the quickstart and the tests. Every request is answered with JSON
//! describing what arrived (the reply shape of the Gateway API conformance suite's
//! `echo-basic`), plus the namespace, service and pod names it was started with, so a client
//! can see which backend served it.
//!
//! Contract (a subset of echo-basic, see `../shared/gateway-api/README.md`): a connection that
//! starts with the HTTP/2 preface is served as h2c, where `application/grpc` requests reach the
//! conformance gRPC service (`grpc`, `h2`); `/health` → `OK`;
//! `/stream` with a chunked body → each chunk echoed back as it arrives (full duplex);
//! `/status/NNN` → that status with an empty body; `?delay=<Go duration>` delays the answer;
//! request header `X-Echo-Set-Header: Name:Value,...` sets response headers; `X-Echo-Body`
//! (Sluice's, not upstream's) adds `body`, `bodyLength` and chunked `trailers`;
//! `X-Echo-Trailer: Name: value` (Sluice's) answers chunked with that trailer; `/ws` is a
//! WebSocket echo (RFC 6455: text and binary messages echoed, pings answered);
//! `/retry/...?uuid=U&succeedAfter=N[&responseCode=C][&delayRetry=D]` fails the first N
//! attempts for U (after waiting D: with status C, or by resetting the connection), then echoes.
//! Each echoed request is logged as `Echoing back request made to <uri> to client (<peer>)`.
//! With `serve_tls` (the `sluice echo --tls-listen` port, like the upstream echo's 8443) the
//! same answers come over TLS and carry the connection's `tls` facts (version, server name,
//! ALPN, cipher suite, and the client's certificates when `--tls-client-ca` asks for them).
//!
//! Deliberately simple (blocking sockets, a thread per connection): it is a test and demo
//! backend, not part of the data path being measured.

#![forbid(unsafe_code)]

pub mod grpc;
pub mod grpc_client;
mod h2;
pub mod ws;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "the echo backend is a test server (a thread per connection), not the data path"
)]
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tracing::{debug, info};

/// Who this echo server says it is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Namespace name reported in replies.
    pub namespace: String,
    /// Service name reported in replies.
    pub service: String,
    /// Pod name reported in replies.
    pub pod: String,
    /// Ingress name reported in replies.
    pub ingress: String,
}

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Retry-simulation ids remembered at most; the map starts over beyond it.
const MAX_RETRY_IDS: usize = 100_000;

/// Attempts seen per `/retry/` uuid, shared by the server's connections.
#[allow(clippy::disallowed_types, reason = "test server: attempts shared by its threads")]
type Attempts = Arc<Mutex<HashMap<String, u32>>>;

/// Serves on `listener` until the process ends.
pub fn serve(listener: &TcpListener, identity: Identity) -> io::Result<()> {
    accept_loop(listener, identity, None)
}

/// Serves HTTPS on `listener` with `config` until the process ends (the upstream echo's
/// port 8443): the same answers, plus the `tls` facts of each connection.
pub fn serve_tls(
    listener: &TcpListener,
    identity: Identity,
    config: &Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    accept_loop(listener, identity, Some(config))
}

/// A thread per accepted connection, plain or TLS.
fn accept_loop(
    listener: &TcpListener,
    identity: Identity,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    let port = listener.local_addr()?.port();
    let identity = Arc::new(identity);
    let attempts: Attempts = Arc::default();
    let kind = if tls.is_some() { "HTTPS" } else { "HTTP" };
    info!(addr = %listener.local_addr()?, pod = %identity.pod, "echo backend listening ({kind})");
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                debug!("accept: {e}");
                continue;
            }
        };
        let identity = Arc::clone(&identity);
        let attempts = Arc::clone(&attempts);
        let tls = tls.map(Arc::clone);
        std::thread::spawn(move || {
            let peer = stream.peer_addr().ok();
            let served = match tls {
                None => connection(stream, &identity, &attempts, port, peer),
                Some(config) => tls_connection(stream, config, &identity, &attempts, port, peer),
            };
            if let Err(e) = served {
                debug!("connection: {e}");
            }
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct Reply<'a> {
    path: &'a str,
    host: &'a str,
    method: &'a str,
    proto: &'a str,
    headers: BTreeMap<String, Vec<String>>,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    #[serde(rename = "httpPort")]
    http_port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a TlsFacts>,
    /// Only when the request asked with `X-Echo-Body` (Sluice's extension, for tests of body
    /// translation): the body as text (its first MiB), its length and any chunked trailers.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(rename = "bodyLength", skip_serializing_if = "Option::is_none")]
    body_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trailers: Option<BTreeMap<String, Vec<String>>>,
}

fn connection(
    stream: TcpStream,
    id: &Arc<Identity>,
    attempts: &Attempts,
    port: u16,
    peer: Option<SocketAddr>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if starts_h2(&stream)? {
        return h2::serve(stream, Arc::clone(id), port);
    }
    let reader = BufReader::with_capacity(16 * 1024, stream.try_clone()?);
    let tcp = stream.try_clone()?;
    exchanges(reader, stream, &tcp, None, id, attempts, port, peer)
}

/// Whether the connection starts with the HTTP/2 preface (h2c with prior knowledge).
fn starts_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf)?;
        if n == 0 || buf[..n] != h2::PREFACE[..n] {
            return Ok(false);
        }
        if n == h2::PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface so far: wait for more.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a TLS connection negotiated, as the upstream echo reports it (`tls` in the reply).
#[derive(Debug, Clone, Serialize)]
pub struct TlsFacts {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The server name the client sent.
    #[serde(rename = "serverName")]
    pub server_name: String,
    /// The ALPN protocol agreed (empty: none).
    #[serde(rename = "negotiatedProtocol")]
    pub negotiated_protocol: String,
    /// IANA name of the cipher suite.
    #[serde(rename = "cipherSuite")]
    pub cipher_suite: String,
    /// The client's certificates, PEM (left out when it sent none).
    #[serde(rename = "peerCertificates", skip_serializing_if = "Vec::is_empty")]
    pub peer_certificates: Vec<String>,
}

fn tls_connection(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    id: &Identity,
    attempts: &Attempts,
    port: u16,
    peer: Option<SocketAddr>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let tcp = stream.try_clone()?;
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let c = &tls.conn;
    let facts = TlsFacts {
        version: match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        server_name: c.server_name().unwrap_or_default().to_owned(),
        negotiated_protocol: c
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        // IANA names, as Go reports them (rustls says `TLS13_AES_…` for `TLS_AES_…`).
        cipher_suite: c
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(|n| n.strip_prefix("TLS13_").map_or_else(|| n.to_owned(), |r| format!("TLS_{r}")))
            .unwrap_or_default(),
        peer_certificates: c
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|d| pem(d))
            .collect(),
    };
    let shared = Shared(Rc::new(RefCell::new(tls)));
    let reader = BufReader::with_capacity(16 * 1024, shared.clone());
    exchanges(reader, shared, &tcp, Some(&facts), id, attempts, port, peer)
}

fn pem(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A TLS stream shared by the reading and the writing side of one connection's thread (they
/// take turns: the echo reads a request, then writes its answer).
struct Shared<S>(Rc<RefCell<S>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared(Rc::clone(&self.0))
    }
}

impl<S: Read> Read for Shared<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl<S: Write> Write for Shared<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Answers the requests of one connection: `reader` and `stream` are its two directions,
/// `tcp` the socket under them (to reset it for the retry simulation).
#[allow(clippy::too_many_arguments, reason = "one connection's facts, passed once")]
fn exchanges<R: Read, W: Write>(
    mut reader: BufReader<R>,
    mut stream: W,
    tcp: &TcpStream,
    tls: Option<&TlsFacts>,
    id: &Identity,
    attempts: &Attempts,
    port: u16,
    peer: Option<SocketAddr>,
) -> io::Result<()> {
    // Each response is built whole and written once, like a real server's buffered writer.
    let mut writer: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head = match read_head(&mut reader)? {
            Some(h) => h,
            None => return Ok(()),
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&head) else {
            stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        let method = req.method.unwrap_or("GET").to_owned();
        let target = req.path.unwrap_or("/").to_owned();
        let version = req.version.unwrap_or(1);
        let mut canonical: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut host = String::new();
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = version == 0;
        let mut set_headers = Vec::new();
        let mut ws_key: Option<String> = None;
        let mut echo_body = false;
        let mut trailer: Option<(String, String)> = None;
        for h in req.headers.iter() {
            let value = String::from_utf8_lossy(h.value).into_owned();
            let lower = h.name.to_ascii_lowercase();
            match lower.as_str() {
                "host" => {
                    host = value;
                    continue;
                }
                "content-length" => content_length = value.trim().parse().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
                "sec-websocket-key" => ws_key = Some(value.clone()),
                "x-echo-body" => echo_body = true,
                "x-echo-trailer" => {
                    trailer = value
                        .split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()));
                }
                "x-echo-set-header" => set_headers.extend(
                    value
                        .split(',')
                        .filter_map(|kv| kv.split_once(':'))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())),
                ),
                _ => {}
            }
            canonical.entry(canonical_name(h.name)).or_default().push(value);
        }
        if chunked && target == "/stream" {
            info!("Echoing back a chunked stream made to {target}");
            return echo_chunks(&mut reader, &mut stream);
        }
        let mut body = Body::default();
        if chunked {
            read_chunked(&mut reader, &mut body)?;
        } else if let Some(n) = content_length {
            body.read(&mut (&mut reader).take(n))?;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if let Some(delay) = query_value(query, "delay").and_then(parse_go_duration) {
            std::thread::sleep(delay);
        }
        let connection_header = if close { "Connection: close\r\n" } else { "" };
        let mut extra = String::new();
        for (k, v) in &set_headers {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
        if let (Some(key), "/ws") = (&ws_key, path) {
            info!("Echoing back request made to {target} to client (websocket)");
            write!(
                writer,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                ws::accept_key(key)
            )?;
            stream.write_all(&writer)?;
            return ws::echo_frames(&mut reader, &mut stream);
        }
        if path.starts_with("/retry/")
            && let Some(failure) = retry_failure(query, attempts)
        {
            if let Some(d) = failure.delay {
                std::thread::sleep(d);
            }
            let Some(code) = failure.status else {
                // No status asked for: the attempt fails with a connection reset.
                socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            };
            write!(
                writer,
                "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\n{extra}{connection_header}\r\n"
            )?;
        } else if path == "/health" {
            write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{connection_header}\r\nOK")?;
        } else if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok())
        {
            write!(
                writer,
                "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\n{extra}{connection_header}\r\n"
            )?;
        } else {
            let proto = if version == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
            let reply = Reply {
                path: &target,
                host: &host,
                method: &method,
                proto,
                headers: canonical,
                namespace: &id.namespace,
                ingress: &id.ingress,
                service: &id.service,
                pod: &id.pod,
                http_port: port.to_string(),
                tls,
                body: echo_body.then(|| String::from_utf8_lossy(&body.kept).into_owned()),
                body_length: echo_body.then_some(body.length),
                trailers: (echo_body && !body.trailers.is_empty()).then_some(body.trailers),
            };
            let body = pretty(&reply);
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            info!("Echoing back request made to {target} to client ({peer})");
            if let Some((name, value)) = &trailer {
                // Chunked, with the trailer asked for (Sluice's extension, for trailer tests).
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTrailer: {name}\r\nTransfer-Encoding: chunked\r\n{extra}{connection_header}\r\n"
                )?;
                if method != "HEAD" {
                    write!(writer, "{:x}\r\n", body.len())?;
                    writer.write_all(&body)?;
                    write!(writer, "\r\n0\r\n{name}: {value}\r\n\r\n")?;
                }
            } else {
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n{extra}{connection_header}\r\n",
                    body.len()
                )?;
                if method != "HEAD" {
                    writer.write_all(&body)?;
                }
            }
        }
        stream.write_all(&writer)?;
        stream.flush()?;
        writer.clear();
        if close {
            return Ok(());
        }
    }
}

/// How a simulated failing attempt fails.
struct Failure {
    status: Option<u16>,
    delay: Option<Duration>,
}

/// Counts this attempt for the query's `uuid`; a failure while the count is within
/// `succeedAfter`, `None` once the attempt should succeed (or without a uuid).
fn retry_failure(query: &str, attempts: &Attempts) -> Option<Failure> {
    let uuid = query_value(query, "uuid")?;
    let succeed_after: u32 = query_value(query, "succeedAfter")?.parse().ok()?;
    let count = {
        let mut seen = attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_RETRY_IDS && !seen.contains_key(uuid) {
            seen.clear();
        }
        let n = seen.entry(uuid.to_owned()).or_insert(0);
        *n += 1;
        *n
    };
    (count <= succeed_after).then(|| Failure {
        status: query_value(query, "responseCode").and_then(|c| c.parse().ok()),
        delay: query_value(query, "delayRetry").and_then(parse_go_duration),
    })
}

/// Reads one request head (through the blank line). `None` at a clean end of stream.
fn read_head<R: Read>(reader: &mut BufReader<R>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "partial head"))
            };
        }
        if head == b"\r\n" || head == b"\n" {
            head.clear();
            continue;
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

/// A request body as the echo keeps it: its length, its first MiB, its chunked trailers.
#[derive(Debug, Default)]
struct Body {
    length: u64,
    kept: Vec<u8>,
    trailers: BTreeMap<String, Vec<String>>,
}

impl Body {
    const KEPT: usize = 1 << 20;

    fn read(&mut self, from: &mut impl Read) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.length += n as u64;
            let room = Self::KEPT.saturating_sub(self.kept.len()).min(n);
            self.kept.extend_from_slice(&buf[..room]);
        }
    }
}

/// `/stream` with a chunked body: the head at once, then each request chunk sent back as a
/// response chunk as soon as it arrived (full duplex, for proxies' streaming tests); the
/// connection closes after the last chunk.
fn echo_chunks<R: Read, W: Write>(reader: &mut BufReader<R>, stream: &mut W) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    stream.flush()?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until the blank line.
            line.clear();
            while reader.read_line(&mut line)? > 0 && !line.trim().is_empty() {
                line.clear();
            }
            stream.write_all(b"0\r\n\r\n")?;
            return stream.flush();
        }
        let mut data = vec![0u8; size + 2];
        reader.read_exact(&mut data)?;
        stream.write_all(format!("{size:x}\r\n").as_bytes())?;
        stream.write_all(&data)?;
        stream.flush()?;
    }
}

fn read_chunked<R: Read>(reader: &mut BufReader<R>, body: &mut Body) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until the blank line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    let values = body.trailers.entry(canonical_name(name.trim())).or_default();
                    values.push(value.trim().to_owned());
                }
            }
        }
        body.read(&mut (&mut *reader).take(size))?;
        io::copy(&mut (&mut *reader).take(2), &mut io::sink())?;
    }
}

/// Go's `http.CanonicalHeaderKey`: `x-forwarded-for` → `X-Forwarded-For`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        upper = c == '-';
    }
    out
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// Parses a Go duration such as `1s`, `250ms`, `1.5s`, `2m`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// One-space indented JSON, as Go's `json.MarshalIndent(v, "", " ")`.
fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_name("HOST"), "Host");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn retry_simulation_fails_then_echoes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(&listener, Identity::default()));
        let get = |q: &str| -> io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            write!(s, "GET /retry/x?{q} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        let q = "uuid=a&succeedAfter=2&responseCode=503";
        assert!(get(q).unwrap().starts_with("HTTP/1.1 503 "));
        assert!(get(q).unwrap().starts_with("HTTP/1.1 503 "));
        assert!(get(q).unwrap().starts_with("HTTP/1.1 200 OK"));
        // Another uuid counts on its own; without a status the failure is a reset.
        let reset = get("uuid=b&succeedAfter=1");
        assert!(reset.as_ref().map_or(true, String::is_empty), "{reset:?}");
        assert!(get("uuid=b&succeedAfter=1").unwrap().starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn echoes_request_as_json() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let id = Identity {
            namespace: "ns".into(),
            service: "svc".into(),
            pod: "svc-1".into(),
            ..Default::default()
        };
        std::thread::spawn(move || serve(&listener, id));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /a?b=1 HTTP/1.1\r\nHost: demo.example\r\nx-test: 1\r\nX-Echo-Set-Header: X-Out:yes\r\nContent-Length: 3\r\n\r\nabcGET /status/503 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (first, second) = out.split_once("HTTP/1.1 503").unwrap();
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.contains("X-Out: yes\r\n"));
        let body: serde_json::Value =
            serde_json::from_str(first.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["path"], "/a?b=1");
        assert_eq!(body["host"], "demo.example");
        assert_eq!(body["method"], "POST");
        assert_eq!(body["pod"], "svc-1");
        assert_eq!(body["headers"]["X-Test"][0], "1");
        assert!(second.contains("Content-Length: 0"));
    }
}
