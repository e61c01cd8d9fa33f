//! The connection side of TLS: a core's handshake ([`TlsStream::accept`]), then reads and
//! writes through rustls's unbuffered state machine over lb's own buffers.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use compio::io::{AsyncReadManaged, AsyncWrite};
use compio::net::TcpStream;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};

use super::{CLIENT_VERIFIED, RESOLVED_NAME, client_cert};
use crate::http1::request::ClientCert;
use crate::io::{InBuf, Spare, write_out};

/// Why a handshake did not complete.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The peer broke the protocol, or offered nothing we accept (an alert was sent).
    Tls(rustls::Error),
    /// The connection failed or ended.
    Io(io::Error),
    /// The client spoke plain HTTP (answered with a 400 that says so).
    PlainHttp,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::PlainHttp => f.write_str("plain HTTP sent to a TLS port"),
        }
    }
}

/// What a plain-HTTP request to a TLS port is answered with.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 61\r\nConnection: close\r\n\r\nThis port speaks HTTPS: a plain HTTP request was sent to it.\n";

/// Whether the first bytes of a connection are an HTTP/1 request line rather than a TLS
/// record (which starts with content type 22, handshake): a method is upper-case letters.
fn plain_http(bytes: &[u8]) -> bool {
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method >= 3 && bytes.get(method) == Some(&b' ')
}

/// A TLS server connection over TCP.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    state: RefCell<State>,
    /// Ciphertext received and not yet processed: a partial record, held only while one is
    /// split across reads.
    cipher: RefCell<InBuf>,
    /// A write is in flight (TLS output produced by reads then waits for the next write).
    writing: Cell<bool>,
    /// The server name the client sent, lower-case (empty: none).
    server_name: Box<[u8]>,
    /// The client's certificate, when one was presented and verified.
    client_cert: Option<Rc<ClientCert>>,
    /// ALPN chose `h2`.
    h2: bool,
    spare: Rc<Spare>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

struct State {
    conn: UnbufferedServerConnection,
    /// TLS records to send (handshake messages, tickets, alerts, key updates) that no write
    /// has carried yet.
    pending: Vec<u8>,
    /// The peer closed (close_notify) or the connection failed: reads return end of stream.
    ended: bool,
    /// The last pass consumed every received byte and wants more: until bytes arrive, another
    /// pass has nothing to do (the next read goes straight to the socket).
    drained: bool,
}

/// What a TLS read does next.
enum Step {
    /// Return this many plaintext bytes (0: end of stream).
    Done(usize),
    /// Read more ciphertext.
    Fill,
    /// The connection failed.
    Failed(rustls::Error),
}

/// What processing the received records asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// More ciphertext.
    Read,
    /// `pending` must go out before the handshake can go on.
    Write,
    /// The peer closed.
    Closed,
}

impl State {
    /// Processes the received records: plaintext is appended to `input`, TLS output to
    /// `pending`. Returns the plaintext byte count and what to do next. `defer`: established
    /// connections leave TLS output for the next write instead of asking to send it now.
    fn advance(
        &mut self,
        cipher: &mut InBuf,
        input: &mut InBuf,
        spare: &Spare,
        defer: bool,
    ) -> Result<(usize, Want), rustls::Error> {
        let mut plain = 0;
        loop {
            let status = self.conn.process_tls_records(cipher.bytes_mut());
            let discard = status.discard;
            let outcome = match status.state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut result = Ok(None);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                plain += record.payload.len();
                                input.append(record.payload, spare);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, &mut self.pending).map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    if self.pending.is_empty() || defer {
                        // Sent already, or left for the next write.
                        t.done();
                        Ok(None)
                    } else {
                        Ok(Some(Want::Write))
                    }
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Ok(Some(Want::Read))
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Ok(Some(Want::Closed)),
                Ok(other) => Err(rustls::Error::General(format!("unexpected TLS state {other:?}"))),
            };
            cipher.consume(discard, spare);
            match outcome {
                Ok(None) if defer && plain > 0 && cipher.bytes().is_empty() => {
                    // Every received byte became plaintext: the pass after this one could only
                    // say "read more" (anything rustls wants to send goes out with the next
                    // write, as `defer` asks).
                    self.drained = true;
                    return Ok((plain, Want::Read));
                }
                Ok(None) => {}
                Ok(Some(want)) => {
                    if want == Want::Closed {
                        self.ended = true;
                    }
                    self.drained = want == Want::Read && cipher.bytes().is_empty();
                    return Ok((plain, want));
                }
                Err(e) => {
                    self.ended = true;
                    // The alert rustls queued for this error goes out with `pending`.
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// Moves records rustls queued (an alert after an error) into `pending`.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut e, &mut self.pending).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Appends to `out` the pending TLS records, then `plain` encrypted.
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(&self.pending);
        self.pending = Vec::new();
        if plain.is_empty() {
            return Ok(());
        }
        loop {
            match self.conn.process_tls_records(&mut []).state.map_err(tls_io)? {
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, out).map_err(tls_io)?,
                ConnectionState::TransmitTlsData(mut t) => {
                    if let Some(mut w) = t.may_encrypt_app_data() {
                        encrypt(&mut w, plain, out)?;
                        t.done();
                        return Ok(());
                    }
                    t.done();
                }
                ConnectionState::WriteTraffic(mut w) => return encrypt(&mut w, plain, out),
                ConnectionState::PeerClosed => {}
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("TLS connection cannot send ({other:?})"),
                    ));
                }
            }
        }
    }

    /// Appends a close_notify alert to `out`.
    fn close_notify(&mut self, out: &mut Vec<u8>) {
        for _ in 0..4 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut e, out).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let start = out.len();
                    out.resize(start + 64, 0);
                    let n = w.queue_close_notify(&mut out[start..]).unwrap_or(0);
                    out.truncate(start + n);
                    return;
                }
                Ok(ConnectionState::PeerClosed) => {}
                _ => return,
            }
        }
    }
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends a handshake record rustls has ready.
fn encode(
    e: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 2048;
    loop {
        out.resize(start + room, 0);
        match e.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(err) => {
                out.truncate(start);
                return Err(rustls::Error::General(format!("encoding a TLS record: {err}")));
            }
        }
    }
}

/// Appends `plain` as application-data records.
fn encrypt(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let start = out.len();
    // Record overhead: header, content type, AEAD tag (and a TLS 1.2 explicit nonce), per
    // 16 KiB record. rustls says how much it needs if this guess is short.
    let mut room = plain.len() + (plain.len() / 16384 + 1) * 48;
    loop {
        out.resize(start + room, 0);
        match w.encrypt(plain, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(io::Error::other(format!("encrypting: {e}")));
            }
        }
    }
}

impl TlsStream {
    /// Runs the server handshake on `tcp`. Application data that arrived with the client's
    /// last handshake flight is left in `input`.
    pub(crate) async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        spare: Rc<Spare>,
        input: &mut InBuf,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream {
            tcp,
            state: RefCell::new(State { conn, pending: Vec::new(), ended: false, drained: false }),
            cipher: RefCell::new(InBuf::Empty),
            writing: Cell::new(false),
            server_name: Box::default(),
            client_cert: None,
            h2: false,
            spare,
        };
        let mut handshaken = false;
        let mut verified = None;
        CLIENT_VERIFIED.with(|c| c.set(None));
        loop {
            let step = {
                let mut state = stream.state.borrow_mut();
                let mut cipher = stream.cipher.borrow_mut();
                state.advance(&mut cipher, input, &stream.spare, false)
            };
            if let Some(name) = RESOLVED_NAME.with(|r| r.borrow_mut().take()) {
                stream.server_name = name;
            }
            if let Some(v) = CLIENT_VERIFIED.with(Cell::take) {
                verified = Some(v);
            }
            let want = match step {
                Ok((_, want)) => want,
                Err(e) => {
                    // Best effort: tell the client why (the alert), then give up.
                    let _ = stream.flush_pending().await;
                    return Err(HandshakeError::Tls(e));
                }
            };
            stream.flush_pending().await.map_err(HandshakeError::Io)?;
            let handshaking = stream.state.borrow().conn.is_handshaking();
            match want {
                Want::Write => {}
                Want::Read if !handshaking => break,
                Want::Read => {
                    let first = stream.cipher.borrow().bytes().is_empty() && !handshaken;
                    let n = stream.fill().await.map_err(HandshakeError::Io)?;
                    if n == 0 {
                        return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
                    }
                    if first && plain_http(stream.cipher.borrow().bytes()) {
                        // nginx's answer to the same mistake: a 400 that says what happened.
                        let mut out = PLAIN_HTTP_ANSWER.to_vec();
                        let _ = write_out(&stream.tcp, &mut out).await;
                        let mut w = &stream.tcp;
                        let _ = w.shutdown().await;
                        return Err(HandshakeError::PlainHttp);
                    }
                    handshaken = true;
                }
                Want::Closed => {
                    return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
        stream.h2 = stream.state.borrow().conn.alpn_protocol() == Some(b"h2");
        if verified == Some(true) {
            let state = stream.state.borrow();
            let leaf = state.conn.peer_certificates().and_then(<[CertificateDer<'_>]>::first);
            stream.client_cert = leaf.map(|c| Rc::new(client_cert(c.as_ref())));
        }
        Ok(stream)
    }

    /// Whether ALPN chose HTTP/2.
    pub(crate) fn alpn_h2(&self) -> bool {
        self.h2
    }

    /// Whether the handshake resumed a session.
    pub(crate) fn resumed(&self) -> bool {
        self.state.borrow().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The verified client certificate, if any.
    pub(crate) fn client_cert(&self) -> Option<&Rc<ClientCert>> {
        self.client_cert.as_ref()
    }

    /// The server name the client asked for, lower-case; empty when it sent none.
    pub(crate) fn server_name(&self) -> &[u8] {
        &self.server_name
    }

    /// Reads ciphertext after what is buffered. The buffer stays borrowed across the read, so
    /// a read that is dropped midway leaves the partial record where it was; a second reader
    /// at the same time (lb never has one) gets an error, not a panic.
    #[allow(
        clippy::await_holding_refcell_ref,
        reason = "one reader per connection; try_borrow_mut turns a second one into an error"
    )]
    async fn fill(&self) -> io::Result<usize> {
        let Ok(mut cipher) = self.cipher.try_borrow_mut() else {
            return Err(io::Error::other("two reads at once on one TLS connection"));
        };
        cipher.fill(&self.tcp, &self.spare).await
    }

    /// Sends the TLS records waiting in `pending`.
    async fn flush_pending(&self) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.state.borrow_mut().pending);
        write_out(&self.tcp, &mut out).await
    }

    /// Reads more plaintext after the unconsumed bytes of `input`; 0 at end of stream.
    ///
    /// Synchronous steps ([`TlsStream::process`], [`TlsStream::received`]) around one
    /// ciphertext read.
    pub(crate) async fn read(&self, input: &mut InBuf, spare: &Spare) -> io::Result<usize> {
        loop {
            match self.process(input, spare) {
                Step::Done(n) => return Ok(n),
                // Boxed: the error path should not grow every idle read's state.
                Step::Failed(e) => return Err(Box::pin(self.failed(e)).await),
                Step::Fill => {}
            }
            let n = self.fill().await?;
            if let Some(end) = self.received(n) {
                return Ok(end);
            }
        }
    }

    /// Processes what was received: plaintext appended to `input`, or what the read must do.
    fn process(&self, input: &mut InBuf, spare: &Spare) -> Step {
        let mut state = self.state.borrow_mut();
        if state.ended {
            return Step::Done(0);
        }
        let Ok(mut cipher) = self.cipher.try_borrow_mut() else {
            return Step::Failed(rustls::Error::General("two reads at once".into()));
        };
        if state.drained && cipher.bytes().is_empty() {
            // Nothing received since the last pass: skip a pass of rustls's state machine
            // that could only say "read more".
            return Step::Fill;
        }
        match state.advance(&mut cipher, input, spare, true) {
            Ok((0, Want::Read | Want::Write)) => Step::Fill,
            Ok((n, _)) => Step::Done(n),
            Err(e) => Step::Failed(e),
        }
    }

    /// After a ciphertext read of `n` bytes: `Some(0)` at end of stream, else `None` (process
    /// again).
    fn received(&self, n: usize) -> Option<usize> {
        let mut state = self.state.borrow_mut();
        state.drained = false;
        if n == 0 {
            // End of stream without close_notify: what was received is all there is (an
            // HTTP/1 message framed by length or chunks knows whether it is complete).
            state.ended = true;
            return Some(0);
        }
        None
    }

    /// After a TLS error: the alert rustls queued goes out (unless a write is in flight, which
    /// carries it), and the error for the reader.
    async fn failed(&self, e: rustls::Error) -> io::Error {
        if !self.writing.get() {
            let _ = self.flush_pending().await;
        }
        tls_io(e)
    }

    /// Encrypts and sends `plain`, then clears it.
    pub(crate) async fn write(&self, plain: &mut Vec<u8>) -> io::Result<()> {
        self.send(plain).await?;
        plain.clear();
        Ok(())
    }

    /// Encrypts and sends `plain`, leaving it as it was.
    pub(crate) async fn send(&self, plain: &[u8]) -> io::Result<()> {
        let mut out = self.spare.take();
        let sealed = self.state.borrow_mut().seal(plain, &mut out);
        if let Err(e) = sealed {
            self.spare.give(out);
            return Err(e);
        }
        self.writing.set(true);
        let res = write_out(&self.tcp, &mut out).await;
        self.writing.set(false);
        self.spare.give(out);
        res
    }

    /// Sends close_notify, then ends the TCP sending side.
    pub(crate) async fn shutdown(&self) -> io::Result<()> {
        let mut out = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            out.extend_from_slice(&std::mem::take(&mut state.pending));
            state.close_notify(&mut out);
        }
        write_out(&self.tcp, &mut out).await?;
        let mut w = &self.tcp;
        w.shutdown().await
    }

    /// Reads and drops raw bytes (a closing connection's lingering reads).
    pub(crate) async fn discard(&self) -> Result<usize, ()> {
        let mut r = &self.tcp;
        match r.read_managed(0).await {
            Ok(Some(buf)) => Ok(buf.len()),
            _ => Err(()),
        }
    }

    /// The TCP connection under it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// Logs a handshake that failed, at debug level only: a scan or a flood must not flood the log.
pub(crate) fn handshake_failed(peer: std::net::SocketAddr, e: &HandshakeError) {
    tracing::debug!(%peer, "TLS handshake failed: {e}");
}
