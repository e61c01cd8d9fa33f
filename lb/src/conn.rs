//! A client connection: its transport, speaking HTTP/1. Wait for a request head (keep-alive
//! timeout while idle, header timeout once the first byte is in), turn it into the exchange's
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
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;
use rustls::ServerConfig;
use table::lookup::{MAX_HOST, normalize_host};
use table::{ActionId, Headers, ServiceId};
use tracing::debug;

use crate::core::Core;
use crate::error::{Cause, Phase, ProxyError, Refusal, Side};
use crate::exchange::{self, Decision, Request};
use crate::fields::FieldList;
use crate::filters::mirror;
use crate::http1::parse::{self, Head, MAX_HEADERS, trim_ows};
use crate::http1::request::{self, ClientIp, Rewritten};
use crate::http2;
use crate::io::InBuf;
use crate::proxy::{Exchange, Flow, Summary};
use crate::timer::{Deadline, Elapsed};
use crate::tls::{self, TlsStream};
use crate::transport::Transport;
use crate::upstream::CoreTable;

/// How long a closing connection drains what the client still sends, so our last response is
/// not destroyed by a reset (the lingering close of nginx and Apache).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Serves one accepted client connection to its end.
pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr) {
    let _counted = Counted::new(&core);
    let Ok(local) = stream.local_addr() else { return };
    let deadline = Rc::new(Deadline::default());
    let mut input = InBuf::Empty;
    let transport = match tls_config(&core, local) {
        None => Transport::Plain(stream),
        Some(config) => {
            let tls = Box::pin(handshake(&core, stream, config, peer, &deadline, &mut input));
            match tls.await {
                Some(t) => t,
                None => {
                    input.release(&core.spare);
                    return;
                }
            }
        }
    };
    let client = ClientIp::new(peer.ip(), core.settings.trusted_hops > 0)
        .over_tls(transport.server_name().is_some())
        .with_client_cert(transport.client_cert().cloned());
    let keep_alive = core.settings.timeouts.keep_alive;
    let mut linger_after = false;
    // HTTP/2: chosen by ALPN on TLS, by the client preface (prior knowledge) in cleartext.
    let mut first = core.settings.h2.enabled;
    if first
        && let Transport::Tls(t) = &transport
        && t.alpn_h2()
    {
        // Boxed: an HTTP/1 connection's task should not carry an HTTP/2 connection's state.
        return Box::pin(http2::serve(Rc::clone(&core), transport, input, client, local)).await;
    }
    loop {
        if input.bytes().is_empty() {
            // Idle: no buffer is held while waiting here, and this task's own state is small.
            let read = transport.read(&mut input, &core.spare);
            match core.wheel.timeout(&deadline, keep_alive, read).await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed by the client, reset, or idle too long: nothing left to say.
                _ => break,
            }
        }
        if first && transport.plain().is_some() {
            match http2::starts_h2(input.bytes()) {
                Some(true) => {
                    let h2 = http2::serve(Rc::clone(&core), transport, input, client, local);
                    return Box::pin(h2).await;
                }
                Some(false) => first = false,
                // A prefix of the preface: read on (under the header timeout) to decide.
                None => {
                    let read = transport.read(&mut input, &core.spare);
                    let limit = core.settings.timeouts.request_header;
                    match core.wheel.timeout(&deadline, limit, read).await {
                        Ok(Ok(n)) if n > 0 => continue,
                        _ => break,
                    }
                }
            }
        }
        // A request is in flight: its state (parsed head, upstream I/O, bodies) lives in one
        // allocation for the exchange's duration. Inline, it made every connection task 2.8 KB
        // even while idle; boxed, an idle task is a few hundred bytes, for one malloc/free per
        // request (~150 instructions of ~19k).
        core.busy.set(core.busy.get() + 1);
        let flow =
            Box::pin(exchange(&core, &transport, &mut input, &deadline, &client, local)).await;
        core.busy.set(core.busy.get() - 1);
        if flow == Flow::Close || core.draining.get() {
            linger_after = true;
            break;
        }
    }
    input.release(&core.spare);
    if linger_after {
        Box::pin(linger(&core, &transport, &deadline)).await;
    }
}

/// `Some` when the port a connection was accepted on terminates TLS, with its server config
/// (`Some(None)`: a TLS port whose configuration could not be built; [`handshake`] closes its
/// connections). `None`: plain.
fn tls_config(core: &Core, local: SocketAddr) -> Option<Option<Arc<ServerConfig>>> {
    let table = core.table()?;
    let index = table.router.port_index(local.ip(), local.port())?;
    table.router.table().ports.get(index)?.tls.as_ref()?;
    Some(table.tls.config(index).cloned())
}

/// Runs the TLS handshake under the handshake timeout and the core's cap on handshakes in
/// flight. `None`: the connection is to be closed (refused, failed, timed out — each a debug
/// line, never more: a scan must not flood the log).
async fn handshake(
    core: &Core,
    stream: TcpStream,
    config: Option<Arc<ServerConfig>>,
    peer: SocketAddr,
    deadline: &Rc<Deadline>,
    input: &mut InBuf,
) -> Option<Transport> {
    let Some(config) = config else {
        debug!(%peer, "TLS port without a usable configuration; connection closed");
        return None;
    };
    if core.handshakes.get() >= core.settings.max_handshakes {
        debug!(%peer, limit = core.settings.max_handshakes, "TLS handshakes at the limit; connection closed");
        return None;
    }
    let _in_flight = InFlight::new(&core.handshakes);
    let accept = TlsStream::accept(stream, config, Rc::clone(&core.spare), input);
    match core.wheel.timeout(deadline, core.settings.timeouts.handshake, accept).await {
        Ok(Ok(stream)) => Some(Transport::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tls::handshake_failed(peer, &e);
            None
        }
        Err(Elapsed) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Counts one unit in `cell` for as long as it lives.
struct InFlight<'a>(&'a std::cell::Cell<usize>);

impl<'a> InFlight<'a> {
    fn new(cell: &'a std::cell::Cell<usize>) -> InFlight<'a> {
        cell.set(cell.get() + 1);
        InFlight(cell)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Counts a client connection on its core for as long as it lives (`--max-connections`).
struct Counted<'a>(&'a Core);

impl<'a> Counted<'a> {
    fn new(core: &'a Core) -> Counted<'a> {
        core.conns.set(core.conns.get() + 1);
        Counted(core)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.conns.set(self.0.conns.get().saturating_sub(1));
    }
}

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
    let mut out = core.spare.take();
    let plan = loop {
        out.clear();
        let on = Accepted { client, local, server_name: transport.server_name() };
        if let Some(plan) = prepare(core, input.bytes(), &on, &mut out) {
            break plan;
        }
        match core.wheel.race(deadline, transport.read(input, &core.spare)).await {
            Ok(Ok(n)) if n > 0 => {}
            // End of stream inside a head: nothing to answer (the client is gone).
            Ok(_) => {
                core.spare.give(out);
                return Flow::Close;
            }
            Err(Elapsed) => {
                debug!(client = %client.as_bytes().escape_ascii(), "request head timed out");
                break Plan::Fail(ProxyError::new(
                    Side::Downstream,
                    Phase::RequestHead,
                    Cause::Timeout,
                ));
            }
        }
    };
    core.wheel.disarm(deadline);
    let mut ex = Exchange { core, client: transport, input, out: &mut out, deadline };
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
    flow
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
/// (and mirror copies sent).
fn prepare(core: &Core, buf: &[u8], on: &Accepted<'_>, out: &mut Vec<u8>) -> Option<Plan> {
    let Accepted { client, local, server_name } = *on;
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse::parse(buf, &mut fields, &core.settings.limits) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(reject) => {
            debug!(status = reject.status(), "rejected: {}", reject.reason());
            return Some(Plan::Fail(ProxyError::rejected(reject)));
        }
    };
    let fields = &fields[..head.header_count];
    let req = Summary::of(&head, buf);
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
    let forward = match exchange::decide(&table, &request) {
        Decision::Refuse(refusal) => return Some(Plan::Refuse { refusal, req }),
        Decision::Redirect { status, location } => {
            return Some(Plan::Redirect { status, location, req });
        }
        Decision::Preflight(fields) => return Some(Plan::Preflight { fields, req }),
        Decision::Forward(f) => f,
    };
    let rewritten = Rewritten {
        host: forward.host.map(str::as_bytes),
        target: forward.target.as_deref().map(str::as_bytes),
    };
    request::request_head(out, buf, &head, fields, client, &forward.edits, rewritten);
    let action = forward.action;
    if !action.mirrors.is_empty() && !head.upgrade {
        let edits = forward.mirror_edits();
        let copy = |out: &mut Vec<u8>| {
            request::request_head(out, buf, &head, fields, client, &edits, rewritten);
            request::close_after(out);
        };
        let mirrors = (&core.mirrors, &core.wheel, core.settings.timeouts);
        mirror::copy(mirrors, &table, &action.mirrors, head.whole_body(buf), copy);
    }
    // The clock is read only for rules with a request timeout (which runs from here).
    let arrived = if action.timeouts.request_ms == 0 { 0 } else { core.wheel.now() };
    let req = Summary { arrived, ..req };
    let (id, service, cursor, cors) = (forward.id, forward.service, forward.cursor, forward.cors);
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
        }
    }
}

/// Half-closes, then reads and drops what the client still sends for a short while.
async fn linger(core: &Core, transport: &Transport, deadline: &Rc<Deadline>) {
    if transport.shutdown().await.is_err() {
        return;
    }
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
