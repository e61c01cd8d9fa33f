//! A unary call of the conformance gRPC service over h2c: what `sluice grpc-call` and the
//! conformance runner send (grpcurl is not packaged here, and a test tool needs no more).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::grpc;

/// What came back from one call.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP status (200 for every gRPC answer, errors included).
    pub http_status: u16,
    /// `grpc-status` (trailers, or the head of a trailers-only answer); `None`: missing.
    pub code: Option<u32>,
    /// `grpc-message`, if any.
    pub message: String,
    /// Every response field and trailer, in order.
    pub headers: Vec<(String, String)>,
    /// The echo's assertions, when a message came back.
    pub assertions: Option<grpc::Assertions>,
}

/// Calls `path` (`/<service>/<method>`) with an empty request message on `addr` over h2c,
/// with `:authority` `authority` and `metadata` as request fields, within `timeout`.
pub fn call(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    metadata: &[(String, String)],
    timeout: Duration,
) -> Result<Call, String> {
    block_on(async {
        tokio::time::timeout(timeout, exchange(addr, authority, path, metadata))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    })
}

/// Runs a call on a current-thread runtime of its own (a test tool's client, not a server).
fn block_on<T>(call: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(call)
}

/// What came back from a streaming call ([`stream`]).
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Each message's echo, in order, as far as the call got.
    pub echoed: Vec<Vec<u8>>,
    /// HTTP status of the answer's head.
    pub http_status: u16,
    /// `grpc-status` (trailers, or a trailers-only head).
    pub code: Option<u32>,
    /// Every response field and trailer.
    pub headers: Vec<(String, String)>,
}

/// A streaming call of [`grpc::STREAM_METHOD`] in lock step: each message goes out only after
/// the previous one came back, each within `each` (so a proxy that buffered the request or
/// the answer fails the call instead of passing it late). With no messages the request stays
/// open (no END_STREAM) and the call waits for whatever ends it — a proxy's deadline.
pub fn stream(
    addr: SocketAddr,
    authority: &str,
    metadata: &[(String, String)],
    messages: &[&[u8]],
    each: Duration,
) -> Result<Streamed, String> {
    block_on(lock_step(addr, authority, metadata, messages, each))
}

async fn lock_step(
    addr: SocketAddr,
    authority: &str,
    metadata: &[(String, String)],
    messages: &[&[u8]],
    each: Duration,
) -> Result<Streamed, String> {
    let within = |what: String| move |_| format!("{what}: nothing within {each:?}");
    let (answer, mut send) = start(addr, authority, grpc::STREAM_METHOD, metadata).await?;
    let mut answer = Box::pin(answer);
    let mut body: Option<h2::RecvStream> = None;
    let mut head: Option<http::response::Parts> = None;
    let mut echoed = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let framed = grpc::frame(message);
        send.send_data(Bytes::from(framed.clone()), false).map_err(|e| format!("send: {e}"))?;
        let b = match &mut body {
            Some(b) => b,
            None => {
                let response = tokio::time::timeout(each, &mut answer)
                    .await
                    .map_err(within(format!("head after message {i}")))?
                    .map_err(|e| format!("HTTP/2 response: {e}"))?;
                let (parts, b) = response.into_parts();
                head = Some(parts);
                body.insert(b)
            }
        };
        let mut got = Vec::new();
        while got.len() < framed.len() {
            let chunk = tokio::time::timeout(each, b.data())
                .await
                .map_err(within(format!("echo of message {i}")))?
                .ok_or_else(|| format!("the answer ended before message {i} came back"))?
                .map_err(|e| format!("HTTP/2 body: {e}"))?;
            let _ = b.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        if got != framed {
            return Err(format!("message {i} came back as {got:?}"));
        }
        echoed.push(got[5..].to_vec());
    }
    if !messages.is_empty() {
        send.send_data(Bytes::new(), true).map_err(|e| format!("send: {e}"))?;
    }
    let (parts, mut b) = match (head, body) {
        (Some(h), Some(b)) => (h, b),
        _ => tokio::time::timeout(each, &mut answer)
            .await
            .map_err(within("head".into()))?
            .map_err(|e| format!("HTTP/2 response: {e}"))?
            .into_parts(),
    };
    let rest = tokio::time::timeout(each, read_body(&mut b)).await.map_err(within("end".into()))?;
    if !rest?.is_empty() {
        return Err("data after the last echo".into());
    }
    let mut headers = pairs(&parts.headers);
    if let Ok(Some(trailers)) = b.trailers().await {
        headers.extend(pairs(&trailers));
    }
    let code = headers.iter().find(|(n, _)| n == "grpc-status").and_then(|(_, v)| v.parse().ok());
    Ok(Streamed { echoed, http_status: parts.status.as_u16(), code, headers })
}

fn pairs(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

/// Connects over h2c and sends a gRPC request's head on `path` (the body left open).
async fn start(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    metadata: &[(String, String)],
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), String> {
    let tcp =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut client, connection) =
        h2::client::handshake(tcp).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in metadata {
        request = request.header(n.to_ascii_lowercase(), v);
    }
    let request = request.body(()).map_err(|e| format!("request: {e}"))?;
    client.send_request(request, false).map_err(|e| format!("HTTP/2 send: {e}"))
}

/// Reads a response body to its end (window released as it goes).
pub async fn read_body(body: &mut h2::RecvStream) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("HTTP/2 body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn exchange(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    metadata: &[(String, String)],
) -> Result<Call, String> {
    let (answer, mut send) = start(addr, authority, path, metadata).await?;
    send.send_data(Bytes::from(grpc::frame(&[])), true).map_err(|e| format!("send: {e}"))?;
    let answer = answer.await.map_err(|e| format!("HTTP/2 response: {e}"))?;
    let http_status = answer.status().as_u16();
    let mut headers = pairs(answer.headers());
    let mut body = answer.into_body();
    let bytes = read_body(&mut body).await?;
    if let Ok(Some(trailers)) = body.trailers().await {
        headers.extend(pairs(&trailers));
    }
    let field = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let code = field("grpc-status").and_then(|c| c.trim().parse().ok());
    let message = field("grpc-message").unwrap_or_default();
    let assertions = match grpc::unframe(&bytes)? {
        Some(m) => Some(grpc::decode_response(m)?),
        None => None,
    };
    Ok(Call { http_status, code, message, headers, assertions })
}
