//! HTTP/2 with prior knowledge (h2c) on the echo's ports, like the upstream echo's h2c port:
//! the same JSON answers (with `proto: HTTP/2.0`), and the conformance gRPC service
//! ([`crate::grpc`]) for requests whose content-type is `application/grpc`.
//!
//! A connection that starts with the HTTP/2 preface is handed here by the accept loop; it runs
//! on a current-thread tokio runtime of its own thread (a test backend, not the data path).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use tracing::{debug, info};

use crate::grpc;
use crate::{Identity, Reply, canonical_name, pretty};

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// Serves one h2c connection to its end.
pub(crate) fn serve(stream: TcpStream, id: Arc<Identity>, port: u16) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        stream.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(stream)?;
        let mut conn = h2::server::handshake(tcp).await.map_err(std::io::Error::other)?;
        while let Some(next) = conn.accept().await {
            let (request, respond) = match next {
                Ok(r) => r,
                Err(e) => {
                    debug!("h2c connection: {e}");
                    break;
                }
            };
            let id = Arc::clone(&id);
            tokio::spawn(async move {
                if let Err(e) = answer(request, respond, &id, port).await {
                    debug!("h2c stream: {e}");
                }
            });
        }
        Ok(())
    })
}

async fn read_body(body: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() < MAX_BODY {
            out.extend_from_slice(&chunk);
        }
    }
    Ok(out)
}

async fn answer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    id: &Identity,
    port: u16,
) -> Result<(), h2::Error> {
    let (parts, mut body) = request.into_parts();
    if parts.uri.path() == grpc::STREAM_METHOD {
        return echo_stream(body, respond).await;
    }
    let body = read_body(&mut body).await?;
    let authority = parts.uri.authority().map_or("", |a| a.as_str()).to_owned();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return answer_grpc(&parts.headers, &authority, &path, &body, respond, id);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(canonical_name(name.as_str())).or_default().push(value);
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        let response =
            Response::builder().status(code).body(()).map_err(|_| h2::Reason::INTERNAL_ERROR)?;
        respond.send_response(response, true)?;
        return Ok(());
    }
    let reply = Reply {
        path: &path,
        host: &authority,
        method: parts.method.as_str(),
        proto: "HTTP/2.0",
        headers,
        namespace: &id.namespace,
        ingress: &id.ingress,
        service: &id.service,
        pod: &id.pod,
        http_port: port.to_string(),
        tls: None,
        body: None,
        body_length: None,
        trailers: None,
    };
    info!("Echoing back request made to {path} to client (h2c)");
    let json = pretty(&reply);
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", json.len())
        .body(())
        .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
    let head_only = parts.method == http::Method::HEAD;
    let mut send = respond.send_response(response, head_only)?;
    if !head_only {
        send.send_data(Bytes::from(json), true)?;
    }
    Ok(())
}

/// One unary call of the conformance service; any other method is UNIMPLEMENTED.
fn answer_grpc(
    headers: &HeaderMap,
    authority: &str,
    path: &str,
    body: &[u8],
    mut respond: SendResponse<Bytes>,
    id: &Identity,
) -> Result<(), h2::Error> {
    let method = path.strip_prefix('/').and_then(|p| p.split_once('/'));
    let implemented =
        method.is_some_and(|(s, m)| s == grpc::SERVICE && grpc::IMPLEMENTED.contains(&m));
    let valid_request = matches!(grpc::unframe(body), Ok(Some(_)));
    let base = || Response::builder().status(200).header("content-type", "application/grpc");
    if !implemented || !valid_request {
        let (code, message) = if implemented {
            ("13", "the request is not one uncompressed gRPC message")
        } else {
            ("12", "unknown service or method")
        };
        // Trailers-only (a HEADERS frame with END_STREAM), as gRPC servers answer.
        let response = base()
            .header("grpc-status", code)
            .header("grpc-message", message)
            .body(())
            .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
        respond.send_response(response, true)?;
        return Ok(());
    }
    let mut metadata = vec![(":authority".to_owned(), authority.to_owned())];
    for (name, value) in headers {
        metadata.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    let assertions = grpc::Assertions {
        fully_qualified_method: path.to_owned(),
        headers: metadata,
        authority: authority.to_owned(),
        namespace: id.namespace.clone(),
        ingress: id.ingress.clone(),
        service_name: id.service.clone(),
        pod: id.pod.clone(),
    };
    info!("Echoing back gRPC call {path} (h2c)");
    let response = base().body(()).map_err(|_| h2::Reason::INTERNAL_ERROR)?;
    let mut send = respond.send_response(response, false)?;
    send.send_data(Bytes::from(grpc::frame(&grpc::encode_response(&assertions))), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}

/// [`grpc::STREAM_METHOD`]: the head after the first chunk, each chunk back as it came, OK at
/// the end of the request.
async fn echo_stream(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let mut send = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let send = match &mut send {
            Some(s) => s,
            None => {
                info!("Echoing back a gRPC stream {} (h2c)", grpc::STREAM_METHOD);
                let head = Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
                send.insert(respond.send_response(head, false)?)
            }
        };
        send.send_data(chunk, false)?;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    match &mut send {
        Some(s) => s.send_trailers(trailers)?,
        None => {
            let mut head = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .map_err(|_| h2::Reason::INTERNAL_ERROR)?;
            head.headers_mut().extend(trailers);
            respond.send_response(head, true)?;
        }
    }
    Ok(())
}
