//! One upstream connection for one attempt: an idle one from this core's pool, or a new one
//! opened within the connect timeout. Never loops: the caller's retry budget
//! (`upstream::retry`) decides what a failure leads to.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tracing::debug;

use super::h2::H2Pool;
use super::pool::{Key, Pool, Protocol};
use crate::error::{Phase, ProxyError, Side, timed};
use crate::timer::{Deadline, Wheel};
use crate::transport::Transport;

/// A connection for an attempt, and whether it came from the pool.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The connection.
    pub transport: Transport,
    /// Reused from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

/// A connection for `key`: from the core's pool unless `fresh_only`, else connected within
/// `limit`. For HTTP/2 keys, a stream on a multiplexed connection (`upstream::h2`).
pub(crate) async fn open(
    (pool, h2_pool): (&RefCell<Pool>, &RefCell<H2Pool>),
    (wheel, deadline): (&Wheel, &Rc<Deadline>),
    limit: Duration,
    key: Key,
    fresh_only: bool,
) -> Result<Conn, ProxyError> {
    if key.protocol == Protocol::H2c {
        let (transport, reused) =
            super::h2::open(h2_pool, (wheel, deadline), limit, key, fresh_only).await?;
        return Ok(Conn { transport, reused });
    }
    if !fresh_only && let Some(transport) = pool.borrow_mut().take(key, wheel.now()) {
        return Ok(Conn { transport, reused: true });
    }
    let side = (Side::Upstream, Phase::Connect);
    match timed(wheel, deadline, limit, side, crate::io::connect(key.addr)).await {
        Ok(stream) => Ok(Conn { transport: Transport::Plain(stream), reused: false }),
        Err(e) => {
            debug!(addr = %key.addr, "{e}");
            Err(e)
        }
    }
}
