//! One HTTP/1 exchange on a client connection (`downstream` runs the connection's loop; an
//! HTTP/2 stream runs one too): wait for a request head (header timeout once the first byte
//! is in), turn it into the exchange's
//! protocol-neutral [`Request`] (`exchange::decide`), write what was decided — the upstream
//! head, or a local answer — and hand over to `proxy`; repeat. Pipelined requests are
//! answered in order because each exchange finishes before the next head is parsed; their
//! bytes wait in the input buffer.
//!
//! The synchronous part ([`prepare`]) holds the parsed fields in an on-stack array and writes
//! the upstream head into the request's output buffer before the first await, so no parsed
//! state has to live across I/O.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use table::lookup::{MAX_HOST, normalize_host};
use table::{ActionId, Headers, ServiceId};
use tracing::debug;

use crate::access_log::{self, CoreLog, RequestIds, TraceContext, flags};
use crate::clock;
use crate::core::Core;
use crate::error::{Cause, Phase, ProxyError, Refusal, Side};
use crate::exchange::{self, Decision, Request, Routed};
use crate::fields::FieldList;
use crate::filters::mirror;
use crate::http1::parse::{self, Head, MAX_HEADERS, trim_ows};
use crate::http1::request::{self, ClientIp, Rewritten};
use crate::io::InBuf;
use crate::metrics::Record;
use crate::proxy::{Exchange, Flow, Summary};
use crate::timer::{Deadline, Elapsed};
use crate::transport::Transport;
use crate::upstream::CoreTable;

/// How long a closing connection drains what the client still sends, so our last response is
/// not destroyed by a reset (the lingering close of nginx and Apache).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// What the head and the exchange's decision lead to.
#[derive(Debug)]
enum Plan {
    /// The head was refused, or never completed: answer the error and close.
    Fail(ProxyError),
    /// Answer with the refusal's status.
    Refuse {
        /// Why.
        refusal: Refusal,
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
    /// Answer an allowed CORS preflight with these fields.
    Preflight {
        /// The policy's fields.
        fields: FieldList,
        /// Facts about the request.
        req: Summary,
    },
    /// Forward; the upstream head is already in the output buffer.
    Forward {
        /// The table the request was routed on.
        table: Rc<CoreTable>,
        /// The matched rule.
        id: ActionId,
        /// The chosen Service.
        service: ServiceId,
        /// Endpoint round-robin position.
        cursor: u32,
        /// Fields the route's CORS policy adds to the response (usually none).
        cors: FieldList,
        /// Facts about the request.
        req: Summary,
    },
}

/// One exchange, from the first buffered byte of a request to its end.
pub(crate) async fn exchange(
    core: &Core,
    transport: &Transport,
    input: &mut InBuf,
    deadline: &Rc<Deadline>,
    client: &ClientIp,
    local: SocketAddr,
) -> Flow {
    core.wheel.arm(deadline, core.settings.timeouts.request_header);
    let rec = Record::start();
    if matches!(transport, Transport::Stream(_)) {
        rec.protocol.set(2);
    }
    let mut out = core.spare.take();
    let plan = loop {
        out.clear();
        let on = Accepted { client, local, server_name: transport.server_name() };
        if let Some(plan) = prepare(core, input.bytes(), &on, &mut out, &rec) {
            break plan;
        }
        match core.wheel.race(deadline, transport.read(input, &core.spare)).await {
            Ok(Ok(n)) if n > 0 => {}
            // End of stream inside a head: nothing to answer (the client is gone).
            Ok(_) => {
                core.spare.give(out);
                rec.bytes_in.set(input.bytes().len() as u64);
                rec.flag(flags::DC);
                finish(core, &rec, client);
                return Flow::Close;
            }
            Err(Elapsed) => {
                debug!(client = %client.as_bytes().escape_ascii(), "request head timed out");
                rec.flag(flags::DT);
                break Plan::Fail(ProxyError::new(
                    Side::Downstream,
                    Phase::RequestHead,
                    Cause::Timeout,
                ));
            }
        }
    };
    core.wheel.disarm(deadline);
    let mut ex = Exchange { core, client: transport, input, out: &mut out, deadline, rec: &rec };
    let flow = match plan {
        Plan::Fail(e) => ex.fail_head(e).await,
        Plan::Refuse { refusal, req } => ex.refuse(refusal, req).await,
        Plan::Redirect { status, location, req } => ex.redirect(status, &location, req).await,
        Plan::Preflight { fields, req } => ex.preflight(&fields, req).await,
        Plan::Forward { table, id, service, cursor, cors, req } => {
            ex.forward(&table, id, (service, cursor), &cors, req).await
        }
    };
    core.spare.give(out);
    finish(core, &rec, client);
    flow
}

/// Counts a finished exchange and hands it to the access log.
fn finish(core: &Core, rec: &Record, client: &ClientIp) {
    // One clock read for both.
    let elapsed = clock::since(rec.started);
    core.metrics.record(rec, elapsed);
    if let Some(log) = core.log.as_ref().filter(|l| l.writing()) {
        if rec.text.borrow().is_empty() {
            // The head never got as far as routing: the client is all there is to say.
            access_log::put_text(&mut rec.text.borrow_mut(), client.as_bytes());
        }
        log.append(rec, elapsed);
        core.spare.give(rec.text.take());
    }
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
struct Accepted<'a> {
    /// The client's address, formatted.
    client: &'a ClientIp,
    /// Where it was accepted.
    local: SocketAddr,
    /// On TLS: the server name the client asked for (empty: none).
    server_name: Option<&'a [u8]>,
}

/// The parsed request's fields, as routing and filters read them (in place, no map built).
#[derive(Debug)]
struct FieldHeaders<'a, 'b>(&'a [httparse::Header<'b>]);

impl Headers for FieldHeaders<'_, '_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| trim_ows(h.value))
    }
}

/// Parses the request at the start of `buf` and asks the exchange what to do with it. `None`:
/// the head is incomplete. For [`Plan::Forward`], the upstream head has been written to `out`
/// (and mirror copies sent). `rec` learns where the request went.
fn prepare(
    core: &Core,
    buf: &[u8],
    on: &Accepted<'_>,
    out: &mut Vec<u8>,
    rec: &Record,
) -> Option<Plan> {
    let Accepted { client, local, server_name } = *on;
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = match parse::parse(buf, &mut fields, &core.settings.limits) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(reject) => {
            debug!(status = reject.status(), "rejected: {}", reject.reason());
            rec.bytes_in.set(buf.len() as u64);
            rec.flag(flags::DPE);
            return Some(Plan::Fail(ProxyError::rejected(reject)));
        }
    };
    rec.bytes_in.set(head.len as u64);
    if head.http10 {
        rec.protocol.set(0);
    }
    let fields = &fields[..head.header_count];
    let mut req = Summary::of(&head, buf);
    let field = |name: &str| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name));
    req.grpc = field("content-type").is_some_and(|f| is_grpc(f.value));
    if req.grpc {
        req.grpc_timeout_ms =
            field("grpc-timeout").and_then(|f| grpc_timeout_ms(f.value)).unwrap_or(0);
    }
    let Some(table) = core.table() else {
        return Some(Plan::Refuse { refusal: Refusal::NoTable, req });
    };
    let raw_host: &[u8] = match (&head.authority, head.host) {
        (Some(a), _) => &buf[a.clone()],
        (None, Some(i)) => trim_ows(fields[i].value),
        (None, None) => b"",
    };
    let mut host_buf = [0u8; MAX_HOST];
    let host = normalize_host(raw_host, &mut host_buf).unwrap_or(b"");
    // An absolute-form target may have an empty path: it means "/" (RFC 9112 §3.2.1).
    let raw_path = match &buf[head.path.clone()] {
        b"" => b"/",
        p => p,
    };
    // Routing and the backend see the normalised path; the common path is not copied.
    let mut normalized = Vec::new();
    let changed = exchange::path::normalize_path(raw_path, &mut normalized);
    let request = Request {
        method: &buf[head.method.clone()],
        scheme: if server_name.is_some() { "https" } else { "http" },
        server_name,
        authority: host,
        path: if changed { &normalized } else { raw_path },
        normalized: changed,
        query: &buf[head.query.clone()],
        fields: &FieldHeaders(fields),
        local,
    };
    let mut routed = Routed::default();
    let mut decision = exchange::decide(&table, &request, &mut routed);
    if let Some(l) = routed.listener {
        rec.listener.set(table.labels.listener(l));
    }
    if let Some(a) = routed.action {
        rec.route.set(table.labels.route(a.0));
    }
    let service = match &decision {
        Decision::Forward(f) => Some(f.service),
        _ => None,
    };
    // Ids go upstream with a forwarded request and into the log: made for nothing else.
    let ids = core.log.as_ref().filter(|l| l.writing() || service.is_some()).map(|log| {
        let seen = Seen::of(fields);
        let ids = Ids::of(log, &seen);
        if !log.writing() {
            return ids;
        }
        let t = &table.router;
        let listener = routed.listener.and_then(|l| t.table().listeners.get(l as usize));
        let action = routed.action.and_then(|a| t.action(a));
        let service = service.and_then(|s| t.service(s));
        if let Some(a) = action {
            rec.rule.set(u16::try_from(a.rule.to_native()).unwrap_or(u16::MAX - 1));
        }
        let mut text = rec.text.borrow_mut();
        if text.capacity() == 0 {
            *text = core.spare.take();
        }
        for v in [
            client.as_bytes(),
            request.method,
            raw_host,
            &buf[head.origin_form.clone()],
            seen.user_agent,
            ids.request_id(),
            ids.traceparent(),
            listener.map_or(&b""[..], |l| l.name.as_bytes()),
            action.map_or(&b""[..], |a| a.route.as_bytes()),
            service.map_or(&b""[..], |s| s.name.as_bytes()),
        ] {
            access_log::put_text(&mut text, v);
        }
        ids
    });
    // By reference: moving the (large) decision out of its slot cost two copies a request.
    let forward = match &mut decision {
        &mut Decision::Refuse(refusal) => {
            rec.flag(match refusal {
                Refusal::NoRoute => flags::NR,
                Refusal::NoEndpoints => flags::UH,
                _ => flags::LR,
            });
            return Some(Plan::Refuse { refusal, req });
        }
        Decision::Redirect { status, location } => {
            let (status, location) = (*status, std::mem::take(location));
            return Some(Plan::Redirect { status, location, req });
        }
        Decision::Preflight(fields) => {
            return Some(Plan::Preflight { fields: std::mem::take(fields), req });
        }
        Decision::Forward(f) => f,
    };
    if let Some(i) = ids.as_ref().and_then(|i| i.replaces)
        && i < 128
    {
        // `--request-id replace`: lb's id goes upstream instead of the client's.
        head.dropped |= 1u128 << i;
    }
    let rewritten = Rewritten {
        host: forward.host.map(str::as_bytes),
        target: forward.target.as_deref().map(str::as_bytes),
    };
    request::request_head(out, buf, &head, fields, client, &forward.edits, rewritten);
    if let Some(ids) = &ids {
        ids.add_to(out);
    }
    let action = forward.action;
    if !action.mirrors.is_empty() && !head.upgrade {
        let edits = forward.mirror_edits();
        let copy = |out: &mut Vec<u8>| {
            request::request_head(out, buf, &head, fields, client, &edits, rewritten);
            request::close_after(out);
        };
        let mirrors = (&core.mirrors, &core.wheel, core.settings.timeouts, &core.h2_pool);
        mirror::copy(mirrors, &table, &action.mirrors, head.whole_body(buf), copy);
    }
    // The clock is read only when a request timeout (the rule's, the gRPC client's) runs from
    // here.
    let timed = action.timeouts.request_ms != 0 || req.grpc_timeout_ms != 0;
    let arrived = if timed { core.wheel.now() } else { 0 };
    let req = Summary { arrived, ..req };
    let (id, service, cursor) = (forward.id, forward.service, forward.cursor);
    let cors = std::mem::take(&mut forward.cors);
    rec.backend.set(table.labels.backend(service.0));
    Some(Plan::Forward { table, id, service, cursor, cors, req })
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
            arrived: 0,
            grpc: false,
            grpc_timeout_ms: 0,
        }
    }
}

/// The fields the access log and request ids read, found in one pass.
#[derive(Default)]
struct Seen<'a> {
    request_id: Option<&'a [u8]>,
    /// Where the first `X-Request-Id` field is (to drop it for `--request-id replace`).
    request_id_at: Option<usize>,
    traceparent: Option<&'a [u8]>,
    user_agent: &'a [u8],
}

impl<'a> Seen<'a> {
    fn of(fields: &[httparse::Header<'a>]) -> Seen<'a> {
        let mut seen = Seen::default();
        for (i, f) in fields.iter().enumerate() {
            // Lengths first: most fields are none of these, and fail on one compare.
            match f.name.len() {
                12 if f.name.eq_ignore_ascii_case("x-request-id")
                    && seen.request_id_at.is_none() =>
                {
                    seen.request_id = Some(trim_ows(f.value)).filter(|v| !v.is_empty());
                    seen.request_id_at = Some(i);
                }
                11 if f.name.eq_ignore_ascii_case("traceparent") && seen.traceparent.is_none() => {
                    seen.traceparent = Some(trim_ows(f.value));
                }
                10 if f.name.eq_ignore_ascii_case("user-agent") && seen.user_agent.is_empty() => {
                    seen.user_agent = trim_ows(f.value);
                }
                _ => {}
            }
        }
        seen
    }
}

/// The request id and trace context of a request, as sent upstream and logged: the client's
/// (borrowed from the head), or made here (`--request-id`, `--trace-context`).
struct Ids<'a> {
    client_request_id: Option<&'a [u8]>,
    /// A version 4 UUID lb made (sent upstream), when it made one.
    request_id: Option<[u8; 36]>,
    /// The client's `X-Request-Id` field that lb's replaces (`--request-id replace`).
    replaces: Option<usize>,
    client_traceparent: Option<&'a [u8]>,
    /// A `traceparent` lb started (sent upstream).
    traceparent: Option<[u8; 55]>,
}

impl<'a> Ids<'a> {
    fn of(log: &CoreLog, seen: &Seen<'a>) -> Ids<'a> {
        let (request_id, traceparent) = (seen.request_id, seen.traceparent);
        let config = log.config();
        let make_id = match config.request_ids {
            RequestIds::Off => false,
            RequestIds::Generate => request_id.is_none(),
            RequestIds::Replace => true,
        };
        let request_id_made = make_id.then(|| {
            // RFC 9562 §5.4: 122 random bits, the version (4) and variant (10) set.
            let mut digits = [0u8; 32];
            hex(&mut digits[..16], (log.random() & !0xf000) | 0x4000);
            hex(&mut digits[16..], (log.random() & !(0b11 << 62)) | (0b10 << 62));
            let mut id = [b'-'; 36];
            for (to, from) in
                [(0..8, 0..8), (9..13, 8..12), (14..18, 12..16), (19..23, 16..20), (24..36, 20..32)]
            {
                id[to].copy_from_slice(&digits[from]);
            }
            id
        });
        let start_trace = traceparent.is_none() && config.trace == TraceContext::Start;
        let traceparent_made = start_trace.then(|| {
            // version 00, a 16-byte trace id, an 8-byte parent id, sampled (W3C Trace Context
            // §3.2): lb records no span, so the backend's tracer decides.
            let mut t = *b"00-00000000000000000000000000000000-0000000000000000-01";
            for digits in [3..19, 19..35, 36..52] {
                hex(&mut t[digits], log.random());
            }
            t
        });
        Ids {
            client_request_id: request_id.filter(|_| config.request_ids != RequestIds::Replace),
            request_id: request_id_made,
            replaces: seen.request_id_at.filter(|_| config.request_ids == RequestIds::Replace),
            client_traceparent: traceparent,
            traceparent: traceparent_made,
        }
    }

    fn request_id(&self) -> &[u8] {
        self.request_id.as_ref().map_or(self.client_request_id.unwrap_or_default(), |id| &id[..])
    }

    fn traceparent(&self) -> &[u8] {
        self.traceparent.as_ref().map_or(self.client_traceparent.unwrap_or_default(), |t| &t[..])
    }

    /// Adds the fields lb made to the upstream head in `out` (before its blank line).
    fn add_to(&self, out: &mut Vec<u8>) {
        if (self.request_id.is_none() && self.traceparent.is_none()) || !out.ends_with(b"\r\n\r\n")
        {
            return;
        }
        out.truncate(out.len() - 2);
        if let Some(id) = &self.request_id {
            crate::http1::field(out, b"X-Request-Id", id);
        }
        if let Some(t) = &self.traceparent {
            crate::http1::field(out, b"traceparent", t);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes `word` as 16 lower-case hex digits into `out` (16 bytes). Eight digits at a time in
/// one register (a digit per byte), no table and no loop per digit: ids are made for every
/// forwarded request by default.
fn hex(out: &mut [u8], word: u64) {
    for (half, chunk) in [word >> 32, word & 0xffff_ffff].into_iter().zip(out.chunks_exact_mut(8)) {
        // Spread the eight nibbles to eight bytes, the most significant nibble highest.
        let mut x = (half | half << 16) & 0x0000_ffff_0000_ffff;
        x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
        x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
        // 1 in each byte whose nibble is 10 or more (no carry leaves a byte: 15 + 6 < 256).
        let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        let digits = x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10);
        chunk.copy_from_slice(&digits.to_be_bytes());
    }
}

/// `application/grpc`, alone or with a `+format` or parameters (gRPC over HTTP/2).
fn is_grpc(content_type: &[u8]) -> bool {
    let ct = trim_ows(content_type);
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+' | b';'))
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit H, M, S, m, u, n) in
/// milliseconds, rounded up so a short deadline is never 0; `None` when malformed.
fn grpc_timeout_ms(value: &[u8]) -> Option<u64> {
    let value = trim_ows(value);
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let ns_per_unit: u64 = match unit {
        b"H" => 3_600_000_000_000,
        b"M" => 60_000_000_000,
        b"S" => 1_000_000_000,
        b"m" => 1_000_000,
        b"u" => 1_000,
        b"n" => 1,
        _ => return None,
    };
    Some(n.saturating_mul(ns_per_unit).div_ceil(1_000_000).max(1))
}

/// Half-closes, then reads and drops what the client still sends for a short while.
pub(crate) async fn linger(core: &Core, transport: &Transport, deadline: &Rc<Deadline>) {
    if transport.shutdown().await.is_err() {
        return;
    }
    drain(core, transport, deadline).await;
}

/// Reads and drops what the client still sends (for [`LINGER`], at most [`LINGER_BYTES`]), so
/// closing does not reset the connection and destroy our last bytes in flight (an HTTP/2
/// GOAWAY after the codec shut our side).
pub(crate) async fn drain(core: &Core, transport: &Transport, deadline: &Rc<Deadline>) {
    core.wheel.arm(deadline, LINGER);
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match core.wheel.race(deadline, transport.discard()).await {
            Ok(Ok(n)) => drained += n,
            _ => break,
        }
    }
    core.wheel.disarm(deadline);
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn grpc_requests_and_deadlines() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"Application/GRPC+proto"));
        assert!(is_grpc(b"application/grpc; charset=utf-8"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"application/json"));
        assert_eq!(grpc_timeout_ms(b"100m"), Some(100));
        assert_eq!(grpc_timeout_ms(b"2S"), Some(2000));
        assert_eq!(grpc_timeout_ms(b"1H"), Some(3_600_000));
        assert_eq!(grpc_timeout_ms(b"5u"), Some(1));
        assert_eq!(grpc_timeout_ms(b"99999999M"), Some(5_999_999_940_000));
        for bad in [&b""[..], b"m", b"100", b"100x", b"123456789S", b"-1S", b"1.5S"] {
            assert_eq!(grpc_timeout_ms(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_writes_sixteen_lower_case_digits() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for word in [0, u64::MAX, 0x0123_4567_89ab_cdef, 0xa0b0_c0d0_e0f0_0a0b, 1 << 63, 9] {
            for w in [word, x] {
                let mut out = [0u8; 16];
                super::hex(&mut out, w);
                assert_eq!(std::str::from_utf8(&out), Ok(format!("{w:016x}").as_str()));
            }
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17);
        }
    }
}

#[cfg(test)]
mod size {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::rc::Rc;

    use crate::io::{InBuf, Spare};
    use crate::transport::{StreamSide, Transport};

    /// The memory of a request in flight: an exchange's future (boxed per HTTP/1 request,
    /// inline in each HTTP/2 stream's task). 5,016 bytes when the full-duplex path sat inline
    /// beside the half-duplex one, 3,016 with it boxed, 2,320 with the tunnel after a 101
    /// boxed too (rustc 1.95, release; both rare paths allocate only when taken).
    #[test]
    fn an_exchange_in_flight_stays_small() {
        let settings = std::sync::Arc::new(crate::Settings::default());
        let core = crate::core::Core::new(0, settings, usize::MAX);
        let transport = Transport::Stream(Rc::new(Silent));
        let mut input = InBuf::Empty;
        let deadline = Rc::new(crate::timer::Deadline::default());
        let ip = crate::http1::request::ClientIp::new([127, 0, 0, 1].into(), false);
        let local = ([127, 0, 0, 1], 80).into();
        let f = super::exchange(&core, &transport, &mut input, &deadline, &ip, local);
        let size = size_of_val(&f);
        eprintln!("exchange future: {size} bytes");
        assert!(size <= 2560, "an exchange's future is {size} bytes");
    }

    #[derive(Debug)]
    struct Silent;

    impl StreamSide for Silent {
        fn read<'a>(
            &'a self,
            _: &'a mut InBuf,
            _: &'a Spare,
        ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + 'a>> {
            Box::pin(async { Ok(0) })
        }

        fn send<'a>(&'a self, _: &'a [u8]) -> Pin<Box<dyn Future<Output = io::Result<()>> + 'a>> {
            Box::pin(async { Ok(()) })
        }

        fn server_name(&self) -> Option<&[u8]> {
            None
        }

        fn client_cert(&self) -> Option<&Rc<crate::http1::request::ClientCert>> {
            None
        }
    }
}
