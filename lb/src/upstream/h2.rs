//! HTTP/2 to upstreams: h2c with prior knowledge to Service ports whose `appProtocol` is
//! `kubernetes.io/h2c`, and to every GRPCRoute backend.
//!
//! Each core keeps its own multiplexed connections per endpoint ([`H2Pool`]): a request takes
//! a stream on a connection whose peer still has room (SETTINGS_MAX_CONCURRENT_STREAMS), else
//! a new connection is opened, so a thousand client streams share a few upstream sockets.
//! The `h2` client codec runs on this core's runtime over the same [`H2Io`] shim as the
//! server side; each connection's codec is driven by a task of its own.
//!
//! The stream is the exchange's upstream transport ([`UpStream`], a `transport::StreamSide`):
//! the exchange writes the HTTP/1 request it would send an HTTP/1 upstream, which is read back
//! here into HEADERS (RFC 9113 §8.3: `:authority` from Host, connection-specific fields
//! dropped, `te: trailers` added) and DATA (the body's framing decoded, chunked trailers sent
//! as trailers); the response HEADERS and DATA are handed back as an HTTP/1 response
//! (chunked when no content-length came, so trailers survive), which the exchange relays as
//! it relays any. One translation layer instead of a second proxy; what it costs is measured
//! in docs/ARCHITECTURE.md.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tracing::debug;

use super::pool::{AddrHasher, Key};
use crate::error::{Phase, ProxyError, Side, timed};
use crate::h2io::{H2Io, send_all};
use crate::http1::body::{BodyDecoder, Encode};
use crate::http1::parse::{self, Framing, Limits, MAX_HEADERS, Underscores};
use crate::io::{InBuf, Spare};
use crate::settings::H2Limits;
use crate::timer::{Deadline, Wheel};
use crate::transport::{StreamSide, Transport};

/// One multiplexed upstream connection.
struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it.
    active: Cell<usize>,
    /// Its codec task ended (GOAWAY, an error, the peer closed).
    closed: Rc<Cell<bool>>,
    /// Wheel tick it was last used.
    last_used: Cell<u64>,
}

impl H2Conn {
    fn has_room(&self) -> bool {
        !self.closed.get() && self.active.get() < self.send.current_max_send_streams()
    }
}

/// A connection being opened, shared by every request that needs one meanwhile.
type Connecting = Shared<LocalBoxFuture<'static, Result<Rc<H2Conn>, String>>>;

/// The connections of a pool, and those being opened (one at a time per endpoint: a burst of
/// requests with no connection yet waits for the same one instead of opening one each).
#[derive(Default)]
struct Conns {
    open: HashMap<Key, Vec<Rc<H2Conn>>, BuildHasherDefault<AddrHasher>>,
    connecting: HashMap<Key, Connecting, BuildHasherDefault<AddrHasher>>,
}

/// This core's HTTP/2 upstream connections, by endpoint. A clone is another handle on the
/// same connections (a mirror copy's task holds one).
#[derive(Clone)]
pub(crate) struct H2Pool {
    /// Shared with the connection attempts in flight, which add what they opened.
    conns: Rc<RefCell<Conns>>,
    /// The core's buffer free list (each connection's reads wait in its buffers).
    spare: Rc<Spare>,
    /// Windows, frame and header-list sizes (the same as for clients).
    limits: H2Limits,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("endpoints", &self.conns.borrow().open.len()).finish()
    }
}

impl H2Pool {
    /// An empty pool whose connections read through `spare` and use `limits`.
    pub(crate) fn new(spare: Rc<Spare>, limits: H2Limits) -> H2Pool {
        H2Pool { conns: Rc::default(), spare, limits }
    }

    /// Drops closed connections, idle ones older than `idle_ticks`, and those to endpoints
    /// `keep` no longer wants. A dropped connection's codec sends GOAWAY and ends once its
    /// last stream is done.
    pub(crate) fn prune(
        &mut self,
        now: u64,
        idle_ticks: u64,
        keep: impl Fn(&std::net::SocketAddr) -> bool,
    ) {
        self.conns.borrow_mut().open.retain(|key, list| {
            list.retain(|c| {
                !c.closed.get()
                    && (c.active.get() > 0 || now.saturating_sub(c.last_used.get()) <= idle_ticks)
            });
            keep(&key.addr) && !list.is_empty()
        });
    }

    /// A connection to `key` with room for a stream, or the attempt that will bring one
    /// (started here unless one is under way; never shared when `fresh_only`).
    fn get(&self, key: Key, fresh_only: bool) -> Result<Rc<H2Conn>, Connecting> {
        let mut conns = self.conns.borrow_mut();
        if !fresh_only {
            if let Some(list) = conns.open.get_mut(&key) {
                list.retain(|c| !c.closed.get());
                if let Some(c) = list.iter().find(|c| c.has_room()) {
                    return Ok(Rc::clone(c));
                }
            }
            if let Some(attempt) = conns.connecting.get(&key) {
                return Err(attempt.clone());
            }
        }
        let (spare, limits, shared) = (Rc::clone(&self.spare), self.limits, Rc::clone(&self.conns));
        let attempt = async move {
            let opened = connect(spare, limits, key).await.map_err(|e| e.to_string());
            let mut conns = shared.borrow_mut();
            if !fresh_only {
                conns.connecting.remove(&key);
            }
            if let Ok(c) = &opened {
                conns.open.entry(key).or_default().push(Rc::clone(c));
            }
            opened
        }
        .boxed_local()
        .shared();
        if !fresh_only {
            conns.connecting.insert(key, attempt.clone());
        }
        Err(attempt)
    }

    /// Forgets an attempt under way that took too long, so the next request starts afresh.
    fn give_up(&self, key: Key) {
        self.conns.borrow_mut().connecting.remove(&key);
    }
}

/// A stream for one attempt: on a connection with room (unless `fresh_only`), else on a new
/// one connected within `limit` (or the one another request is opening). Returns the transport
/// and whether the connection was there already.
pub(crate) async fn open(
    pool: &RefCell<H2Pool>,
    (wheel, deadline): (&Wheel, &Rc<Deadline>),
    limit: Duration,
    key: Key,
    fresh_only: bool,
) -> Result<(Transport, bool), ProxyError> {
    let found = pool.borrow().get(key, fresh_only);
    let reused = found.is_ok();
    let conn = match found {
        Ok(c) => c,
        Err(attempt) => {
            let side = (Side::Upstream, Phase::Connect);
            let opened = async { attempt.await.map_err(io::Error::other) };
            match timed(wheel, deadline, limit, side, opened).await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(addr = %key.addr, "{e}");
                    pool.borrow().give_up(key);
                    return Err(e);
                }
            }
        }
    };
    conn.active.set(conn.active.get() + 1);
    conn.last_used.set(wheel.now());
    let stream = UpStream {
        conn,
        request: RefCell::new(RequestState::Head(Vec::new())),
        response: RefCell::new(ResponseState::Waiting(None)),
        head_request: Cell::new(false),
    };
    Ok((Transport::Stream(Rc::new(stream)), reused))
}

/// Connects and runs the HTTP/2 handshake; the codec's task starts here.
async fn connect(spare: Rc<Spare>, limits: H2Limits, key: Key) -> io::Result<Rc<H2Conn>> {
    let tcp = crate::io::connect(key.addr).await?;
    let transport = Rc::new(Transport::Plain(tcp));
    let io = H2Io::new(transport, spare, InBuf::Empty);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_header_list_size(limits.max_header_list)
        .max_frame_size(limits.max_frame)
        .max_send_buffer_size(limits.max_send_buffer)
        // lb never accepts pushes.
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_io)?;
    let closed = Rc::new(Cell::new(false));
    let ended = Rc::clone(&closed);
    let addr = key.addr;
    compio::runtime::spawn(async move {
        if let Err(e) = connection.await {
            debug!(%addr, "upstream HTTP/2 connection ended: {e}");
        }
        ended.set(true);
    })
    .detach();
    Ok(Rc::new(H2Conn { send, active: Cell::new(0), closed, last_used: Cell::new(0) }))
}

/// Where the request the exchange writes stands.
enum RequestState {
    /// Collecting the HTTP/1 head.
    Head(Vec<u8>),
    /// Sending the body: its framing decoded, DATA sent.
    Body(BodyDecoder, SendStream<Bytes>),
    /// Sent whole.
    Done,
}

/// Where the response stands.
enum ResponseState {
    /// Waiting for the response HEADERS (`None` until the request HEADERS went out).
    Waiting(Option<ResponseFuture>),
    /// Relaying DATA; `true`: chunk-encoded (no content-length came).
    Body(RecvStream, bool),
    /// Handed over whole.
    Done,
}

/// One HTTP/2 stream to an upstream, as the exchange's upstream transport.
pub(crate) struct UpStream {
    conn: Rc<H2Conn>,
    request: RefCell<RequestState>,
    response: RefCell<ResponseState>,
    /// The request is a HEAD (its answer's END_STREAM on HEADERS says nothing of the length).
    head_request: Cell<bool>,
}

impl std::fmt::Debug for UpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpStream").finish_non_exhaustive()
    }
}

impl Drop for UpStream {
    fn drop(&mut self) {
        // An unfinished stream is reset (CANCEL) by the codec when its last handle goes.
        self.conn.active.set(self.conn.active.get() - 1);
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::ConnectionReset.into());
    }
    // REFUSED_STREAM (RFC 9113 §8.7: not processed, safe to retry) and GOAWAY read as a reset
    // connection, which the retry budget treats as "nothing came back".
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl StreamSide for UpStream {
    fn read<'a>(
        &'a self,
        input: &'a mut InBuf,
        spare: &'a Spare,
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + 'a>> {
        Box::pin(self.receive(input, spare))
    }

    fn send<'a>(&'a self, bytes: &'a [u8]) -> Pin<Box<dyn Future<Output = io::Result<()>> + 'a>> {
        Box::pin(self.take(bytes))
    }

    fn server_name(&self) -> Option<&[u8]> {
        None
    }

    fn client_cert(&self) -> Option<&Rc<crate::http1::request::ClientCert>> {
        None
    }
}

impl UpStream {
    /// Takes HTTP/1 request bytes the exchange wrote: the head becomes HEADERS, the body DATA.
    #[allow(clippy::await_holding_refcell_ref, reason = "one writer per stream")]
    async fn take(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.request.borrow_mut();
        let rest: Vec<u8>;
        let body: &[u8] = match &mut *state {
            RequestState::Done => return Ok(()),
            RequestState::Body(..) => bytes,
            RequestState::Head(buf) => {
                buf.extend_from_slice(bytes);
                let Some((request, framing, len)) = h2_request(buf)? else { return Ok(()) };
                let ended = matches!(framing, Framing::None | Framing::Length(0));
                self.head_request.set(request.method() == http::Method::HEAD);
                let mut sender = self.conn.send.clone();
                // Waits only while another stream of this connection is being opened.
                sender = sender.ready().await.map_err(h2_io)?;
                let (response, send) = sender.send_request(request, ended).map_err(h2_io)?;
                *self.response.borrow_mut() = ResponseState::Waiting(Some(response));
                rest = buf.split_off(len);
                *state = match framing {
                    Framing::None | Framing::Length(0) => RequestState::Done,
                    Framing::Length(n) => {
                        RequestState::Body(BodyDecoder::length(n, Encode::Raw), send)
                    }
                    Framing::Chunked => {
                        RequestState::Body(BodyDecoder::chunked(Encode::Raw, u64::MAX, 4096), send)
                    }
                };
                &rest
            }
        };
        let RequestState::Body(decoder, send) = &mut *state else { return Ok(()) };
        if body.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(body.len());
        decoder
            .decode(body, &mut data)
            .map_err(|e| io::Error::other(format!("request body: {e:?}")))?;
        let end = decoder.is_done();
        let trailers = end.then(|| trailer_map(decoder)).flatten();
        send_all(send, Bytes::from(data), end && trailers.is_none()).await?;
        if let Some(trailers) = trailers {
            send.send_trailers(trailers).map_err(h2_io)?;
        }
        if end {
            *state = RequestState::Done;
        }
        Ok(())
    }

    /// Hands the exchange the next HTTP/1 response bytes: the head once HEADERS arrive, then
    /// the body; 0 once it is all handed over.
    #[allow(clippy::await_holding_refcell_ref, reason = "one reader per stream")]
    async fn receive(&self, input: &mut InBuf, spare: &Spare) -> io::Result<usize> {
        let mut state = self.response.borrow_mut();
        match &mut *state {
            ResponseState::Done => Ok(0),
            // The request head has not gone out: nothing can come back (the exchange always
            // sends before it reads).
            ResponseState::Waiting(None) => Err(io::ErrorKind::NotConnected.into()),
            ResponseState::Waiting(Some(future)) => {
                let response = future.await.map_err(h2_io)?;
                let (parts, body) = response.into_parts();
                let ended = body.is_end_stream();
                let chunked = !ended && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
                let mut head = Vec::with_capacity(256);
                let empty = ended && !self.head_request.get();
                http1_response_head(&parts, empty, chunked, &mut head);
                input.append(&head, spare);
                *state =
                    if ended { ResponseState::Done } else { ResponseState::Body(body, chunked) };
                Ok(head.len())
            }
            ResponseState::Body(recv, chunked) => {
                let chunked = *chunked;
                match crate::h2io::next_data(recv, chunked, input, spare).await {
                    // END_STREAM on the DATA: the last chunk with it (one final frame on to
                    // an h2 client, as in `http2::stream`).
                    Ok(Some(n)) if chunked && recv.is_end_stream() => {
                        *state = ResponseState::Done;
                        Ok(n + crate::h2io::last_chunk(None, input, spare))
                    }
                    Ok(Some(n)) => Ok(n),
                    Err(e) => Err(h2_io(e)),
                    Ok(None) if chunked => {
                        let trailers = recv.trailers().await.map_err(h2_io)?;
                        *state = ResponseState::Done;
                        Ok(crate::h2io::last_chunk(trailers.as_ref(), input, spare))
                    }
                    Ok(None) => {
                        *state = ResponseState::Done;
                        Ok(0)
                    }
                }
            }
        }
    }
}

/// The trailers a chunked request body ended with, as HTTP/2 trailers.
fn trailer_map(decoder: &BodyDecoder) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in decoder.trailers() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// Fields that have no place in HTTP/2 (RFC 9113 §8.2.2); `te` is written by us.
fn connection_specific(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"host",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The HTTP/2 request for the HTTP/1 head lb wrote at the start of `buf`: `None` while it is
/// incomplete; else the request, its body framing and the head's length.
fn h2_request(buf: &[u8]) -> io::Result<Option<(Request<()>, Framing, usize)>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    // lb's own head: routes may have added fields with `_`, and its size was checked on the
    // way in.
    let limits =
        Limits { max_head: usize::MAX, underscores: Underscores::Allow, ..Limits::default() };
    let head = match parse::parse(buf, &mut fields, &limits) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("request head: {}", e.reason()))),
    };
    let fields = &fields[..head.header_count];
    let host = head.host.map_or(&b""[..], |i| fields[i].value);
    let authority = std::str::from_utf8(host).map_err(io::Error::other)?;
    let target = std::str::from_utf8(&buf[head.origin_form.clone()]).map_err(io::Error::other)?;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(target)
        .build()
        .map_err(io::Error::other)?;
    let mut request = Request::builder()
        .method(&buf[head.method.clone()])
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(io::Error::other)?;
    let headers = request.headers_mut();
    for f in fields.iter().filter(|f| !connection_specific(f.name.as_bytes())) {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(io::Error::other)?;
        let value = HeaderValue::from_bytes(f.value).map_err(io::Error::other)?;
        headers.append(name, value);
    }
    // lb passes trailers on (gRPC servers insist on being told).
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    Ok(Some((request, head.framing, head.len)))
}

/// The HTTP/1.1 head for an HTTP/2 response: `empty` when HEADERS carried END_STREAM for a
/// request other than HEAD (then `content-length: 0` unless the response says otherwise),
/// `chunked` when the body is passed on chunk-encoded.
fn http1_response_head(
    parts: &http::response::Parts,
    empty: bool,
    chunked: bool,
    out: &mut Vec<u8>,
) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The codec refused connection-specific fields already (RFC 9113 §8.2.2).
        crate::http1::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if empty && !has_length && !matches!(status.as_u16(), 204 | 304) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn an_http1_head_becomes_an_http2_request() {
        let head = b"POST /svc.Echo/Call?x=1 HTTP/1.1\r\nHost: grpc.example:8080\r\n\
            Content-Type: application/grpc\r\nConnection: keep-alive\r\nTE: gzip\r\n\
            X-Forwarded-For: 192.0.2.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        let (req, framing, len) = h2_request(head).unwrap().unwrap();
        assert_eq!(framing, Framing::Chunked);
        assert_eq!(&head[len..len + 3], b"5\r\n");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().to_string(), "http://grpc.example:8080/svc.Echo/Call?x=1");
        let h = req.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["te"], "trailers");
        for gone in ["host", "connection", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        // Incomplete: wait for more.
        assert!(h2_request(&head[..20]).unwrap().is_none());
    }

    #[test]
    fn an_http2_response_becomes_an_http1_head() {
        let parts = |status: u16, fields: &[(&str, &str)]| {
            let mut b = http::Response::builder().status(status);
            for (n, v) in fields {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let text = |p, ended, chunked| {
            let mut out = Vec::new();
            http1_response_head(&p, ended, chunked, &mut out);
            String::from_utf8(out).unwrap()
        };
        // A trailers-only gRPC answer: HEADERS with END_STREAM.
        let trailers_only =
            parts(200, &[("grpc-status", "12"), ("content-type", "application/grpc")]);
        assert_eq!(
            text(trailers_only, true, false),
            "HTTP/1.1 200 OK\r\ngrpc-status: 12\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            text(parts(200, &[]), false, true),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(text(parts(204, &[]), true, false), "HTTP/1.1 204 No Content\r\n\r\n");
        // A HEAD answer: nothing said of the length.
        assert_eq!(text(parts(200, &[]), false, false), "HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            text(parts(200, &[("content-length", "3")]), false, false),
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"
        );
    }
}
