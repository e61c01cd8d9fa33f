//! A client connection: wait for a request head (keep-alive timeout while idle, header timeout
//! once the first byte is in), hand it to `proxy`, repeat. Pipelined requests are answered in
//! order because each exchange finishes before the next head is parsed; their bytes wait in the
//! input buffer.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use compio::io::{AsyncReadManaged, AsyncWrite};
use compio::net::TcpStream;
use tracing::debug;

use crate::core::Core;
use crate::http1::message::{self, ClientIp};
use crate::io::{InBuf, write_out};
use crate::proxy::{Exchange, Flow, Plan, prepare};
use crate::timer::{Deadline, Elapsed};

/// How long a closing connection drains what the client still sends, so our last response is
/// not destroyed by a reset (the lingering close of nginx and Apache).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Serves one accepted client connection to its end.
pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr) {
    let _counted = Counted::new(&core);
    let Ok(local) = stream.local_addr() else { return };
    let deadline = Rc::new(Deadline::default());
    let client = ClientIp::new(peer.ip(), core.settings.trusted_hops > 0);
    let mut input = InBuf::Empty;
    let keep_alive = core.settings.timeouts.keep_alive;
    let mut linger_after = false;
    loop {
        if input.bytes().is_empty() {
            // Idle: no buffer is held while waiting here, and this task's own state is small.
            match core.wheel.timeout(&deadline, keep_alive, input.fill(&stream, &core.spare)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                // Closed by the client, reset, or idle too long: nothing left to say.
                _ => break,
            }
        }
        // A request is in flight: its state (parsed head, upstream I/O, bodies) lives in one
        // allocation for the exchange's duration. Inline, it made every connection task 2.8 KB
        // even while idle; boxed, an idle task is a few hundred bytes, for one malloc/free per
        // request (~150 instructions of ~19k).
        core.busy.set(core.busy.get() + 1);
        let flow = Box::pin(exchange(&core, &stream, &mut input, &deadline, &client, local)).await;
        core.busy.set(core.busy.get() - 1);
        if flow == Flow::Close || core.draining.get() {
            linger_after = true;
            break;
        }
    }
    input.release(&core.spare);
    if linger_after {
        Box::pin(linger(&core, &stream, &deadline)).await;
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

/// One exchange, from the first buffered byte of a request to its end.
async fn exchange(
    core: &Core,
    stream: &TcpStream,
    input: &mut InBuf,
    deadline: &Rc<Deadline>,
    client: &ClientIp,
    local: SocketAddr,
) -> Flow {
    let t = core.settings.timeouts;
    core.wheel.arm(deadline, t.request_header);
    let mut out = core.spare.take();
    let plan = loop {
        out.clear();
        if let Some(plan) = prepare(core, input.bytes(), client, local, &mut out) {
            break plan;
        }
        match core.wheel.race(deadline, input.fill(stream, &core.spare)).await {
            Ok(Ok(n)) if n > 0 => {}
            // End of stream inside a head: nothing to answer (the client is gone).
            Ok(_) => {
                core.spare.give(out);
                return Flow::Close;
            }
            Err(Elapsed) => {
                debug!(client = %String::from_utf8_lossy(client.as_bytes()), "request head timed out");
                message::local_response(&mut out, 408, true, false);
                let _ = core.wheel.timeout(deadline, t.body, write_out(stream, &mut out)).await;
                core.spare.give(out);
                return Flow::Close;
            }
        }
    };
    core.wheel.disarm(deadline);
    let mut ex = Exchange { core, client: stream, input, out: &mut out, deadline };
    let flow = match plan {
        Plan::Reject(reject) => {
            debug!(status = reject.status(), "rejected: {}", reject.reason());
            ex.out.clear();
            message::local_response(ex.out, reject.status(), true, false);
            let _ = core.wheel.timeout(deadline, t.body, write_out(stream, ex.out)).await;
            Flow::Close
        }
        Plan::Respond { status, req } => ex.respond(status, req).await,
        Plan::Redirect { status, location, req } => ex.redirect(status, &location, req).await,
        Plan::Preflight { headers, req } => ex.preflight(headers, req).await,
        Plan::Forward { table, service, cursor, cors, req } => {
            ex.forward(table, service, cursor, &cors, req).await
        }
    };
    core.spare.give(out);
    flow
}

/// Half-closes, then reads and drops what the client still sends for a short while.
async fn linger(core: &Core, stream: &TcpStream, deadline: &Rc<Deadline>) {
    let mut w = stream;
    if w.shutdown().await.is_err() {
        return;
    }
    core.wheel.arm(deadline, LINGER);
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let mut r = stream;
        match core.wheel.race(deadline, r.read_managed(0)).await {
            Ok(Ok(Some(buf))) => drained += buf.len(),
            _ => break,
        }
    }
    core.wheel.disarm(deadline);
}
