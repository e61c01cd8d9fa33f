//! Upstream choice and connection reuse, per core.
//!
//! `select`: a matched rule's weighted backends (smooth weighted round robin from the table
//! crate, with this core's counters), then round robin over the chosen Service's endpoints.
//! `pool`: idle keep-alive connections per endpoint. A connection goes back to the pool only
//! after a fully framed exchange (request sent whole, response read to its end, nothing
//! extra), and leaves it after an idle timeout or as soon as it is found not silent (a byte or
//! EOF while idle, checked at each reuse: `io::idle_clean`). No locks: everything here is one
//! core's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use compio::net::TcpStream;
use table::format::{ArchivedActionKind, ArchivedBackendTarget};
use table::{Router, Scratch};

/// One core's view of a table: the shared router plus this core's mutable selection state.
#[derive(Debug)]
pub struct CoreTable {
    /// The validated table, shared read-only by all cores.
    pub router: Arc<Router>,
    /// Weighted-round-robin counters (one per weighted backend of the table).
    wrr: RefCell<Vec<i64>>,
    /// Round-robin cursor per service.
    rr: RefCell<Vec<u32>>,
    /// Regex caches for lookups.
    pub scratch: RefCell<Scratch>,
}

/// Where a matched rule sends this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A service (index into the table's services) and the endpoint cursor to start from.
    Service {
        /// Service index.
        service: u32,
        /// Round-robin position of the first endpoint to try.
        cursor: u32,
        /// Index of the chosen backend within the action's backends.
        backend: u32,
    },
    /// Answer with this status.
    Status(u16),
}

impl CoreTable {
    /// This core's state for `router`.
    pub fn new(router: Arc<Router>) -> CoreTable {
        let t = router.table();
        let wrr = vec![0; t.wrr_slots.to_native() as usize];
        let rr = vec![0; t.services.len()];
        let scratch = router.scratch();
        CoreTable {
            router,
            wrr: RefCell::new(wrr),
            rr: RefCell::new(rr),
            scratch: RefCell::new(scratch),
        }
    }

    /// Picks the target for a matched action.
    pub fn select(&self, kind: &ArchivedActionKind) -> Target {
        match kind {
            ArchivedActionKind::Respond { status } => Target::Status(status.to_native()),
            // Answered before selection (`proxy::prepare`); never forwarded.
            ArchivedActionKind::Redirect { status, .. } => Target::Status(status.to_native()),
            ArchivedActionKind::Forward { backends, wrr_offset } => {
                let start = wrr_offset.to_native() as usize;
                let mut wrr = self.wrr.borrow_mut();
                let state = wrr.get_mut(start..start + backends.len()).unwrap_or(&mut []);
                let picked = table::select::pick_weighted(backends, state);
                match picked.and_then(|i| Some((i, backends.get(i)?))) {
                    // Every weight is 0: nothing may receive traffic.
                    None => Target::Status(500),
                    Some((backend, b)) => match &b.target {
                        ArchivedBackendTarget::Status(s) => Target::Status(s.to_native()),
                        ArchivedBackendTarget::Service(s) => {
                            let service = s.to_native();
                            let mut rr = self.rr.borrow_mut();
                            let cursor = rr.get(service as usize).copied().unwrap_or(0);
                            if let Some(c) = rr.get_mut(service as usize) {
                                *c = c.wrapping_add(1);
                            }
                            Target::Service { service, cursor, backend: backend as u32 }
                        }
                    },
                }
            }
        }
    }

    /// The next round-robin position for a service (mirrors pick their endpoint this way).
    pub fn next_cursor(&self, service: u32) -> u32 {
        let mut rr = self.rr.borrow_mut();
        let Some(c) = rr.get_mut(service as usize) else { return 0 };
        *c = c.wrapping_add(1);
        *c
    }

    /// The endpoint for `attempt` (0 = first try) of a service target; `None` when the service
    /// has no ready endpoints or every one has been tried.
    pub fn endpoint(&self, service: u32, cursor: u32, attempt: usize) -> Option<SocketAddr> {
        let svc = self.router.table().services.get(service as usize)?;
        let n = svc.endpoints.len();
        if n == 0 || attempt >= n {
            return None;
        }
        let i = (cursor as usize).wrapping_add(attempt) % n;
        svc.endpoints.get(i).map(|e| e.socket_addr())
    }

    /// Number of endpoints of a service.
    pub fn endpoint_count(&self, service: u32) -> usize {
        self.router.table().services.get(service as usize).map_or(0, |s| s.endpoints.len())
    }
}

/// Idle upstream connections of one core.
#[derive(Debug)]
pub struct Pool {
    idle: HashMap<SocketAddr, Vec<(TcpStream, u64)>, BuildHasherDefault<AddrHasher>>,
    max_per_endpoint: usize,
    idle_ticks: u64,
}

impl Pool {
    /// A pool keeping at most `max_per_endpoint` idle connections per endpoint for
    /// `idle_ticks` wheel ticks.
    pub fn new(max_per_endpoint: usize, idle_ticks: u64) -> Pool {
        Pool { idle: HashMap::default(), max_per_endpoint, idle_ticks }
    }

    /// An idle connection to `addr` that has not outlived the idle timeout and has stayed
    /// silent since its last exchange. A connection the upstream wrote to while idle (a stray
    /// response, a body after a HEAD answer) or closed is dropped here: reusing it would hand
    /// those bytes to the next client as its response.
    pub fn take(&mut self, addr: SocketAddr, now: u64) -> Option<TcpStream> {
        let list = self.idle.get_mut(&addr)?;
        while let Some((stream, since)) = list.pop() {
            if now.saturating_sub(since) > self.idle_ticks {
                // Too old: the upstream has likely closed it; older ones are further down.
                list.clear();
                break;
            }
            if crate::io::idle_clean(&stream) {
                return Some(stream);
            }
            tracing::debug!(%addr, "idle upstream connection received bytes or EOF; retired");
        }
        None
    }

    /// Keeps a connection for reuse.
    pub fn put(&mut self, addr: SocketAddr, stream: TcpStream, now: u64) {
        let list = self.idle.entry(addr).or_default();
        if list.len() < self.max_per_endpoint {
            list.push((stream, now));
        }
    }

    /// Drops connections to endpoints no longer in use and those past the idle timeout.
    pub fn prune(&mut self, now: u64, keep: impl Fn(&SocketAddr) -> bool) {
        let idle_ticks = self.idle_ticks;
        self.idle.retain(|addr, list| {
            list.retain(|(_, since)| now.saturating_sub(*since) <= idle_ticks);
            keep(addr) && !list.is_empty()
        });
    }
}

/// A small multiplicative hasher for socket addresses: the pool is probed on every request,
/// and std's SipHash costs more than the lookup itself for a key this small.
#[derive(Debug, Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
