//! HTTP/2 from clients (RFC 9113): over TLS when ALPN chose `h2`, and cleartext with prior
//! knowledge (h2c: the connection starts with the client preface). The `h2` crate's server
//! codec runs on this core's runtime over [`crate::h2io::H2Io`] (lb's own reads and writes; tokio's I/O
//! traits only, no tokio runtime, no `Send`).
//!
//! Each stream is one exchange: its HEADERS become an HTTP/1.1 request head (RFC 9113 §8.3
//! checked and translated: pseudo-headers to the request line and `Host`, cookies joined,
//! connection-specific fields refused), and the same `conn::exchange` an HTTP/1 connection
//! runs carries it out — routing, every filter, timeouts, retries, mirrors, CORS and lb's own
//! answers are the HTTP/1 code, not a copy of it. The stream itself is the exchange's client
//! transport (`stream::H2Stream`, a `transport::StreamSide`): its reads are the request's DATA (chunked when no
//! content-length was given), its writes the HTTP/1 response lb produced, sent on as HEADERS
//! and DATA under the stream's flow control. See docs/ARCHITECTURE.md, "HTTP/2".

mod stream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::core::Core;
use crate::http1::request::ClientIp;
use crate::io::InBuf;
use crate::timer::Deadline;
use crate::transport::Transport;

/// The client connection preface (RFC 9113 §3.4); its first line is what an HTTP/1 parser
/// would see as a request line.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether received bytes start an HTTP/2 connection: `Some(true)` for the preface,
/// `Some(false)` for anything else, `None` while they are a shorter prefix of it.
pub(crate) fn starts_h2(bytes: &[u8]) -> Option<bool> {
    let n = bytes.len().min(PREFACE.len());
    if bytes[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// What every stream of a connection shares.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The client's address (forwarding fields) and TLS facts.
    pub client: ClientIp,
    /// Where the connection was accepted.
    pub local: SocketAddr,
    /// On TLS: the server name the client asked for.
    pub server_name: Option<Rc<[u8]>>,
    /// The verified client certificate, if any.
    pub client_cert: Option<Rc<crate::http1::request::ClientCert>>,
    /// Streams being served.
    pub active: Cell<usize>,
    /// Streams accepted.
    pub streams: Cell<u64>,
    /// Streams the client reset before their response was complete.
    pub early_resets: Cell<u64>,
}

impl Connection {
    /// The rapid-reset pattern (CVE-2023-44487): a client that resets most of the streams it
    /// opens, more than [`RESETS_ALLOWED`] of them. Each such stream cost an exchange (routing,
    /// maybe an upstream request) for nothing; the connection gets GOAWAY ENHANCE_YOUR_CALM.
    /// (Streams reset before lb even accepted them are the h2 codec's to count:
    /// `max_pending_accept_reset_streams`.)
    /// Whether the served table still has the port this connection came in on.
    fn port_in_table(&self, core: &Core) -> bool {
        core.table()
            .is_none_or(|t| t.router.port_index(self.local.ip(), self.local.port()).is_some())
    }

    fn abusive(&self) -> bool {
        let resets = self.early_resets.get();
        resets > RESETS_ALLOWED && resets * 2 > self.streams.get()
    }
}

/// How often a connection's task looks at draining and idleness while the codec waits.
const TICK: Duration = Duration::from_secs(1);

/// Early resets a connection may make before [`Connection::abusive`] looks at its ratio.
const RESETS_ALLOWED: u64 = 100;

/// Serves an HTTP/2 client connection to its end. `input`: bytes already read (the preface
/// that chose h2c, or application data that came with the TLS handshake).
pub(crate) async fn serve(
    core: Rc<Core>,
    transport: Transport,
    input: InBuf,
    client: ClientIp,
    local: SocketAddr,
) {
    let limits = core.settings.h2;
    let conn = Rc::new(Connection {
        client,
        local,
        server_name: transport.server_name().map(Rc::from),
        client_cert: transport.client_cert().cloned(),
        active: Cell::new(0),
        streams: Cell::new(0),
        early_resets: Cell::new(0),
    });
    let transport = Rc::new(transport);
    let io = crate::h2io::H2Io::new(Rc::clone(&transport), Rc::clone(&core.spare), input);
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_streams)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_header_list_size(limits.max_header_list)
        .max_frame_size(limits.max_frame)
        .max_send_buffer_size(limits.max_send_buffer)
        .max_pending_accept_reset_streams(limits.max_pending_resets);
    let deadline = Rc::new(Deadline::default());
    let timeouts = core.settings.timeouts;
    // The preface and SETTINGS exchange, under the header timeout (a client that connects and
    // says nothing costs a slot for that long only).
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut h2 = match core.wheel.timeout(&deadline, timeouts.request_header, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            debug!("HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!("HTTP/2 handshake timed out");
            return;
        }
    };
    core.metrics.h2_connections.inc();
    let mut closing = false;
    let mut idle_since = Some(core.wheel.now());
    loop {
        if !closing && conn.abusive() {
            debug!(
                streams = conn.streams.get(),
                resets = conn.early_resets.get(),
                "HTTP/2 client resets most of its streams; GOAWAY ENHANCE_YOUR_CALM"
            );
            h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            core.metrics.h2_abusive.inc();
            closing = true;
        }
        if !closing && (core.draining.get() || !conn.port_in_table(&core)) {
            // GOAWAY with the last stream id: streams in flight finish, new ones go elsewhere
            // (lb is draining, or the table no longer has this port: its listener closed).
            h2.graceful_shutdown();
            closing = true;
        }
        // The codec is driven by `accept`; waking each second notices draining, and an idle
        // connection (no stream in flight) past the keep-alive timeout gets GOAWAY.
        let next = match core.wheel.timeout(&deadline, TICK, h2.accept()).await {
            Ok(next) => next,
            Err(_) => {
                if conn.active.get() > 0 {
                    idle_since = None;
                } else if let Some(since) = idle_since {
                    if !closing && core.wheel.elapsed_since(since) >= timeouts.keep_alive {
                        h2.graceful_shutdown();
                        closing = true;
                    }
                } else {
                    idle_since = Some(core.wheel.now());
                }
                continue;
            }
        };
        idle_since = None;
        let Some(next) = next else { break };
        let (request, respond) = match next {
            Ok(r) => r,
            Err(e) => {
                debug!("HTTP/2 connection ended: {e}");
                break;
            }
        };
        conn.active.set(conn.active.get() + 1);
        conn.streams.set(conn.streams.get() + 1);
        core.metrics.h2_streams.inc();
        let (core, conn) = (Rc::clone(&core), Rc::clone(&conn));
        compio::runtime::spawn(async move {
            core.busy.set(core.busy.get() + 1);
            stream::serve(&core, &conn, request, respond).await;
            core.busy.set(core.busy.get() - 1);
            conn.active.set(conn.active.get() - 1);
        })
        .detach();
    }
    // The codec has sent its last frames (GOAWAY) and shut our side: read what the client
    // still sends for a moment, so closing does not reset the connection and lose them.
    drop(h2);
    crate::conn::drain(&core, &transport, &deadline).await;
}
