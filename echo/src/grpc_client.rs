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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        tokio::time::timeout(timeout, exchange(addr, authority, path, metadata))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    })
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
    let (answer, mut send) =
        client.send_request(request, false).map_err(|e| format!("HTTP/2 send: {e}"))?;
    send.send_data(Bytes::from(grpc::frame(&[])), true).map_err(|e| format!("send: {e}"))?;
    let answer = answer.await.map_err(|e| format!("HTTP/2 response: {e}"))?;
    let pairs = |map: &http::HeaderMap| -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| {
                (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect()
    };
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
