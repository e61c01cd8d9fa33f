//! A client connection from accept to its protocol: the transport the table's port asks for
//! (plain, or TLS with the handshake under the core's cap and timeout), then the protocol —
//! HTTP/2 when ALPN chose `h2` or the connection starts with the client preface (h2c, prior
//! knowledge), HTTP/1 otherwise — whose module serves it to its end (`http2`, `conn`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use compio::net::TcpStream;
use rustls::ServerConfig;
use tracing::debug;

use crate::conn;
use crate::core::Core;
use crate::http1::request::ClientIp;
use crate::http2;
use crate::io::InBuf;
use crate::metrics::TlsFailure;
use crate::proxy::Flow;
use crate::timer::{Deadline, Elapsed};
use crate::tls::{self, HandshakeError, TlsStream};
use crate::transport::Transport;

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
    // HTTP/2's connection state is boxed: an HTTP/1 connection's task (which lb's idle memory
    // per connection is) should not carry it. HTTP/1's is the task itself.
    let h2 = core.settings.h2.enabled;
    if h2 && matches!(&transport, Transport::Tls(t) if t.alpn_h2()) {
        Box::pin(http2::serve(Rc::clone(&core), transport, input, client, local)).await;
        return;
    }
    // HTTP/1, its loop inline in this task (lb's idle memory per connection is this task's
    // size: `lb/tests/sizes.rs`). A cleartext connection's first bytes may be the HTTP/2
    // preface: looked at in the same read loop, so the task carries no second read.
    let mut h2c = h2 && matches!(transport, Transport::Plain(_));
    let keep_alive = core.settings.timeouts.keep_alive;
    let mut linger_after = false;
    loop {
        if input.bytes().is_empty() || h2c {
            // Idle: no buffer is held while waiting here. (Deciding on the preface, a prefix
            // of it waits for more under the header timeout.)
            let limit = if input.bytes().is_empty() {
                keep_alive
            } else {
                match http2::starts_h2(input.bytes()) {
                    Some(true) => {
                        let h2 = http2::serve(Rc::clone(&core), transport, input, client, local);
                        return Box::pin(h2).await;
                    }
                    Some(false) => {
                        h2c = false;
                        continue;
                    }
                    None => core.settings.timeouts.request_header,
                }
            };
            let read = transport.read(&mut input, &core.spare);
            match core.wheel.timeout(&deadline, limit, read).await {
                Ok(Ok(n)) if n > 0 => continue,
                // Closed by the client, reset, or idle too long: nothing left to say.
                _ => break,
            }
        }
        // A request is in flight: its state (parsed head, upstream I/O, bodies) lives in one
        // allocation for the exchange's duration. Inline, it made every connection task 2.8 KB
        // even while idle; boxed, an idle task is a few hundred bytes, for one malloc/free per
        // request (~150 instructions of ~19k).
        core.busy.set(core.busy.get() + 1);
        // Written straight into its allocation: `Box::pin(future)` built the 2.5 KB future on
        // the stack and copied it (~270 instructions a request).
        let slot = Box::new_uninit();
        let exchange = conn::exchange(&core, &transport, &mut input, &deadline, &client, local);
        let flow = Box::into_pin(Box::write(slot, exchange)).await;
        core.busy.set(core.busy.get() - 1);
        if flow == Flow::Close || core.draining.get() {
            linger_after = true;
            break;
        }
    }
    input.release(&core.spare);
    if linger_after {
        Box::pin(conn::linger(&core, &transport, &deadline)).await;
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
    let tls_metrics = &core.metrics.tls;
    let Some(config) = config else {
        debug!(%peer, "TLS port without a usable configuration; connection closed");
        tls_metrics.failed(TlsFailure::Unconfigured);
        return None;
    };
    if core.handshakes.get() >= core.settings.max_handshakes {
        debug!(%peer, limit = core.settings.max_handshakes, "TLS handshakes at the limit; connection closed");
        tls_metrics.failed(TlsFailure::Overload);
        return None;
    }
    let _in_flight = InFlight::new(&core.handshakes);
    let accept = TlsStream::accept(stream, config, Rc::clone(&core.spare), input);
    match core.wheel.timeout(deadline, core.settings.timeouts.handshake, accept).await {
        Ok(Ok(stream)) => {
            tls_metrics.handshakes.inc();
            if stream.resumed() {
                tls_metrics.resumed.inc();
            }
            Some(Transport::Tls(Box::new(stream)))
        }
        Ok(Err(e)) => {
            tls::handshake_failed(peer, &e);
            tls_metrics.failed(match e {
                HandshakeError::Tls(_) => TlsFailure::Error,
                HandshakeError::Io(_) => TlsFailure::Closed,
                HandshakeError::PlainHttp => TlsFailure::PlainHttp,
            });
            None
        }
        Err(Elapsed) => {
            debug!(%peer, "TLS handshake timed out");
            tls_metrics.failed(TlsFailure::Timeout);
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
        core.metrics.connections_accepted.inc();
        Counted(core)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.conns.set(self.0.conns.get().saturating_sub(1));
    }
}
