//! Carrying out an exchange over HTTP/1: lb's own answers, and forwarding — one attempt at a
//! time on a connection from `upstream::connect`, every resend decided by the request's
//! `upstream::retry` budget — then relaying the response with regenerated framing, tunnelling
//! after a 101, and deciding what survives (the client connection, the upstream connection).
//!
//! Failures become statuses in `error` only; this module decides when an answer is still
//! possible (nothing sent to the client yet) and when a connection can be kept.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use table::ActionId;
use table::ServiceId;
use table::format::{ArchivedAction, ArchivedRetry};
use tracing::debug;

use futures_util::future::{Either, select};

use crate::access_log::flags;
use crate::clock;
use crate::core::Core;
use crate::error::{Cause, Phase, ProxyError, Refusal, Side, timed};
use crate::fields::FieldList;
use crate::http1::body::{BodyDecoder, Encode};
use crate::http1::local;
use crate::http1::parse::Framing;
use crate::io::InBuf;
use crate::metrics::Record;
use crate::timer::Deadline;
use crate::transport::Transport;
use crate::upstream::CoreTable;
use crate::upstream::connect;
use crate::upstream::pool::{Key, Protocol};
use crate::upstream::retry::{Budget, Failure, Next};

mod relay;

use relay::Response;

/// What the exchange needs to remember of the request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
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
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// Wheel time the head was complete, for rules with a `request` timeout (which runs from
    /// here); 0 otherwise.
    pub arrived: u64,
    /// A gRPC request (`content-type: application/grpc…`): lb's own answers are gRPC statuses.
    pub grpc: bool,
    /// The gRPC client's deadline (`grpc-timeout`), ms; 0: none. It bounds the exchange like
    /// a rule's `request` timeout, whichever is shorter.
    pub grpc_timeout_ms: u64,
}

impl Summary {
    /// lb's own answer with `status`, as a gRPC status for gRPC requests.
    fn local(&self, out: &mut Vec<u8>, status: u16, close: bool) {
        if self.grpc {
            local::grpc_response(out, status, close);
        } else {
            local::local_response(out, status, close, false);
        }
    }
}

/// Whether the client connection goes on after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read the next request.
    Continue,
    /// Close the client connection.
    Close,
}

/// Everything one exchange works with.
#[derive(Debug)]
pub(crate) struct Exchange<'a> {
    /// This core.
    pub core: &'a Core,
    /// The client connection.
    pub client: &'a Transport,
    /// Client bytes not yet consumed.
    pub input: &'a mut InBuf,
    /// Output buffer (holds the upstream head on entry to [`Exchange::forward`]).
    pub out: &'a mut Vec<u8>,
    /// The connection's deadline.
    pub deadline: &'a Rc<Deadline>,
    /// What metrics and logs learn of this exchange.
    pub rec: &'a Record,
}

/// An upstream connection in use.
struct Upstream {
    conn: Transport,
    key: Key,
    input: InBuf,
}

/// An upstream connection as the response steps use it: borrowed, because during a duplex
/// exchange the request body pump writes to the same connection.
struct UpstreamRef<'u> {
    conn: &'u Transport,
    input: &'u mut InBuf,
    key: Key,
}

/// What relaying a response decided.
#[derive(Clone, Copy)]
struct Relayed {
    /// The client connection's fate.
    flow: Flow,
    /// The upstream connection can take another request.
    reusable: bool,
}

/// How far a streamed exchange got, shared by its two directions ([`Exchange::duplex`]).
#[derive(Default)]
struct Progress {
    /// The whole request body has gone upstream.
    request_done: Cell<bool>,
    /// Response bytes have gone to the client: no local answer is possible any more.
    answered: Cell<bool>,
}

impl Progress {
    fn of(body: &BodyDecoder) -> Progress {
        Progress { request_done: Cell::new(body.is_done()), answered: Cell::new(false) }
    }
}

/// The route's rule, as the forwarding steps need it.
#[derive(Clone, Copy)]
struct Rule<'t> {
    action: &'t ArchivedAction,
    cors: &'t FieldList,
}

impl Rule<'_> {
    fn retry(&self) -> Option<&ArchivedRetry> {
        Some(&self.action.retry).filter(|r| r.attempts.to_native() > 0)
    }

    /// The whole-request timeout: the rule's `request`, cut to the gRPC client's deadline.
    fn request_timeout(&self, req: Summary) -> Option<Duration> {
        let rule = ms(self.action.timeouts.request_ms.to_native());
        let client = (req.grpc_timeout_ms > 0).then(|| Duration::from_millis(req.grpc_timeout_ms));
        match (rule, client) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn attempt_timeout(&self) -> Option<Duration> {
        ms(self.action.timeouts.backend_request_ms.to_native())
    }
}

fn ms(v: u32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(u64::from(v)))
}

impl Exchange<'_> {
    /// Answers a request head that failed (refused by the parser, or timed out) and closes.
    pub(crate) async fn fail_head(&mut self, e: ProxyError) -> Flow {
        self.rec.flag(response_flag(&e));
        self.out.clear();
        local::local_response(self.out, e.status(), true, false);
        let _ = self.write_client().await;
        Flow::Close
    }

    /// Answers locally with the refusal's status. The connection continues when the request
    /// had no body and the client keeps alive.
    pub(crate) async fn refuse(&mut self, refusal: Refusal, req: Summary) -> Flow {
        let status = refusal.status();
        let head_method = req.head_method && refusal != Refusal::CorsOrigin;
        if req.grpc {
            return self.answer(req, |out, close| local::grpc_response(out, status, close)).await;
        }
        self.answer(req, |out, close| local::local_response(out, status, close, head_method)).await
    }

    /// Answers an allowed CORS preflight; continues like [`Exchange::refuse`].
    pub(crate) async fn preflight(&mut self, fields: &FieldList, req: Summary) -> Flow {
        self.answer(req, |out, close| local::preflight_response(out, fields, close)).await
    }

    /// Answers with a redirect; continues like [`Exchange::refuse`].
    pub(crate) async fn redirect(&mut self, status: u16, location: &str, req: Summary) -> Flow {
        self.answer(req, |out, close| local::redirect_response(out, status, location, close)).await
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
    pub(crate) async fn forward(
        &mut self,
        table: &CoreTable,
        id: ActionId,
        (service, cursor): (ServiceId, u32),
        cors: &FieldList,
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
        let Some(action) = table.router.action(id) else {
            // Cannot happen: `id` came from a lookup in this very table.
            let e = ProxyError::new(Side::Upstream, Phase::Connect, Cause::Unreachable);
            return self.fail(e, false, req).await;
        };
        let rule = Rule { action, cors };
        // Whatever body bytes already arrived go out with the head.
        match body.decode(self.input.bytes(), self.out) {
            Ok(used) => {
                self.rec.bytes_in.set(self.rec.bytes_in.get() + used as u64);
                self.input.consume(used, &self.core.spare);
            }
            Err(e) => {
                let e = ProxyError::body(Side::Downstream, Phase::RequestBody, e);
                return self.fail(e, false, req).await;
            }
        }
        if req.expect_continue && !body.is_done() && self.input.bytes().is_empty() && !req.http10 {
            // The client waits for permission before sending its body; we own that decision
            // (Expect is not forwarded).
            if self.client.write_static(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return Flow::Close;
            }
        }
        match self.send_request(table, rule, (service, cursor), req, &mut body).await {
            Ok((mut up, Some(response))) => {
                let progress = Progress::of(&body);
                let mut r = UpstreamRef { conn: &up.conn, input: &mut up.input, key: up.key };
                let relayed = self.relay_response(&mut r, response, req, &progress).await;
                self.finish(up, relayed)
            }
            // Boxed: both directions' futures at once would double the size of every
            // exchange's future (3.3 → 5 KiB) for the few requests that stream a body.
            Ok((up, None)) => Box::pin(self.duplex(up, rule, req, &mut body)).await,
            Err(e) => self.fail(e, body.is_done(), req).await,
        }
    }

    /// Full duplex, for a request whose body is still coming when its head has gone out: the
    /// rest of the body is pumped upstream while the response is read and relayed, so neither
    /// direction waits for the other (a gRPC bidirectional call; a server that answers before
    /// an upload ends). The pump gets an output buffer and a deadline of its own — the only
    /// allocations of this path, taken per streamed request, never for a whole one.
    async fn duplex(
        &mut self,
        mut up: Upstream,
        rule: Rule<'_>,
        req: Summary,
        body: &mut BodyDecoder,
    ) -> Flow {
        let progress = Progress::default();
        let pump_deadline = Rc::new(Deadline::default());
        let mut pump_out = Vec::new();
        let (conn, up_input) = (&up.conn, &mut up.input);
        let mut unused = InBuf::Empty;
        let outcome = {
            let mut pump_side = Exchange {
                core: self.core,
                client: self.client,
                input: &mut *self.input,
                out: &mut pump_out,
                deadline: &pump_deadline,
                rec: self.rec,
            };
            // The response side never reads the client (no upgrade here): an empty input.
            let mut response_side = Exchange {
                core: self.core,
                client: self.client,
                input: &mut unused,
                out: &mut *self.out,
                deadline: self.deadline,
                rec: self.rec,
            };
            let pump = pin!(pump_side.send_body(conn, body, &progress));
            let respond = pin!(response_side.respond(conn, up_input, up.key, rule, req, &progress));
            match select(respond, pump).await {
                Either::Left((relayed, _)) => Ok(relayed),
                Either::Right((Ok(()), respond)) => Ok(respond.await),
                // The upstream stopped taking the body: what it answers (or its failure) is
                // still the response.
                Either::Right((Err(e), respond)) if e.side == Side::Upstream => {
                    debug!("request body: {e}");
                    Ok(respond.await)
                }
                Either::Right((Err(e), _)) => Err(e),
            }
        };
        self.core.wheel.disarm(&pump_deadline);
        match outcome {
            Ok(relayed) => self.finish(up, relayed),
            Err(e) => {
                up.input.release(&self.core.spare);
                if progress.answered.get() {
                    return Flow::Close;
                }
                self.fail(e, false, req).await
            }
        }
    }

    /// The response side of [`Exchange::duplex`]: the head (within the rule's timeouts), then
    /// the relay.
    async fn respond(
        &mut self,
        conn: &Transport,
        input: &mut InBuf,
        key: Key,
        rule: Rule<'_>,
        req: Summary,
        progress: &Progress,
    ) -> Relayed {
        let mut up = UpstreamRef { conn, input, key };
        match self.response_head(rule, &mut up, req, None).await {
            Ok(response) => self.relay_response(&mut up, response, req, progress).await,
            Err(e) => Relayed {
                flow: self.fail(e, progress.request_done.get(), req).await,
                reusable: false,
            },
        }
    }

    /// After a relay: the upstream connection back to the pool when it can be reused.
    fn finish(&mut self, mut up: Upstream, relayed: Relayed) -> Flow {
        up.input.release(&self.core.spare);
        // An HTTP/2 stream is done here; its connection stays in `upstream::h2`'s pool.
        if relayed.reusable && up.key.protocol == Protocol::Http1 {
            self.core.pool.borrow_mut().put(up.key, up.conn, self.core.wheel.now());
        }
        relayed.flow
    }

    /// The outer loop: one attempt per round trip, each failure put to the request's retry
    /// budget (`upstream::retry`), which owns every resend. On success the response head has
    /// been turned into the client's (in `out`) and consumed from the upstream's input.
    async fn send_request(
        &mut self,
        table: &CoreTable,
        rule: Rule<'_>,
        (service, mut cursor): (ServiceId, u32),
        req: Summary,
        body: &mut BodyDecoder,
    ) -> Result<(Upstream, Option<Response>), ProxyError> {
        let whole = body.is_done();
        let mut budget = Budget::new(rule.retry(), whole, req.idempotent);
        let (mut attempt, mut fresh_only, mut retried) = (0, false, false);
        loop {
            let failure = match table.endpoint(service, cursor, attempt) {
                None => Failure::Exhausted,
                Some(addr) => {
                    let to = (addr, table.protocol(service));
                    match self.attempt(rule, to, fresh_only, req, &budget, body).await {
                        Ok(done) => return Ok(done),
                        Err(failure) => failure,
                    }
                }
            };
            let time_over = || self.request_time_over(rule, req);
            match budget.after(failure, time_over) {
                Next::OtherEndpoint => attempt += 1,
                Next::Fresh => fresh_only = true,
                Next::Retry => {
                    debug!("retrying (route policy)");
                    retried = true;
                    self.core.metrics.upstream(self.rec.backend.get(), |u| u.retries.inc());
                    (cursor, attempt, fresh_only) = (cursor.wrapping_add(1), 0, true);
                    self.backoff(rule).await;
                }
                Next::Fail(e) => {
                    if retried {
                        self.rec.flag(flags::URX);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One attempt on one connection to `addr`: send the request (kept in `out` while it may
    /// be needed again), then read the response head. A request whose body is still coming
    /// (and is no upgrade) returns once its head is out, without a response: the body and the
    /// response then go both ways at once ([`Exchange::duplex`]).
    async fn attempt(
        &mut self,
        rule: Rule<'_>,
        (addr, protocol): (SocketAddr, Protocol),
        fresh_only: bool,
        req: Summary,
        budget: &Budget,
        body: &mut BodyDecoder,
    ) -> Result<(Upstream, Option<Response>), Failure> {
        let key = Key { addr, protocol };
        let core = self.core;
        self.rec.upstream.set(Some(addr));
        let timed_attempt = core.log.as_ref().filter(|l| l.writing()).map(|_| clock::now());
        let clock = (&*core.wheel, self.deadline);
        let limit = core.settings.timeouts.connect;
        let pools = (&core.pool, &core.h2_pool);
        let (metrics, backend) = (&core.metrics, self.rec.backend.get());
        let conn = match connect::open(pools, clock, limit, key, fresh_only).await {
            Ok(c) => c,
            Err(_) => {
                metrics.upstream(backend, |u| {
                    u.attempts.inc();
                    u.connect_failures.inc();
                });
                return Err(Failure::Connect);
            }
        };
        let reused = conn.reused;
        metrics.upstream(backend, |u| {
            u.attempts.inc();
            if reused { u.pool_hits.inc() } else { u.pool_misses.inc() }
        });
        let mut up = Upstream { conn: conn.transport, key, input: InBuf::Empty };
        let limit = self.core.settings.timeouts.body;
        let send = (Side::Upstream, Phase::Send);
        let sent = if body.is_done() {
            // Keep the request bytes until the response starts, in case we must resend them.
            timed(&self.core.wheel, self.deadline, limit, send, up.conn.write_keep(self.out)).await
        } else if req.upgrade {
            self.send_body(&up.conn, body, &Progress::default()).await
        } else {
            let head = timed(&self.core.wheel, self.deadline, limit, send, up.conn.write(self.out));
            match head.await {
                Ok(()) => return Ok((up, None)),
                Err(e) => Err(e),
            }
        };
        let result = match sent {
            Ok(()) => {
                let retry = rule.retry().filter(|_| budget.can_retry());
                let mut r = UpstreamRef { conn: &up.conn, input: &mut up.input, key };
                self.response_head(rule, &mut r, req, retry).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(response) => {
                if let Some(t) = timed_attempt {
                    self.rec.upstream_us.set(clock::since(t).as_micros() as u64);
                }
                Ok((up, Some(response)))
            }
            Err(error) => {
                debug!(%addr, reused, "attempt failed: {error}");
                self.count_upstream_failure(&error);
                up.input.release(&self.core.spare);
                Err(Failure::Attempt { error, reused })
            }
        }
    }

    /// Whether the rule's whole-request timeout has run out since the request arrived.
    fn request_time_over(&self, rule: Rule<'_>, req: Summary) -> bool {
        rule.request_timeout(req).is_some_and(|t| self.core.wheel.elapsed_since(req.arrived) >= t)
    }

    /// Waits the retry policy's backoff.
    async fn backoff(&self, rule: Rule<'_>) {
        let Some(wait) = rule.retry().and_then(|p| ms(p.backoff_ms.to_native())) else { return };
        let d = Rc::new(Deadline::default());
        let _ = self.core.wheel.timeout(&d, wait, std::future::pending::<()>()).await;
    }

    /// Streams the request body: what is in `out` first, then the rest from the client.
    async fn send_body(
        &mut self,
        upstream: &Transport,
        body: &mut BodyDecoder,
        progress: &Progress,
    ) -> Result<(), ProxyError> {
        let t = self.core.settings.timeouts;
        let (wheel, spare) = (&self.core.wheel, &self.core.spare);
        loop {
            if !self.out.is_empty() || body.is_done() {
                let send = (Side::Upstream, Phase::Send);
                timed(wheel, self.deadline, t.body, send, upstream.write(self.out)).await?;
            }
            if body.is_done() {
                progress.request_done.set(true);
                return Ok(());
            }
            let read = self.client.read(self.input, spare);
            let client = (Side::Downstream, Phase::RequestBody);
            if timed(wheel, self.deadline, t.body, client, read).await? == 0 {
                return Err(ProxyError::new(Side::Downstream, Phase::RequestBody, Cause::Closed));
            }
            let used = body
                .decode(self.input.bytes(), self.out)
                .map_err(|e| ProxyError::body(Side::Downstream, Phase::RequestBody, e))?;
            self.rec.bytes_in.set(self.rec.bytes_in.get() + used as u64);
            self.input.consume(used, spare);
        }
    }

    /// Answers an error before any response byte went out, if possible.
    async fn fail(&mut self, e: ProxyError, request_done: bool, req: Summary) -> Flow {
        debug!("exchange failed: {e}");
        self.rec.flag(response_flag(&e));
        self.out.clear();
        if e.side == Side::Downstream && e.cause == Cause::Closed {
            return Flow::Close;
        }
        // Keep the client only if its request was read whole.
        let close = e.closes_client() || !request_done;
        req.local(self.out, e.status(), close);
        if self.write_client().await.is_err() || close {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Counts an upstream timeout or reset in the metrics.
    fn count_upstream_failure(&self, e: &ProxyError) {
        if e.side != Side::Upstream {
            return;
        }
        let backend = self.rec.backend.get();
        match e.cause {
            Cause::Timeout => self.core.metrics.upstream(backend, |u| u.timeouts.inc()),
            Cause::Closed | Cause::Io(_) => self.core.metrics.upstream(backend, |u| u.resets.inc()),
            _ => {}
        }
    }

    /// Writes `out` to the client. The exchange's status is the first head written (lb's own
    /// answers and relayed heads alike go out here; interim 100 Continue does not).
    async fn write_client(&mut self) -> Result<(), ProxyError> {
        let rec = self.rec;
        if rec.status.get() == 0 {
            rec.status.set(head_status(self.out));
        }
        rec.bytes_out.set(rec.bytes_out.get() + self.out.len() as u64);
        let limit = self.core.settings.timeouts.body;
        let side = (Side::Downstream, Phase::ResponseBody);
        timed(&self.core.wheel, self.deadline, limit, side, self.client.write(self.out)).await
    }
}

/// The status of an HTTP/1 response head at the start of `out` (0 when it is not one).
fn head_status(out: &[u8]) -> u16 {
    match out.get(..12) {
        Some([b'H', b'T', b'T', b'P', b'/', _, b'.', _, b' ', d @ ..]) => d
            .iter()
            .try_fold(0u16, |n, &c| c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0')))
            .unwrap_or(0),
        _ => 0,
    }
}

/// The access log's response flag for a failure.
pub(crate) fn response_flag(e: &ProxyError) -> u16 {
    match (e.side, e.cause) {
        (Side::Upstream, Cause::Timeout) => flags::UT,
        (Side::Upstream, Cause::Unreachable) => flags::UF,
        (Side::Upstream, Cause::Closed | Cause::Io(_)) if e.phase == Phase::Connect => flags::UF,
        (Side::Upstream, Cause::Closed | Cause::Io(_)) => flags::UC,
        (Side::Upstream, Cause::Framing(_) | Cause::TooLarge) => flags::UMSDR,
        (Side::Upstream, Cause::Status(_)) => flags::URX,
        (Side::Downstream, Cause::Timeout) => flags::DT,
        (Side::Downstream, Cause::Closed | Cause::Io(_)) => flags::DC,
        (Side::Downstream, _) => flags::DPE,
        _ => flags::LR,
    }
}
