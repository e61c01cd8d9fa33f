//! Byte tunnel for upgraded connections (after a 101): copies both ways, passing each side's
//! end of stream on as a half-close, until both directions are done.
//!
//! Bounded in time like everything else: a tunnel in which neither side sent a byte for the
//! tunnel timeout is closed (HAProxy's `timeout tunnel`), and a write that a peer does not
//! take within the body timeout (it stopped reading) ends the tunnel instead of pinning the
//! connection and its buffers forever. Idleness is watched by a separate timer rather than by
//! timing out reads: a cancelled read on the provided-buffer ring could lose bytes that arrive
//! as it is cancelled, and the tunnel must never drop a byte it keeps going after.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncReadManaged, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::{Either, select};

use crate::core::Core;
use crate::io::InBuf;
use crate::timer::{Deadline, Elapsed};
use crate::transport::Transport;

/// Copies `a → b` and `b → a` until both have ended, one fails, a write stalls past the body
/// timeout, or both sides are silent for the tunnel timeout.
pub(crate) async fn copy_both(core: &Core, a: &Transport, b: &Transport) {
    let activity = Cell::new(core.wheel.now());
    let (da, db) = (Rc::new(Deadline::default()), Rc::new(Deadline::default()));
    let both = async {
        let left = std::pin::pin!(copy(core, &da, &activity, a, b));
        let right = std::pin::pin!(copy(core, &db, &activity, b, a));
        match select(left, right).await {
            // One direction ended cleanly (half-close passed on): the other goes on.
            Either::Left((Ok(()), rest)) => drop(rest.await),
            Either::Right((Ok(()), rest)) => drop(rest.await),
            // A failure or a stalled write ends both.
            _ => {}
        }
    };
    let idle = watch_idle(core, &activity);
    let (both, idle) = (std::pin::pin!(both), std::pin::pin!(idle));
    if let Either::Right(((), _)) = select(both, idle).await {
        tracing::debug!("tunnel idle past the tunnel timeout; closed");
    }
}

/// Resolves once neither direction has moved a byte for the tunnel timeout.
async fn watch_idle(core: &Core, activity: &Cell<u64>) {
    let limit = core.settings.timeouts.tunnel;
    let d = Rc::new(Deadline::default());
    loop {
        let quiet = core.wheel.elapsed_since(activity.get());
        let Some(left) = limit.checked_sub(quiet).filter(|l| !l.is_zero()) else { return };
        let _ = core.wheel.timeout(&d, left, std::future::pending::<()>()).await;
    }
}

async fn copy(
    core: &Core,
    d: &Rc<Deadline>,
    activity: &Cell<u64>,
    from: &Transport,
    to: &Transport,
) -> io::Result<()> {
    match (from.plain(), to.plain()) {
        (Some(from), Some(to)) => copy_plain(core, d, activity, from, to).await,
        _ => Box::pin(copy_through(core, d, activity, from, to)).await,
    }
}

/// Copies through the transports' own reads and writes (a TLS side decrypts and encrypts).
async fn copy_through(
    core: &Core,
    d: &Rc<Deadline>,
    activity: &Cell<u64>,
    from: &Transport,
    to: &Transport,
) -> io::Result<()> {
    let mut input = InBuf::Empty;
    let mut out = Vec::new();
    let result = loop {
        match from.read(&mut input, &core.spare).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        activity.set(core.wheel.now());
        let bytes = input.bytes();
        out.extend_from_slice(bytes);
        let n = bytes.len();
        input.consume(n, &core.spare);
        match core.wheel.timeout(d, core.settings.timeouts.body, to.write(&mut out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Err(e),
            Err(Elapsed) => {
                break Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"));
            }
        }
        activity.set(core.wheel.now());
    };
    input.release(&core.spare);
    result?;
    to.shutdown().await
}

/// Copies between plain sockets, writing each ring buffer as it was read (no copy).
async fn copy_plain(
    core: &Core,
    d: &Rc<Deadline>,
    activity: &Cell<u64>,
    from: &TcpStream,
    to: &TcpStream,
) -> io::Result<()> {
    let stalled = || io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading");
    let body = core.settings.timeouts.body;
    let mut reader = from;
    let mut writer = to;
    let mut fallback: Vec<u8> = Vec::new();
    loop {
        match reader.read_managed(0).await {
            Ok(Some(buf)) => {
                activity.set(core.wheel.now());
                match core.wheel.timeout(d, body, writer.write_all(buf)).await {
                    Ok(BufResult(res, _)) => res?,
                    Err(Elapsed) => return Err(stalled()),
                }
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                fallback.clear();
                fallback.reserve(16 * 1024);
                let BufResult(res, buf) = reader.read(std::mem::take(&mut fallback)).await;
                fallback = buf;
                if res? == 0 {
                    break;
                }
                activity.set(core.wheel.now());
                match core
                    .wheel
                    .timeout(d, body, writer.write_all(std::mem::take(&mut fallback)))
                    .await
                {
                    Ok(BufResult(res, buf)) => {
                        fallback = buf;
                        res?;
                    }
                    Err(Elapsed) => return Err(stalled()),
                }
            }
            Err(e) => return Err(e),
        }
        activity.set(core.wheel.now());
    }
    writer.shutdown().await
}
