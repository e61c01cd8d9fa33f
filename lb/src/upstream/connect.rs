//! One upstream connection for one attempt: an idle one from this core's pool, or a new one
//! opened within the connect timeout. Never loops: the caller's retry budget
//! (`upstream::retry`) decides what a failure leads to.

use std::rc::Rc;

use tracing::debug;

use super::pool::Key;
use crate::core::Core;
use crate::error::{Phase, ProxyError, Side, timed};
use crate::timer::Deadline;
use crate::transport::Transport;

/// A connection for an attempt, and whether it came from the pool.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The connection.
    pub transport: Transport,
    /// Reused from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

/// A connection for `key`: pooled unless `fresh_only`, else connected now.
pub(crate) async fn open(
    core: &Core,
    deadline: &Rc<Deadline>,
    key: Key,
    fresh_only: bool,
) -> Result<Conn, ProxyError> {
    if !fresh_only && let Some(transport) = core.pool.borrow_mut().take(key, core.wheel.now()) {
        return Ok(Conn { transport, reused: true });
    }
    let limit = core.settings.timeouts.connect;
    let side = (Side::Upstream, Phase::Connect);
    match timed(&core.wheel, deadline, limit, side, crate::io::connect(key.addr)).await {
        Ok(stream) => Ok(Conn { transport: Transport::Plain(stream), reused: false }),
        Err(e) => {
            debug!(addr = %key.addr, "{e}");
            Err(e)
        }
    }
}
