//! The cases' client, plain or over TLS (rustls, trusting the runner's CA, with the vector's
//! server name and optional client certificate), one connection per request, bounded in time:
//! HTTP/1.1 (`Connection: close`, tolerant of any framing the gateway chooses), or HTTP/2 for
//! `protocol: HTTP/2.0` (ALPN h2) and `H2C_PRIOR_KNOWLEDGE` (the h2 crate on a current-thread
//! tokio runtime — a test tool's choice, not lb's); gRPC calls (`protocol: grpc (h2c)`) are
//! unary calls of the conformance echo service (`echo::grpc_client`), the answer's assertions
//! turned into the echo's JSON shape so the backend checks read them as they read any echo.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// How to speak TLS to the gateway.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Client configuration (roots, ALPN, client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// Server name to send.
    pub sni: String,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order (names as received).
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl Response {
    /// Values of a header, case-insensitive name, joined with `,` as the suite compares them.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Sends one request and reads the whole response.
pub fn send(
    addr: SocketAddr,
    method: &str,
    host: Option<&str>,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Response, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = ServerName::try_from(tls.sni.clone())
                .map_err(|e| format!("server name {:?}: {e}", tls.sni))?;
            let conn = rustls::ClientConnection::new(Arc::clone(&tls.config), name)
                .map_err(|e| format!("TLS: {e}"))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // Finish the handshake first, so its failure is reported as one.
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).map_err(|e| format!("TLS handshake: {e}"))?;
            }
            Box::new(s)
        }
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    req.push_str(&format!("Host: {host}\r\n"));
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
        if let Some(done) = complete(&raw, method) {
            raw.truncate(done);
            break;
        }
    }
    parse(&raw, method)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Length of a complete response at the start of `raw`, when it is complete.
fn complete(raw: &[u8], method: &str) -> Option<usize> {
    let head_end = find(raw, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(head_end);
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let body = &raw[head_end..];
        return find(body, b"0\r\n\r\n").map(|i| head_end + i + 5);
    }
    let len: usize = header("content-length")?.parse().ok()?;
    (raw.len() >= head_end + len).then_some(head_end + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(raw: &[u8], method: &str) -> Result<Response, String> {
    let head_end =
        find(raw, b"\r\n\r\n").ok_or("connection closed before a complete response head")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let mut body = raw[head_end..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked && method != "HEAD" {
        body = dechunk(&body);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let size = std::str::from_utf8(&b[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Sends one request over HTTP/2 (a connection of its own) and reads the whole response.
pub fn send_h2(
    addr: SocketAddr,
    method: &str,
    host: Option<&str>,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Response, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        match tls {
            None => h2_exchange(tcp, "http", method, &host, path, headers).await,
            Some(tls) => {
                let mut config = (*tls.config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let name = ServerName::try_from(tls.sni.clone())
                    .map_err(|e| format!("server name {:?}: {e}", tls.sni))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the gateway did not choose h2 by ALPN".into());
                }
                h2_exchange(stream, "https", method, &host, path, headers).await
            }
        }
    };
    runtime.block_on(async {
        tokio::time::timeout(timeout, exchange).await.map_err(|_| "timed out".to_owned())?
    })
}

/// One unary gRPC call (`/<service>/<method>`, an empty `EchoRequest`) over h2c
/// (`echo::grpc_client`). The response keeps the HTTP status and every header and trailer (so
/// `grpc-status` is there, trailers-only or not); its body is the echo's JSON shape built from
/// the `EchoResponse` assertions (path: the fully qualified method; pod, namespace, headers),
/// so the backend checks read it as they read any echo reply.
pub fn send_grpc(
    addr: SocketAddr,
    authority: Option<&str>,
    method: &str,
    metadata: &[(String, String)],
    timeout: Duration,
) -> Result<Response, String> {
    let authority = authority.map_or_else(|| addr.to_string(), str::to_owned);
    let call = echo::grpc_client::call(addr, &authority, method, metadata, timeout)?;
    let mut body = Vec::new();
    if let Some(a) = call.assertions {
        let mut seen: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
        for (k, v) in &a.headers {
            let entry =
                seen.entry(echo::canonical_name(k)).or_insert_with(|| serde_json::json!([]));
            if let Some(list) = entry.as_array_mut() {
                list.push(serde_json::Value::String(v.clone()));
            }
        }
        let json = serde_json::json!({
            "path": a.fully_qualified_method,
            "host": a.authority,
            "method": "POST",
            "namespace": a.namespace,
            "pod": a.pod,
            "headers": seen,
        });
        body = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    }
    Ok(Response { status: call.http_status, headers: call.headers, body })
}

async fn h2_exchange<T>(
    io: T,
    scheme: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Response, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, connection) =
        h2::client::handshake(io).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request =
        http::Request::builder().method(method).uri(format!("{scheme}://{host}{path}"));
    for (n, v) in headers {
        request = request.header(n.to_ascii_lowercase(), v);
    }
    let request = request.body(()).map_err(|e| format!("request: {e}"))?;
    let (answer, _) =
        client.send_request(request, true).map_err(|e| format!("HTTP/2 send: {e}"))?;
    let answer = answer.await.map_err(|e| format!("HTTP/2 response: {e}"))?;
    let status = answer.status().as_u16();
    let headers = answer
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let bytes = echo::grpc_client::read_body(&mut answer.into_body()).await?;
    Ok(Response { status, headers, body: bytes })
}
