//! One HTTP/2 stream as an HTTP/1 exchange: the request HEADERS translated into an HTTP/1.1
//! head (RFC 9113 §8.3 → RFC 9112), and [`H2Stream`], the stream seen as the exchange's client
//! transport.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response, StatusCode};
use tracing::debug;

use super::Connection;
use crate::core::Core;
use crate::http1::body::{BodyDecoder, Encode};
use crate::http1::request::ClientCert;
use crate::http1::response::{self, ResponseFraming};
use crate::io::{InBuf, Spare};
use crate::timer::Deadline;
use crate::transport::{StreamSide, Transport};

/// Serves one stream: translate, run the exchange, end the stream.
pub(super) async fn serve(
    core: &Rc<Core>,
    conn: &Rc<Connection>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let mut head = core.spare.take();
    let (parts, body) = request.into_parts();
    let request_done = body.is_end_stream();
    let chunked = match http1_head(&parts, request_done, &mut head) {
        Ok(chunked) => chunked,
        Err(why) => {
            // Malformed (RFC 9113 §8.1.1): a stream error, never forwarded.
            debug!("HTTP/2 request refused: {why}");
            core.spare.give(head);
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return;
        }
    };
    let head_method = parts.method == http::Method::HEAD;
    let mut input = InBuf::Heap { buf: head, start: 0 };
    let stream = Rc::new(H2Stream {
        recv: RefCell::new(body),
        chunked,
        request_done: Cell::new(request_done),
        respond: RefCell::new(Some(respond)),
        send: RefCell::new(None),
        response: RefCell::new(ResponseState::Head(Vec::new())),
        head_method,
        server_name: conn.server_name.clone(),
        client_cert: conn.client_cert.clone(),
    });
    let transport = Transport::Stream(Rc::clone(&stream) as Rc<dyn StreamSide>);
    let deadline = Rc::new(Deadline::default());
    let reset = {
        let exchange = crate::conn::exchange(
            core,
            &transport,
            &mut input,
            &deadline,
            &conn.client,
            conn.local,
        );
        // A client that resets the stream ends the exchange where it stands (upstream I/O
        // included): nobody is waiting for its answer.
        let (exchange, watch) = (pin!(exchange), pin!(poll_fn(|cx| stream.poll_reset(cx))));
        match futures_util::future::select(exchange, watch).await {
            futures_util::future::Either::Left(_) => false,
            futures_util::future::Either::Right((reason, _)) => {
                debug!(?reason, "HTTP/2 stream reset by the client");
                true
            }
        }
    };
    input.release(&core.spare);
    drop(transport);
    if !stream.finish() && reset {
        conn.early_resets.set(conn.early_resets.get() + 1);
    }
}

/// The stream as the exchange's client transport.
impl StreamSide for H2Stream {
    fn read<'a>(
        &'a self,
        input: &'a mut InBuf,
        spare: &'a Spare,
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + 'a>> {
        Box::pin(H2Stream::read(self, input, spare))
    }

    fn send<'a>(&'a self, bytes: &'a [u8]) -> Pin<Box<dyn Future<Output = io::Result<()>> + 'a>> {
        Box::pin(H2Stream::send(self, bytes))
    }

    fn server_name(&self) -> Option<&[u8]> {
        self.server_name.as_deref()
    }

    fn client_cert(&self) -> Option<&Rc<ClientCert>> {
        self.client_cert.as_ref()
    }
}

/// Writes the HTTP/1.1 head for an HTTP/2 request into `out`; `Ok(true)` when the body is
/// sent chunked (no content-length given and DATA may follow: `ended` is false). `Err`: the
/// request is malformed.
fn http1_head(
    request: &http::request::Parts,
    ended: bool,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    let method = &request.method;
    if method == http::Method::CONNECT {
        return Err("CONNECT is not supported".into());
    }
    let uri = &request.uri;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    if target.is_empty() {
        return Err("empty :path".into());
    }
    let headers = &request.headers;
    // :authority, or Host when the client sent none (RFC 9113 §8.3.1); both: they must agree.
    let host = headers.get(http::header::HOST);
    let authority = match (uri.authority(), host) {
        (Some(a), Some(h)) if a.as_str().as_bytes() != h.as_bytes() => {
            return Err(":authority and host differ".into());
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return Err("no :authority and no host".into()),
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    check_fields(headers)?;
    let mut cookies = 0;
    for (name, value) in headers {
        match name.as_str() {
            "host" => continue,
            // Joined into one field below (RFC 9113 §8.2.3).
            "cookie" => {
                cookies += 1;
                continue;
            }
            _ => {}
        }
        crate::http1::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if cookies > 0 {
        out.extend_from_slice(b"Cookie: ");
        for (i, v) in headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let length = headers.contains_key(http::header::CONTENT_LENGTH);
    let chunked = !length && !ended;
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(chunked)
}

/// RFC 9113 §8.2: lower-case names, values without NUL/CR/LF or edge whitespace, no
/// connection-specific fields, `te` only as `trailers`. (The h2 crate enforces some of this;
/// the translation into HTTP/1 bytes must not depend on it.)
fn check_fields(headers: &HeaderMap) -> Result<(), String> {
    for (name, value) in headers {
        let n = name.as_str();
        if n.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("upper-case field name {n:?}"));
        }
        if matches!(
            n,
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            return Err(format!("connection-specific field {n:?}"));
        }
        let v = value.as_bytes();
        if n == "te" && !v.eq_ignore_ascii_case(b"trailers") {
            return Err("te other than trailers".into());
        }
        if v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(format!("field {n:?} has NUL, CR or LF in its value"));
        }
        if v.first().is_some_and(|&b| b == b' ' || b == b'\t')
            || v.last().is_some_and(|&b| b == b' ' || b == b'\t')
        {
            return Err(format!("field {n:?} has leading or trailing whitespace"));
        }
    }
    Ok(())
}

/// What [`H2Stream::send_head`] found at the start of lb's output.
enum Head {
    /// Not a whole head yet.
    Incomplete,
    /// An interim (1xx) head of this many bytes, sent.
    Interim(usize),
    /// The final head of this many bytes, sent; the body's decoder unless there is none.
    Final(usize, Option<BodyDecoder>),
}

/// Response fields with no place in HTTP/2 (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] =
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"];

/// Where the HTTP/1 response lb writes to the stream stands.
enum ResponseState {
    /// Collecting the head.
    Head(Vec<u8>),
    /// Sending the body, decoding lb's framing.
    Body(BodyDecoder),
    /// The stream is ended.
    Done,
}

/// An HTTP/2 stream as the exchange's client transport.
struct H2Stream {
    recv: RefCell<RecvStream>,
    /// The request body goes to the exchange chunk-encoded (no content-length was given).
    chunked: bool,
    /// END_STREAM was received (and, chunked, the last chunk handed over).
    request_done: Cell<bool>,
    respond: RefCell<Option<SendResponse<Bytes>>>,
    send: RefCell<Option<SendStream<Bytes>>>,
    response: RefCell<ResponseState>,
    head_method: bool,
    server_name: Option<Rc<[u8]>>,
    client_cert: Option<Rc<ClientCert>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream").finish_non_exhaustive()
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

impl H2Stream {
    /// The next request body bytes (DATA, chunk-encoded when `chunked`), appended to `input`;
    /// 0 at the end of the body.
    #[allow(clippy::await_holding_refcell_ref, reason = "one reader per stream")]
    async fn read(&self, input: &mut InBuf, spare: &Spare) -> io::Result<usize> {
        if self.request_done.get() {
            return Ok(0);
        }
        let mut recv = self.recv.borrow_mut();
        match crate::h2io::next_data(&mut recv, self.chunked, input, spare).await {
            // The frame carried END_STREAM: the last chunk goes with it, so the request is
            // sent upstream with its end in one piece (one final DATA frame, not a small DATA
            // frame and an empty one — h2 peers budget small non-final frames).
            Ok(Some(n)) if self.chunked && recv.is_end_stream() => {
                self.request_done.set(true);
                Ok(n + crate::h2io::last_chunk(None, input, spare))
            }
            Ok(Some(n)) => Ok(n),
            Err(e) => Err(h2_io(e)),
            Ok(None) => {
                self.request_done.set(true);
                if !self.chunked {
                    return Ok(0);
                }
                // Trailers, if any, end the chunked body.
                let trailers = recv.trailers().await.ok().flatten();
                if let Some(t) = &trailers {
                    check_fields(t).map_err(io::Error::other)?;
                }
                Ok(crate::h2io::last_chunk(trailers.as_ref(), input, spare))
            }
        }
    }

    /// Takes HTTP/1 response bytes lb wrote and sends them on: the head as HEADERS (1xx as
    /// informational HEADERS), the body as DATA within the client's flow-control window.
    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let Some((data, end, trailers)) = self.take(bytes)? else { return Ok(()) };
        self.send_data(data, end && trailers.is_none()).await?;
        if let Some(trailers) = trailers {
            let mut send = self.send.borrow_mut();
            let Some(send) = send.as_mut() else { return Err(io::ErrorKind::BrokenPipe.into()) };
            send.send_trailers(trailers).map_err(h2_io)?;
        }
        if end {
            // Done only once the last DATA is out: a stall before it still resets the stream.
            *self.response.borrow_mut() = ResponseState::Done;
        }
        Ok(())
    }

    /// The synchronous part of [`H2Stream::send`]: heads are parsed and sent here; body bytes
    /// come back decoded, with whether they end the body and, at its end, its trailers.
    fn take(&self, bytes: &[u8]) -> io::Result<Option<(Bytes, bool, Option<HeaderMap>)>> {
        let mut state = self.response.borrow_mut();
        let held;
        let body_bytes: &[u8] = match &mut *state {
            ResponseState::Done => return Ok(None),
            ResponseState::Body(_) => bytes,
            ResponseState::Head(buf) => {
                // Usually the whole head comes in one write: parsed where it lies. A head
                // split across writes is collected first.
                let head_bytes: &[u8] = if buf.is_empty() {
                    bytes
                } else {
                    buf.extend_from_slice(bytes);
                    held = std::mem::take(buf);
                    &held
                };
                let mut at = 0;
                loop {
                    match self.send_head(&head_bytes[at..])? {
                        Head::Incomplete => {
                            if let ResponseState::Head(buf) = &mut *state {
                                buf.extend_from_slice(&head_bytes[at..]);
                            }
                            return Ok(None);
                        }
                        Head::Interim(len) => at += len,
                        Head::Final(_, None) => {
                            *state = ResponseState::Done;
                            return Ok(None);
                        }
                        Head::Final(len, Some(decoder)) => {
                            *state = ResponseState::Body(decoder);
                            break &head_bytes[at + len..];
                        }
                    }
                }
            }
        };
        let ResponseState::Body(decoder) = &mut *state else { return Ok(None) };
        if body_bytes.is_empty() {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(body_bytes.len());
        decoder
            .decode(body_bytes, &mut data)
            .map_err(|e| io::Error::other(format!("response body: {e:?}")))?;
        let end = decoder.is_done();
        let mut trailers = HeaderMap::new();
        if end {
            for (name, value) in decoder.trailers() {
                // The chunked decoder checked the grammar; what http refuses is dropped.
                if let (Ok(n), Ok(v)) =
                    (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
                {
                    trailers.append(n, v);
                }
            }
        }
        let trailers = (!trailers.is_empty()).then_some(trailers);
        Ok(Some((Bytes::from(data), end, trailers)))
    }

    /// Parses lb's HTTP/1 response head at the start of `bytes` and sends it as HEADERS
    /// (1xx as informational HEADERS). The field values are slices of one copy of the head,
    /// and names are normalised by `http` without an allocation for the common ones.
    fn send_head(&self, bytes: &[u8]) -> io::Result<Head> {
        let mut fields = response::response_fields();
        let (head, fields) = match response::parse_response(bytes, &mut fields, self.head_method) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Head::Incomplete),
            Err(e) => return Err(io::Error::other(e.0)),
        };
        let status = StatusCode::from_u16(head.status).map_err(io::Error::other)?;
        let shared = Bytes::copy_from_slice(&bytes[..head.len]);
        let mut response = Response::new(());
        *response.status_mut() = status;
        let map = response.headers_mut();
        map.reserve(fields.len());
        for f in fields {
            let name = f.name.as_bytes();
            // Connection-specific fields have no place in HTTP/2 (RFC 9113 §8.2.2).
            if CONNECTION_SPECIFIC.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                continue;
            }
            let name = http::HeaderName::from_bytes(name).map_err(io::Error::other)?;
            // The value's place in the head, taken from the copy.
            let at = (f.value.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
            let value = shared.get(at..at + f.value.len()).map(|v| shared.slice_ref(v));
            let value = http::HeaderValue::from_maybe_shared(value.unwrap_or_default())
                .map_err(io::Error::other)?;
            map.append(name, value);
        }
        let mut respond = self.respond.borrow_mut();
        let Some(sender) = respond.as_mut() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if status.is_informational() {
            sender.send_informational(response).map_err(h2_io)?;
            return Ok(Head::Interim(head.len));
        }
        let body = match head.framing {
            ResponseFraming::None | ResponseFraming::Length(0) => None,
            ResponseFraming::Length(n) => Some(BodyDecoder::length(n, Encode::Raw)),
            ResponseFraming::Chunked => Some(BodyDecoder::chunked(Encode::Raw, u64::MAX, 4096)),
            ResponseFraming::UntilClose => Some(BodyDecoder::until_close(Encode::Raw)),
        };
        let send = sender.send_response(response, body.is_none()).map_err(h2_io)?;
        *respond = None;
        if body.is_some() {
            *self.send.borrow_mut() = Some(send);
        }
        Ok(Head::Final(head.len, body))
    }

    /// Sends body bytes as DATA within the client's window (`http2::send_all`).
    #[allow(clippy::await_holding_refcell_ref, reason = "one writer per stream")]
    async fn send_data(&self, data: Bytes, end: bool) -> io::Result<()> {
        let mut send = self.send.borrow_mut();
        let Some(send) = send.as_mut() else { return Err(io::ErrorKind::BrokenPipe.into()) };
        crate::h2io::send_all(send, data, end).await
    }

    /// After the exchange: a response that did not end cleanly resets the stream (the client
    /// must not take a cut-off body for a whole one). `true` when the response was complete.
    fn finish(&self) -> bool {
        if matches!(*self.response.borrow(), ResponseState::Done) {
            return true;
        }
        if let Some(send) = self.send.borrow_mut().as_mut() {
            send.send_reset(Reason::INTERNAL_ERROR);
        } else if let Some(respond) = self.respond.borrow_mut().as_mut() {
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
        false
    }

    /// Ready when the client reset the stream (or the connection failed).
    fn poll_reset(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Reason> {
        use std::task::Poll;
        // A borrow held by a write in progress: the next wake-up polls again.
        // A failed connection counts as a reset (CANCEL): nobody will read the answer.
        let reason = |p: Poll<Result<Reason, h2::Error>>| p.map(|r| r.unwrap_or(Reason::CANCEL));
        if let Ok(mut respond) = self.respond.try_borrow_mut()
            && let Some(r) = respond.as_mut()
        {
            return reason(r.poll_reset(cx));
        }
        if let Ok(mut send) = self.send.try_borrow_mut()
            && let Some(s) = send.as_mut()
        {
            return reason(s.poll_reset(cx));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use proptest::prelude::*;

    use super::*;
    use crate::http1::parse::{Framing, Limits, parse};

    fn head(build: http::request::Builder, ended: bool) -> Result<(Vec<u8>, bool), String> {
        let (parts, ()) = build.body(()).unwrap().into_parts();
        let mut out = Vec::new();
        http1_head(&parts, ended, &mut out).map(|chunked| (out, chunked))
    }

    #[test]
    fn pseudo_headers_cookies_and_framing_become_an_http1_head() {
        let req = Request::builder()
            .method("POST")
            .uri("https://h2.example/a/b?c=d")
            .header("cookie", "a=1")
            .header("x-one", "1")
            .header("cookie", "b=2");
        let (out, chunked) = head(req, false).unwrap();
        assert!(chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nHost: h2.example\r\nx-one: 1\r\nCookie: a=1; b=2\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        // A declared length is kept (the codec holds DATA to it); no body at all: no framing.
        let req = Request::builder().method("PUT").uri("http://h/").header("content-length", "3");
        let (out, chunked) = head(req, false).unwrap();
        assert!(!chunked && String::from_utf8_lossy(&out).contains("content-length: 3\r\n"));
        let (out, _) = head(Request::builder().uri("http://h/"), true).unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        // Malformed: no authority at all; host against :authority; CONNECT.
        assert!(head(Request::builder().uri("/x"), true).is_err());
        assert!(head(Request::builder().uri("http://a/").header("host", "b"), true).is_err());
        assert!(head(Request::builder().uri("/x").header("host", "b"), true).is_ok());
        assert!(head(Request::builder().method("CONNECT").uri("http://a:443"), true).is_err());
    }

    proptest! {
        /// Whatever fields an HTTP/2 request carries, the head lb makes of it either is
        /// refused or parses back — by lb's own strict HTTP/1 parser — into exactly that
        /// request: same method, target and Host, every field with its value, no field more
        /// (request smuggling across the translation would need one).
        #[test]
        fn the_translation_parses_back_to_the_same_request(
            fields in proptest::collection::vec(
                ("[a-z][a-z0-9-]{0,12}", proptest::collection::vec(any::<u8>(), 0..24)),
                0..8,
            ),
            path in "/[a-zA-Z0-9/._~%-]{0,20}",
            ended in any::<bool>(),
        ) {
            let mut req = Request::builder().method("POST").uri(format!("http://h2.example{path}"));
            let mut sent = Vec::new();
            for (name, value) in &fields {
                if let Ok(v) = http::HeaderValue::from_bytes(value) {
                    req = req.header(name.as_str(), v.clone());
                    sent.push((name.clone(), v));
                }
            }
            let Ok((out, chunked)) = head(req, ended) else { return Ok(()) };
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let limits = Limits { underscores: crate::http1::parse::Underscores::Allow, ..Limits::default() };
            let h = match parse(&out, &mut parsed, &limits) {
                Ok(Some(h)) => h,
                // lb's parser may refuse what it refuses from any client (e.g. a bad
                // content-length): a 400, never a different request.
                Ok(None) => panic!("incomplete head: {:?}", String::from_utf8_lossy(&out)),
                Err(_) => return Ok(()),
            };
            prop_assert_eq!(h.len, out.len());
            prop_assert_eq!(&out[h.method.clone()], b"POST");
            prop_assert_eq!(&out[h.origin_form.clone()], path.as_bytes());
            let got: Vec<(String, Vec<u8>)> = parsed[..h.header_count]
                .iter()
                .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
                .collect();
            let mut want: Vec<(String, Vec<u8>)> = vec![("host".into(), b"h2.example".to_vec())];
            let mut cookies = Vec::new();
            for (name, value) in &sent {
                match name.as_str() {
                    "host" => {}
                    "cookie" => cookies.push(value.as_bytes().to_vec()),
                    _ => want.push((name.clone(), value.as_bytes().to_vec())),
                }
            }
            if !cookies.is_empty() {
                want.push(("cookie".into(), cookies.join(&b"; "[..])));
            }
            if chunked {
                want.push(("transfer-encoding".into(), b"chunked".to_vec()));
                prop_assert!(matches!(h.framing, Framing::Chunked));
            }
            prop_assert_eq!(got, want);
        }
    }
}
