//! One request/response exchange: parse and route (synchronously, straight out of the input
//! buffer), then forward: connect or reuse, send the regenerated head and the body, relay the
//! response with regenerated framing, and decide what survives (the client connection, the
//! upstream connection).
//!
//! The synchronous part ([`prepare`]) holds the parsed fields in an on-stack array and writes
//! the upstream head into the request's output buffer before the first await, so no parsed
//! state has to live across I/O.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use compio::net::TcpStream;
use table::Route;
use table::format::{ArchivedActionKind, ArchivedPathRewrite};
use table::lookup::{MAX_HOST, Request, normalize_host};
use tracing::debug;

use crate::core::Core;
use crate::error::{Kind, ProxyError, Side};
use crate::http1::body::{BodyDecoder, Encode};
use crate::http1::message::{self, ClientIp, ResponseFraming, ResponseHead};
use crate::http1::parse::{self, Framing, Head, MAX_HEADERS, Reject, trim_ows};
use crate::io::{InBuf, write_out};
use crate::router::FieldHeaders;
use crate::timer::{Deadline, Elapsed};
use crate::upstream::{CoreTable, Target};
use crate::{mirror, redirect};

/// Output is flushed to the peer once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// What to do with a request.
#[derive(Debug)]
pub enum Plan {
    /// Malformed or over a limit: answer and close.
    Reject(Reject),
    /// Answer locally (no route, no endpoints, invalid backend).
    Respond {
        /// Status.
        status: u16,
        /// Facts about the request.
        req: Summary,
    },
    /// Answer with a redirect.
    Redirect {
        /// 3xx status.
        status: u16,
        /// `Location` value.
        location: String,
        /// Facts about the request.
        req: Summary,
    },
    /// A CORS preflight answered by lb: 200 with these header lines for an allowed origin,
    /// 403 for a refused one.
    Preflight {
        /// The policy's header lines.
        headers: Option<Vec<u8>>,
        /// Facts about the request.
        req: Summary,
    },
    /// Forward; the upstream head is already in the output buffer.
    Forward {
        /// The table the request was routed on.
        table: Rc<CoreTable>,
        /// Service index.
        service: u32,
        /// Endpoint round-robin position.
        cursor: u32,
        /// Header lines the route's CORS policy adds to the response (usually empty).
        cors: Vec<u8>,
        /// Facts about the request.
        req: Summary,
    },
}

/// What the exchange needs to remember of the request head.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Head length in the input buffer.
    pub len: usize,
    /// Body framing.
    pub framing: Framing,
    /// Client wants keep-alive.
    pub keep_alive: bool,
    /// HTTP/1.0 client.
    pub http10: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Upgrade requested.
    pub upgrade: bool,
    /// HEAD request.
    pub head_method: bool,
    /// Safe to send twice (RFC 9110 9.2.2).
    pub idempotent: bool,
    /// Index of the matched action in the table (`u32::MAX`: none), for its response edits.
    pub action: u32,
    /// Wheel time the head was complete, for rules with a `request` timeout (which runs from
    /// here); 0 otherwise.
    pub arrived: u64,
}

impl Summary {
    fn of(head: &Head, buf: &[u8]) -> Summary {
        let method = &buf[head.method.clone()];
        Summary {
            len: head.len,
            framing: head.framing,
            keep_alive: head.keep_alive,
            http10: head.http10,
            expect_continue: head.expect_continue,
            upgrade: head.upgrade,
            head_method: head.head_method,
            idempotent: matches!(
                method,
                b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
            ),
            action: u32::MAX,
            arrived: 0,
        }
    }
}

/// Whether the client connection goes on after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    Continue,
    /// Close the client connection.
    Close,
}

/// Parses and routes the request at the start of `buf`. `None`: the head is incomplete. For
/// [`Plan::Forward`], the upstream head has been written to `out`.
pub fn prepare(
    core: &Core,
    buf: &[u8],
    client: &ClientIp,
    local: SocketAddr,
    out: &mut Vec<u8>,
) -> Option<Plan> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse::parse(buf, &mut fields, &core.settings.limits) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(reject) => return Some(Plan::Reject(reject)),
    };
    let fields = &fields[..head.header_count];
    let req = Summary::of(&head, buf);
    let Some(table) = core.table() else {
        return Some(Plan::Respond { status: 503, req });
    };
    let raw_host: &[u8] = match (&head.authority, head.host) {
        (Some(a), _) => &buf[a.clone()],
        (None, Some(i)) => trim_ows(fields[i].value),
        (None, None) => b"",
    };
    let mut host_buf = [0u8; MAX_HOST];
    let host = normalize_host(raw_host, &mut host_buf).unwrap_or(b"");
    let Some(port) = table.router.port(local.ip(), local.port()) else {
        return Some(Plan::Respond { status: 404, req });
    };
    // Routing and the backend see the normalised path (`router::normalize_path`); the
    // common path is not copied.
    // An absolute-form target may have an empty path: it means "/" (RFC 9112 §3.2.1).
    let raw_path = match &buf[head.path.clone()] {
        b"" => b"/",
        p => p,
    };
    let mut normalized = Vec::new();
    let normalized_path = crate::router::normalize_path(raw_path, &mut normalized);
    let request = Request {
        method: &buf[head.method.clone()],
        path: if normalized_path { &normalized } else { raw_path },
        query: &buf[head.query.clone()],
        host,
    };
    let route = {
        let mut scratch = table.scratch.borrow_mut();
        table.router.route(port, &request, &FieldHeaders(fields), &mut scratch)
    };
    let (action, matched) = match route {
        Route::Matched { action, matched, .. } => (action, matched),
        Route::NoListener | Route::NoRoute(_) => return Some(Plan::Respond { status: 404, req }),
    };
    let mut cors = Vec::new();
    if let Some(policy) = action.cors.as_ref() {
        match crate::cors::evaluate(policy, request.method, fields) {
            crate::cors::Outcome::Preflight(headers) => {
                return Some(Plan::Preflight { headers, req });
            }
            crate::cors::Outcome::Actual(lines) => cors = lines,
            crate::cors::Outcome::NotCors => {}
        }
    }
    if let ArchivedActionKind::Redirect { status, scheme, host: to_host, port, path } = &action.kind
    {
        let local_ip = local.ip().to_string();
        let origin = redirect::Origin {
            host: std::str::from_utf8(host).ok().filter(|h| !h.is_empty()).unwrap_or(&local_ip),
            listener_port: local.port(),
            path: std::str::from_utf8(request.path).unwrap_or("/"),
            query: std::str::from_utf8(request.query).unwrap_or(""),
        };
        let target = redirect::Target {
            scheme: scheme.as_ref().map(|s| s.as_str()),
            host: to_host.as_ref().map(|h| h.as_str()),
            port: port.as_ref().map(|p| p.to_native()),
            path,
        };
        let location = redirect::location(&origin, &target, matched);
        return Some(Plan::Redirect { status: status.to_native(), location, req });
    }
    match table.select(&action.kind) {
        Target::Status(status) => Some(Plan::Respond { status, req }),
        Target::Service { service, .. } if table.endpoint_count(service) == 0 => {
            Some(Plan::Respond { status: 503, req })
        }
        Target::Service { service, cursor, backend } => {
            let backend_edits = match &action.kind {
                ArchivedActionKind::Forward { backends, .. } => {
                    backends.get(backend as usize).map(|b| &b.request_headers)
                }
                _ => None,
            };
            let edits = [Some(&action.request_headers), backend_edits];
            let rewrite = &action.rewrite;
            // The path sent upstream when it is not the client's bytes: rewritten, or
            // normalised; the query follows it.
            let path = std::str::from_utf8(request.path).unwrap_or("/");
            let target = match &rewrite.path {
                ArchivedPathRewrite::Keep if !normalized_path => None,
                ArchivedPathRewrite::Keep => Some(std::borrow::Cow::Borrowed(path)),
                rule => Some(redirect::rewrite_path(path, rule, matched)),
            }
            .map(|p| {
                let mut t = p.into_owned();
                if !request.query.is_empty() {
                    t.push('?');
                    t.push_str(std::str::from_utf8(request.query).unwrap_or(""));
                }
                t
            });
            let rewritten = message::Rewritten {
                host: rewrite.host.as_ref().map(|h| h.as_bytes()),
                target: target.as_ref().map(String::as_bytes),
            };
            message::request_head(out, buf, &head, fields, client, &edits, rewritten);
            if !action.mirrors.is_empty() && !req.upgrade {
                let copy = |out: &mut Vec<u8>| {
                    let rule_edits = [Some(&action.request_headers)];
                    message::request_head(out, buf, &head, fields, client, &rule_edits, rewritten);
                };
                mirror(core, &table, &action.mirrors, mirror::whole_body(buf, &head), copy);
            }
            // The clock is read only for rules with a request timeout.
            let arrived = if action.timeouts.request_ms == 0 { 0 } else { core.wheel.now() };
            let req = Summary { action: matched.action.to_native(), arrived, ..req };
            Some(Plan::Forward { table: Rc::clone(&table), service, cursor, cors, req })
        }
    }
}

/// Sends a copy of the request to each sampled mirror; `head` writes the copy's head (the
/// rule's header edits, not a backend's). Requests whose body is not all in hand are not
/// copied.
fn mirror(
    core: &Core,
    table: &CoreTable,
    mirrors: &[table::format::ArchivedMirror],
    body: Option<&[u8]>,
    head: impl Fn(&mut Vec<u8>),
) {
    for m in mirrors {
        if !core.mirrors.sampled(m.per_million.to_native()) {
            continue;
        }
        let Some(body) = body else {
            debug!("request not mirrored: its body has not all arrived with the head");
            return;
        };
        let service = m.service.to_native();
        let Some(addr) = table.endpoint(service, table.next_cursor(service), 0) else {
            debug!(service, "request not mirrored: the mirror service has no endpoints");
            continue;
        };
        let mut copy = Vec::with_capacity(512 + body.len());
        head(&mut copy);
        mirror::close_after(&mut copy);
        copy.extend_from_slice(body);
        core.mirrors.send(&core.wheel, core.settings.timeouts, addr, copy);
    }
}

/// Everything one exchange works with.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// This core.
    pub core: &'a Core,
    /// The client connection.
    pub client: &'a TcpStream,
    /// Client bytes not yet consumed.
    pub input: &'a mut InBuf,
    /// Output buffer (holds the upstream head on entry).
    pub out: &'a mut Vec<u8>,
    /// The connection's deadline.
    pub deadline: &'a Rc<Deadline>,
}

impl Exchange<'_> {
    /// Answers locally. The connection continues when the request had no body and the client
    /// keeps alive.
    pub async fn respond(&mut self, status: u16, req: Summary) -> Flow {
        self.answer(req, |out, close| message::local_response(out, status, close, req.head_method))
            .await
    }

    /// Answers a CORS preflight; continues like [`Exchange::respond`].
    pub async fn preflight(&mut self, headers: Option<Vec<u8>>, req: Summary) -> Flow {
        self.answer(req, |out, close| match headers {
            Some(lines) => message::preflight_response(out, &lines, close),
            None => message::local_response(out, 403, close, false),
        })
        .await
    }

    /// Answers with a redirect; continues like [`Exchange::respond`].
    pub async fn redirect(&mut self, status: u16, location: &str, req: Summary) -> Flow {
        self.answer(req, |out, close| message::redirect_response(out, status, location, close))
            .await
    }

    /// Consumes the request, writes what `head` puts in the output (told whether the
    /// connection closes after it) and decides the connection's fate.
    async fn answer(&mut self, req: Summary, head: impl FnOnce(&mut Vec<u8>, bool)) -> Flow {
        self.input.consume(req.len, &self.core.spare);
        // An unread body would be parsed as the next request: close instead.
        // Draining: say so, so the client does not send another request on this connection.
        let close = !req.keep_alive
            || self.core.draining.get()
            || !matches!(req.framing, Framing::None | Framing::Length(0));
        self.out.clear();
        head(self.out, close);
        if self.write_client().await.is_err() || close {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Forwards the request to the service and relays the response.
    pub async fn forward(
        &mut self,
        table: Rc<CoreTable>,
        service: u32,
        cursor: u32,
        cors: &[u8],
        req: Summary,
    ) -> Flow {
        self.input.consume(req.len, &self.core.spare);
        let limits = self.core.settings.limits;
        let mut body = match req.framing {
            Framing::None => BodyDecoder::none(),
            Framing::Length(n) => BodyDecoder::length(n, Encode::Raw),
            Framing::Chunked => {
                BodyDecoder::chunked(Encode::Chunked, limits.max_body, limits.max_chunk_ext)
            }
        };
        // Whatever body bytes already arrived go out with the head.
        match body.decode(self.input.bytes(), self.out) {
            Ok(used) => self.input.consume(used, &self.core.spare),
            Err(e) => return self.fail(ProxyError::body(Side::Downstream, e), &body).await,
        }
        if req.expect_continue && !body.is_done() && self.input.bytes().is_empty() && !req.http10 {
            // The client waits for permission before sending its body; we own that decision
            // (Expect is not forwarded).
            let mut w = self.client;
            let r =
                compio::io::AsyncWriteExt::write_all(&mut w, &b"HTTP/1.1 100 Continue\r\n\r\n"[..])
                    .await;
            if r.0.is_err() {
                return Flow::Close;
            }
        }
        let (upstream, addr, response) =
            match self.send_request(&table, service, cursor, cors, req, &mut body).await {
                Ok(v) => v,
                Err(e) => return self.fail(e, &body).await,
            };
        self.relay_response(upstream, addr, response, req, &body).await
    }

    /// Connects (or reuses), sends head and body, and waits for the response head; retries on
    /// another endpoint when connecting fails, and once on a fresh connection when a reused one
    /// turns out dead before answering (only when the whole request is still in hand and safe
    /// to repeat). A route's retry policy adds attempts: after a connection error, a
    /// backend-request timeout or a listed status, up to its count, again only with the whole
    /// request in hand (a body that streamed past is never replayed). On success the response
    /// head is at the start of the upstream's input.
    async fn send_request(
        &mut self,
        table: &CoreTable,
        service: u32,
        mut cursor: u32,
        cors: &[u8],
        req: Summary,
        body: &mut BodyDecoder,
    ) -> Result<(Upstream, SocketAddr, Response), ProxyError> {
        let t = self.core.settings.timeouts;
        let whole = body.is_done();
        let action = table.router.table().actions.get(req.action as usize);
        let policy = action.map(|a| &a.retry);
        let mut retries_left = match policy {
            Some(p) if whole => p.attempts.to_native(),
            _ => 0,
        };
        let has_policy = policy.is_some_and(|p| p.attempts.to_native() > 0);
        // The rule's `request` timeout counts from the request's arrival (its body upload
        // included), `backendRequest` from each attempt.
        let started = req.arrived;
        let mut attempt = 0;
        let mut fresh_only = false;
        loop {
            let Some(addr) = table.endpoint(service, cursor, attempt) else {
                if retries_left > 0 && !self.request_time_over(table, req, started) {
                    retries_left -= 1;
                    (cursor, attempt) = (cursor.wrapping_add(1), 0);
                    self.backoff(policy).await;
                    continue;
                }
                return Err(ProxyError::new(Side::Upstream, Kind::Unreachable));
            };
            let pooled = if fresh_only {
                None
            } else {
                self.core.pool.borrow_mut().take(addr, self.core.wheel.now())
            };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(s) => s,
                None => match self
                    .core
                    .wheel
                    .timeout(self.deadline, t.connect, crate::io::connect(addr))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%addr, "connect failed: {e}");
                        attempt += 1;
                        continue;
                    }
                    Err(Elapsed) => {
                        debug!(%addr, "connect timed out");
                        attempt += 1;
                        continue;
                    }
                },
            };
            let mut up = Upstream { stream, input: InBuf::Empty };
            // lb's own resend of a request a stale pooled connection swallowed; with a route
            // policy, every resend comes out of the policy's attempts instead.
            let may_retry = reused && whole && req.idempotent && !has_policy;
            // Keep the request bytes until the response starts, in case we must resend them.
            let sent = if whole {
                self.write_keep(&up.stream).await
            } else {
                self.send_body(&up.stream, body).await
            };
            if let Err(e) = sent {
                // A timed-out write took the bytes with it: no resend then.
                if e.side == Side::Upstream && may_retry && e.kind != Kind::Timeout {
                    fresh_only = true;
                    continue;
                }
                if e.side == Side::Upstream && whole && retries_left > 0 && e.kind != Kind::Timeout
                {
                    retries_left -= 1;
                    (cursor, attempt, fresh_only) = (cursor.wrapping_add(1), 0, true);
                    self.backoff(policy).await;
                    continue;
                }
                return Err(e);
            }
            let retry = policy.filter(|_| retries_left > 0);
            let head = self.response_head(table, &mut up, req, started, cors, retry).await;
            match head {
                Ok(response) => return Ok((up, addr, response)),
                Err(e) if e.retry_safe && may_retry => {
                    debug!(%addr, "reused connection failed before answering: {e}; retrying");
                    up.input.release(&self.core.spare);
                    fresh_only = true;
                }
                Err(e)
                    if retries_left > 0
                        && e.side == Side::Upstream
                        && retriable(e.kind)
                        && !self.request_time_over(table, req, started) =>
                {
                    debug!(%addr, retries_left, "{e}; retrying (route policy)");
                    up.input.release(&self.core.spare);
                    retries_left -= 1;
                    (cursor, attempt, fresh_only) = (cursor.wrapping_add(1), 0, true);
                    self.backoff(policy).await;
                }
                Err(e) if retries_left > 0 && e.side == Side::Upstream && retriable(e.kind) => {
                    // Retriable, but the route's request timeout has run out meanwhile.
                    up.input.release(&self.core.spare);
                    return Err(ProxyError::new(Side::Upstream, Kind::Timeout));
                }
                Err(e) => {
                    up.input.release(&self.core.spare);
                    return Err(e);
                }
            }
        }
    }

    /// Whether the route's whole-request timeout has run out since `started`.
    fn request_time_over(&self, table: &CoreTable, req: Summary, started: u64) -> bool {
        let Some(a) = table.router.table().actions.get(req.action as usize) else { return false };
        let ms = a.timeouts.request_ms.to_native();
        ms > 0 && self.core.wheel.elapsed_since(started) >= Duration::from_millis(u64::from(ms))
    }

    /// Waits the retry policy's backoff.
    async fn backoff(&self, policy: Option<&table::format::ArchivedRetry>) {
        let ms = policy.map_or(0, |p| p.backoff_ms.to_native());
        if ms > 0 {
            let d = Rc::new(Deadline::default());
            let wait = Duration::from_millis(u64::from(ms));
            let _ = self.core.wheel.timeout(&d, wait, std::future::pending::<()>()).await;
        }
    }

    /// Streams the request body: what is in `out` first, then the rest from the client.
    async fn send_body(
        &mut self,
        upstream: &TcpStream,
        body: &mut BodyDecoder,
    ) -> Result<(), ProxyError> {
        let t = self.core.settings.timeouts;
        loop {
            if body.is_done() || self.out.len() >= FLUSH_AT || !self.out.is_empty() {
                self.write_to(upstream).await?;
            }
            if body.is_done() {
                return Ok(());
            }
            let n = match self
                .core
                .wheel
                .timeout(self.deadline, t.body, self.input.fill(self.client, &self.core.spare))
                .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ProxyError::io(Side::Downstream, &e)),
                Err(Elapsed) => return Err(ProxyError::new(Side::Downstream, Kind::Timeout)),
            };
            if n == 0 {
                return Err(ProxyError::new(Side::Downstream, Kind::Closed));
            }
            let used = body
                .decode(self.input.bytes(), self.out)
                .map_err(|e| ProxyError::body(Side::Downstream, e))?;
            self.input.consume(used, &self.core.spare);
        }
    }

    /// Reads until a complete response head (skipping interim 1xx other than 101) is in; then
    /// replaces the request bytes in `out` with the client's response head and consumes the
    /// upstream head. Parsed once: the fields only live in this synchronous step. A status in
    /// `retry`'s codes is returned as an error instead (the caller sends the request again).
    async fn response_head(
        &mut self,
        table: &CoreTable,
        up: &mut Upstream,
        req: Summary,
        request_started: u64,
        cors: &[u8],
        retry: Option<&table::format::ArchivedRetry>,
    ) -> Result<Response, ProxyError> {
        let action = table.router.table().actions.get(req.action as usize);
        let edits = action.map(|a| &a.response_headers);
        // The rule's timeouts bound the wait for the response head: `request` from when the
        // request was first sent (across retries), `backendRequest` from this attempt; both
        // within lb's own upstream timeout.
        let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
        let request_limit = action.and_then(|a| ms(a.timeouts.request_ms.to_native()));
        let attempt_limit = action.and_then(|a| ms(a.timeouts.backend_request_ms.to_native()));
        let attempt_started = self.core.wheel.now();
        let t = self.core.settings.timeouts;
        let mut started = false;
        loop {
            if !up.input.bytes().is_empty() {
                started = true;
                let parsed = {
                    let buf = up.input.bytes();
                    let mut fields = message::response_fields();
                    match message::parse_response(buf, &mut fields, req.head_method) {
                        Ok(Some((h, _))) if (100..200).contains(&h.status) && h.status != 101 => {
                            // 100 Continue and friends: we answered Expect ourselves; drop them.
                            Ok(Err(h.len))
                        }
                        Ok(Some((head, _)))
                            if retry.is_some_and(|r| {
                                r.codes.iter().any(|c| c.to_native() == head.status)
                            }) =>
                        {
                            Err(ProxyError::new(Side::Upstream, Kind::Status(head.status)))
                        }
                        Ok(Some((head, fields))) => {
                            self.out.clear();
                            let (encode, close_client) = message::response_head(
                                self.out,
                                buf,
                                &head,
                                fields,
                                req.http10,
                                req.keep_alive && !self.core.draining.get(),
                                message::ResponseChanges { edits, cors },
                            );
                            Ok(Ok(Response { head, encode, close_client }))
                        }
                        Ok(None) if buf.len() > self.core.settings.limits.max_head => {
                            Err(ProxyError::new(
                                Side::Upstream,
                                Kind::Framing("response head too large"),
                            ))
                        }
                        Ok(None) => Ok(Err(0)),
                        Err(message::BadResponse(what)) => {
                            Err(ProxyError::new(Side::Upstream, Kind::Framing(what)))
                        }
                    }
                };
                match parsed? {
                    Ok(response) => {
                        up.input.consume(response.head.len, &self.core.spare);
                        return Ok(response);
                    }
                    Err(0) => {}
                    Err(interim) => {
                        up.input.consume(interim, &self.core.spare);
                        continue;
                    }
                }
            }
            let mut limit = t.upstream;
            for (route, since) in
                [(request_limit, request_started), (attempt_limit, attempt_started)]
            {
                let Some(route) = route else { continue };
                match route.checked_sub(self.core.wheel.elapsed_since(since)) {
                    Some(left) if !left.is_zero() => limit = limit.min(left),
                    _ => return Err(ProxyError::new(Side::Upstream, Kind::Timeout)),
                }
            }
            let read = self
                .core
                .wheel
                .timeout(self.deadline, limit, up.input.fill(&up.stream, &self.core.spare))
                .await;
            let e = match read {
                Ok(Ok(0)) => ProxyError::new(Side::Upstream, Kind::Closed),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => ProxyError::io(Side::Upstream, &e),
                Err(Elapsed) => return Err(ProxyError::new(Side::Upstream, Kind::Timeout)),
            };
            return Err(if started { e } else { e.retry_safe() });
        }
    }

    /// Sends the response head and relays the body; returns the client connection's fate.
    async fn relay_response(
        &mut self,
        mut up: Upstream,
        addr: SocketAddr,
        response: Response,
        req: Summary,
        req_body: &BodyDecoder,
    ) -> Flow {
        let t = self.core.settings.timeouts;
        let Response { head, encode, close_client } = response;
        if head.status == 101 {
            return self.switch_protocols(up, req).await;
        }
        let mut body = match head.framing {
            ResponseFraming::None => BodyDecoder::none(),
            ResponseFraming::Length(n) => BodyDecoder::length(n, encode),
            ResponseFraming::Chunked => {
                BodyDecoder::chunked(encode, u64::MAX, self.core.settings.limits.max_chunk_ext)
            }
            ResponseFraming::UntilClose => BodyDecoder::until_close(encode),
        };
        // Nothing reaches the client before the first body bytes decode: an upstream whose
        // very first chunk is malformed still gets the client a 502, not an empty reply.
        let mut head_sent = false;
        let relayed: Result<(), ProxyError> = async {
            loop {
                let used = body
                    .decode(up.input.bytes(), self.out)
                    .map_err(|e| ProxyError::body(Side::Upstream, e))?;
                up.input.consume(used, &self.core.spare);
                head_sent = true;
                if body.is_done() {
                    return self.write_client().await;
                }
                self.write_client().await?;
                let n = match self
                    .core
                    .wheel
                    .timeout(self.deadline, t.upstream, up.input.fill(&up.stream, &self.core.spare))
                    .await
                {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(ProxyError::io(Side::Upstream, &e)),
                    Err(Elapsed) => return Err(ProxyError::new(Side::Upstream, Kind::Timeout)),
                };
                if n == 0 {
                    if body.eof(self.out) {
                        return self.write_client().await;
                    }
                    return Err(ProxyError::new(Side::Upstream, Kind::Closed));
                }
            }
        }
        .await;
        if let Err(e) = relayed {
            up.input.release(&self.core.spare);
            if !head_sent {
                return self.fail(e, req_body).await;
            }
            // The response has started: all we can do is cut the client off.
            debug!(%addr, "response relay failed: {e}");
            return Flow::Close;
        }
        // Reuse only after a cleanly framed exchange with nothing left over.
        let reusable =
            !head.close && !body.until_eof() && up.input.bytes().is_empty() && req_body.is_done();
        up.input.release(&self.core.spare);
        if reusable {
            self.core.pool.borrow_mut().put(addr, up.stream, self.core.wheel.now());
        }
        // After an upgrade the upstream refused (no 101), bytes the client sent after the
        // request may be the new protocol: never parse them as requests.
        if close_client || req.upgrade || !req_body.is_done() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// After a 101: send the head, then copy bytes both ways until both sides are done.
    async fn switch_protocols(&mut self, up: Upstream, req: Summary) -> Flow {
        if !req.upgrade {
            // A 101 nobody asked for cannot be passed on.
            self.out.clear();
            message::local_response(self.out, 502, true, false);
            let _ = self.write_client().await;
            return Flow::Close;
        }
        // Bytes already read on either side belong to the new protocol.
        self.out.extend_from_slice(up.input.bytes());
        if self.write_client().await.is_err() {
            return Flow::Close;
        }
        self.out.extend_from_slice(self.input.bytes());
        self.input.release(&self.core.spare);
        if write_out(&up.stream, self.out).await.is_err() {
            return Flow::Close;
        }
        crate::tunnel::copy_both(self.core, self.client, &up.stream).await;
        Flow::Close
    }

    /// Answers an error before any response byte went out, if possible.
    async fn fail(&mut self, e: ProxyError, body: &BodyDecoder) -> Flow {
        debug!("exchange failed: {e}");
        self.out.clear();
        // Keep the client only if its request was read whole.
        let close = e.side == Side::Downstream || !body.is_done();
        if e.side == Side::Downstream && matches!(e.kind, Kind::Closed) {
            return Flow::Close;
        }
        message::local_response(self.out, e.status(), close, false);
        if self.write_client().await.is_err() || close {
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn write_client(&mut self) -> Result<(), ProxyError> {
        let t = self.core.settings.timeouts;
        match self.core.wheel.timeout(self.deadline, t.body, write_out(self.client, self.out)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ProxyError::io(Side::Downstream, &e)),
            Err(Elapsed) => Err(ProxyError::new(Side::Downstream, Kind::Timeout)),
        }
    }

    async fn write_to(&mut self, upstream: &TcpStream) -> Result<(), ProxyError> {
        let t = self.core.settings.timeouts;
        match self.core.wheel.timeout(self.deadline, t.body, write_out(upstream, self.out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ProxyError::io(Side::Upstream, &e)),
            Err(Elapsed) => Err(ProxyError::new(Side::Upstream, Kind::Timeout)),
        }
    }

    /// Writes `out` without consuming it (the bytes may be needed for a retry).
    async fn write_keep(&mut self, upstream: &TcpStream) -> Result<(), ProxyError> {
        let t = self.core.settings.timeouts;
        let bytes = std::mem::take(self.out);
        let mut w = upstream;
        let r = self
            .core
            .wheel
            .timeout(self.deadline, t.body, compio::io::AsyncWriteExt::write_all(&mut w, bytes))
            .await;
        match r {
            Ok(compio::BufResult(res, bytes)) => {
                *self.out = bytes;
                res.map_err(|e| ProxyError::io(Side::Upstream, &e))
            }
            Err(Elapsed) => Err(ProxyError::new(Side::Upstream, Kind::Timeout)),
        }
    }
}

/// Failures a route's retry policy sends again: connection errors, backend-request timeouts
/// and the statuses it lists.
fn retriable(kind: Kind) -> bool {
    matches!(kind, Kind::Timeout | Kind::Closed | Kind::Io(_) | Kind::Status(_))
}

/// A response head already turned into the client's head (in `out`).
struct Response {
    head: ResponseHead,
    encode: Encode,
    close_client: bool,
}

/// An upstream connection in use.
struct Upstream {
    stream: TcpStream,
    input: InBuf,
}
