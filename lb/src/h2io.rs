//! The h2 crate's codecs (server: `http2`; client: `upstream::h2`) over lb's own I/O: tokio's `AsyncRead`/`AsyncWrite` (the traits only;
//! no tokio runtime) implemented on a [`Transport`], so a connection's HTTP/2 frames come from
//! the same io_uring reads (ring buffers, after TLS) as HTTP/1 and leave through its writes.
//!
//! Reading: received bytes wait in an [`InBuf`] (a ring buffer while they last; none while the
//! connection is idle) until h2 copies them into its frame buffer — the one copy the codec
//! needs. Writing: h2 hands over encoded frames; they gather in one buffer and go out as one
//! write when h2 flushes (io_uring wants owned buffers, so that copy is the write's own). A
//! read and a write run at the same time, as the transport allows (the TLS stream keeps its
//! reading and writing state apart).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::{InBuf, Spare};
use crate::transport::Transport;

/// Bytes h2 may queue before a write must finish first (its own send buffer holds more).
const GATHER: usize = 64 * 1024;

type Pending<T> = Pin<Box<dyn Future<Output = T>>>;

/// A [`Transport`] as the h2 codec's byte stream.
pub(crate) struct H2Io {
    transport: Rc<Transport>,
    spare: Rc<Spare>,
    /// Received, not yet taken by h2.
    input: InBuf,
    /// The read in flight (it owns the input buffer until it completes).
    reading: Option<Pending<(InBuf, io::Result<usize>)>>,
    /// Frames h2 wrote that no write carries yet.
    out: Vec<u8>,
    /// The write in flight (it owns the bytes it sends).
    writing: Option<Pending<(Vec<u8>, io::Result<()>)>>,
    /// Our sending side was shut down.
    shut: bool,
}

impl std::fmt::Debug for H2Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Io").field("out", &self.out.len()).finish_non_exhaustive()
    }
}

impl H2Io {
    /// `input`: bytes already read from the connection (the preface that chose HTTP/2).
    pub(crate) fn new(transport: Rc<Transport>, spare: Rc<Spare>, input: InBuf) -> H2Io {
        H2Io { transport, spare, input, reading: None, out: Vec::new(), writing: None, shut: false }
    }

    /// Polls the write in flight; when it is done, its buffer is kept for the next one.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(w) = self.writing.as_mut() {
            let (mut buf, res) = ready!(w.as_mut().poll(cx));
            self.writing = None;
            buf.clear();
            if self.out.is_empty() {
                self.out = buf;
            }
            res?;
        }
        Poll::Ready(Ok(()))
    }

    /// Starts a write of everything gathered.
    fn start_write(&mut self) {
        let mut buf = std::mem::take(&mut self.out);
        let transport = Rc::clone(&self.transport);
        self.writing = Some(Box::pin(async move {
            let res = transport.write_keep(&mut buf).await;
            (buf, res)
        }));
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        self.input.release(&self.spare);
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let available = this.input.bytes();
            if !available.is_empty() {
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.input.consume(n, &this.spare);
                return Poll::Ready(Ok(()));
            }
            if this.reading.is_none() {
                let mut input = std::mem::take(&mut this.input);
                let (transport, spare) = (Rc::clone(&this.transport), Rc::clone(&this.spare));
                this.reading = Some(Box::pin(async move {
                    let res = transport.read(&mut input, &spare).await;
                    (input, res)
                }));
            }
            let Some(reading) = this.reading.as_mut() else { continue };
            let (input, res) = ready!(reading.as_mut().poll(cx));
            this.reading = None;
            this.input = input;
            match res {
                // End of stream: nothing put in `buf` says so.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() >= GATHER {
            ready!(this.poll_written(cx))?;
            if !this.out.is_empty() {
                this.start_write();
                ready!(this.poll_written(cx))?;
            }
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_written(cx))?;
            if this.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.start_write();
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            let transport = Rc::clone(&this.transport);
            this.writing = Some(Box::pin(async move { (Vec::new(), transport.shutdown().await) }));
        }
        this.poll_written(cx)
    }
}

/// Sends body bytes as DATA on `send`, waiting for window as the peer grants it (a peer that
/// never reads stalls this stream until the exchange's body timeout, nothing more); `end`
/// ends the stream with the last of them (an empty DATA frame when there are none).
pub(crate) async fn send_all(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> io::Result<()> {
    let h2_io = |e: h2::Error| io::Error::other(e);
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(h2_io(e)),
            None => return Err(io::ErrorKind::BrokenPipe.into()),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        let last = end && data.is_empty();
        send.send_data(chunk, last).map_err(h2_io)?;
        if last {
            return Ok(());
        }
    }
    if end {
        send.send_data(Bytes::new(), true).map_err(h2_io)?;
    }
    Ok(())
}

/// The next DATA of a stream handed to lb's HTTP/1 side: appended to `input` as it came, or
/// as one chunk when `chunked`; `Ok(None)` at the end of the stream (its trailers, if any,
/// are the caller's: [`last_chunk`]). Empty DATA frames hand over nothing.
pub(crate) async fn next_data(
    recv: &mut h2::RecvStream,
    chunked: bool,
    input: &mut InBuf,
    spare: &Spare,
) -> Result<Option<usize>, h2::Error> {
    let data = loop {
        match recv.data().await {
            Some(Ok(data)) if data.is_empty() => {}
            Some(Ok(data)) => break data,
            Some(Err(e)) => return Err(e),
            None => return Ok(None),
        }
    };
    let _ = recv.flow_control().release_capacity(data.len());
    if !chunked {
        input.append(&data, spare);
        return Ok(Some(data.len()));
    }
    let mut framed = Vec::with_capacity(data.len() + 12);
    crate::http1::body::push_hex(&mut framed, data.len());
    framed.extend_from_slice(b"\r\n");
    framed.extend_from_slice(&data);
    framed.extend_from_slice(b"\r\n");
    input.append(&framed, spare);
    Ok(Some(framed.len()))
}

/// Appends the last chunk of a chunked body with `trailers` as its trailer section (RFC 9112
/// §7.1.2); returns the bytes appended.
pub(crate) fn last_chunk(
    trailers: Option<&http::HeaderMap>,
    input: &mut InBuf,
    spare: &Spare,
) -> usize {
    let mut last = b"0\r\n".to_vec();
    for (name, value) in trailers.into_iter().flatten() {
        crate::http1::field(&mut last, name.as_str().as_bytes(), value.as_bytes());
    }
    last.extend_from_slice(b"\r\n");
    input.append(&last, spare);
    last.len()
}
