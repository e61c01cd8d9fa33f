//! What a connection's bytes travel over. Every read and write of a client or upstream
//! connection goes through a [`Transport`], so the layers above (HTTP/1, the exchange, the
//! proxy) never touch a socket.
//!
//! Two kinds: plain TCP, and TLS ([`crate::tls`]), whose rustls connection is driven by these
//! same reads and writes (sans-I/O): ciphertext arrives through the provided-buffer ring
//! exactly as plaintext does, so an idle TLS connection still holds no receive buffer, and
//! `read` hands the layers above decrypted bytes in an [`InBuf`].

use std::future::Future;
use std::io;
use std::pin::Pin;

use compio::BufResult;
use compio::io::{AsyncReadManaged, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::Either;

use crate::io::{InBuf, Spare, write_out};
use crate::tls::TlsStream;

/// A connection's byte stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: a plain connection should not carry the TLS state's size).
    Tls(Box<TlsStream>),
    /// A client side implemented by a protocol above this layer: one HTTP/2 stream as the
    /// client of its HTTP/1 exchange (`http2`: reads are its request body, writes the HTTP/1
    /// response lb made, sent on as HEADERS and DATA). Shared: the protocol keeps the same
    /// allocation for its own side of the stream.
    Stream(std::rc::Rc<dyn StreamSide>),
}

/// A client transport a protocol implements on top of its own connection (HTTP/2 streams).
/// Defined here, implemented there: the transport layer knows no protocol.
pub(crate) trait StreamSide: std::fmt::Debug {
    /// Reads more bytes after the unconsumed ones in `input`; 0 at end of stream.
    fn read<'a>(
        &'a self,
        input: &'a mut InBuf,
        spare: &'a Spare,
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + 'a>>;

    /// Takes bytes to send.
    fn send<'a>(&'a self, bytes: &'a [u8]) -> Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

    /// The server name of the connection, on TLS.
    fn server_name(&self) -> Option<&[u8]>;

    /// The connection's verified client certificate.
    fn client_cert(&self) -> Option<&std::rc::Rc<crate::http1::request::ClientCert>>;
}

impl Transport {
    /// Reads more bytes after the unconsumed ones in `input`; 0 at end of stream. An empty
    /// `input` holds no buffer while the read waits.
    ///
    /// A plain function returning the read itself (no `async` wrapper): this future sits in
    /// every idle connection's task, whose size `lb/tests/sizes.rs` guards.
    pub(crate) fn read<'a>(
        &'a self,
        input: &'a mut InBuf,
        spare: &'a Spare,
    ) -> impl Future<Output = io::Result<usize>> + 'a {
        match self {
            Transport::Plain(s) => Either::Left(input.fill(s, spare)),
            // Boxed (one allocation per TLS read, ~150 instructions): inline, the TLS read's
            // state made every connection's idle task 88 bytes larger (664 → 752), plain
            // ones included. Measured 2026-11-30; reconsider if that trade changes.
            Transport::Tls(t) => Either::Right(Either::Left(Box::pin(t.read(input, spare)))),
            Transport::Stream(s) => Either::Right(Either::Right(s.read(input, spare))),
        }
    }

    /// Writes all of `out` and clears it (keeping its allocation). Returns the write itself
    /// (no `async` wrapper holding it a second time).
    pub(crate) fn write<'a>(
        &'a self,
        out: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + 'a {
        match self {
            Transport::Plain(s) => Either::Left(write_out(s, out)),
            Transport::Tls(t) => Either::Right(Either::Left(t.write(out))),
            Transport::Stream(s) => Either::Right(Either::Right(Box::pin(async move {
                let sent = s.send(out).await;
                out.clear();
                sent
            }))),
        }
    }

    /// Writes a constant (an interim response), without copying it into a buffer first.
    pub(crate) async fn write_static(&self, bytes: &'static [u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                let mut w = s;
                w.write_all(bytes).await.0
            }
            Transport::Tls(t) => t.send(bytes).await,
            Transport::Stream(s) => s.send(bytes).await,
        }
    }

    /// Writes all of `out` and leaves it as it was (the bytes may be needed for a resend).
    pub(crate) async fn write_keep(&self, out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                let mut w = s;
                let BufResult(res, bytes) = w.write_all(std::mem::take(out)).await;
                *out = bytes;
                res
            }
            Transport::Tls(t) => t.send(out).await,
            Transport::Stream(s) => s.send(out).await,
        }
    }

    /// Reads whatever arrives next and drops it (a closing connection's lingering reads):
    /// the number of bytes, or `Err` at end of stream or on an error.
    pub(crate) async fn discard(&self) -> Result<usize, ()> {
        match self {
            Transport::Plain(s) => {
                let mut r = s;
                match r.read_managed(0).await {
                    Ok(Some(buf)) => Ok(buf.len()),
                    _ => Err(()),
                }
            }
            Transport::Tls(t) => t.discard().await,
            // A stream's end is its own (END_STREAM or a reset), nothing to drain.
            Transport::Stream(_) => Err(()),
        }
    }

    /// Ends our sending side (TCP FIN).
    pub(crate) async fn shutdown(&self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                let mut w = s;
                w.shutdown().await
            }
            Transport::Tls(t) => t.shutdown().await,
            Transport::Stream(_) => Ok(()),
        }
    }

    /// Whether an idle connection stayed silent (no byte, no EOF): see [`crate::io::idle_clean`].
    pub(crate) fn idle_clean(&self) -> bool {
        match self {
            Transport::Plain(s) => crate::io::idle_clean(s),
            Transport::Tls(t) => crate::io::idle_clean(t.tcp()),
            Transport::Stream(_) => false,
        }
    }

    /// The TCP connection of a plain transport (the byte tunnel after an upgrade copies
    /// between plain sockets directly); `None` for TLS, which tunnels through its own reads
    /// and writes.
    pub(crate) fn plain(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(_) | Transport::Stream(_) => None,
        }
    }

    /// A TLS client's verified certificate.
    pub(crate) fn client_cert(&self) -> Option<&std::rc::Rc<crate::http1::request::ClientCert>> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => t.client_cert(),
            Transport::Stream(s) => s.client_cert(),
        }
    }

    /// The server name a TLS client asked for (`Some(b"")`: TLS without one); `None` for
    /// plain connections.
    pub(crate) fn server_name(&self) -> Option<&[u8]> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => Some(t.server_name()),
            Transport::Stream(s) => s.server_name(),
        }
    }
}
