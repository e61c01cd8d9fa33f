//! Per-core state: settings, the timer wheel, buffer free list, upstream pool and the table
//! this core serves. One `Core` per runtime thread, shared by its tasks through `Rc`; nothing
//! here is touched by another thread, so there are no locks.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::http1::parse::Limits;
use crate::io::{BufferConfig, Spare};
use crate::mirror::Mirrors;
use crate::timer::Wheel;
use crate::upstream::{CoreTable, Pool};

/// Timeouts of a request's phases.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request to its complete head.
    pub request_header: Duration,
    /// Waiting for the next request on a kept-alive client connection.
    pub keep_alive: Duration,
    /// Establishing an upstream connection.
    pub connect: Duration,
    /// Waiting for the upstream's response head, and between reads of its body.
    pub upstream: Duration,
    /// Between reads of a request body, and for each write to a peer.
    pub body: Duration,
    /// An upgraded connection (WebSocket, after a 101) in which neither side sent a byte.
    pub tunnel: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_header: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
            connect: Duration::from_secs(5),
            upstream: Duration::from_secs(60),
            body: Duration::from_secs(60),
            tunnel: Duration::from_secs(3600),
        }
    }
}

/// Settings shared by all cores.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Parsing limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Address to bind for table ports that name none.
    pub bind_address: IpAddr,
    /// Listen backlog.
    pub backlog: i32,
    /// Idle upstream connections kept per endpoint and core.
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle: Duration,
    /// Buffer ring and free list.
    pub buffers: BufferConfig,
    /// Proxies in front of lb whose forwarding fields are trusted (Envoy's
    /// `xff_num_trusted_hops`): 0 at the edge, where a client's X-Forwarded-* and `Forwarded`
    /// are replaced; more, and they are kept and extended.
    pub trusted_hops: u32,
    /// Most client connections of the process (`None`: derived from the descriptor limit,
    /// [`crate::io::max_connections`]).
    pub max_connections: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            backlog: 1024,
            pool_max_idle: 128,
            pool_idle: Duration::from_secs(30),
            buffers: BufferConfig::default(),
            max_connections: None,
            trusted_hops: 0,
        }
    }
}

/// One core's state.
#[derive(Debug)]
pub struct Core {
    /// Core index (slot in the applied file).
    pub id: usize,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Timer wheel.
    pub wheel: Rc<Wheel>,
    /// Heap buffer free list.
    pub spare: Spare,
    /// Idle upstream connections.
    pub pool: RefCell<Pool>,
    /// Request mirroring (copies in flight, sampling).
    pub mirrors: Mirrors,
    /// Exchanges in progress on this core.
    pub busy: Cell<usize>,
    /// Client connections open on this core.
    pub conns: Cell<usize>,
    /// The most it accepts: its share of `--max-connections`.
    pub max_conns: usize,
    /// Wheel tick of the last "connection limit reached" log line (0: never).
    pub full_logged: Cell<u64>,
    /// Shutting down: no new connections; each connection closes after its current exchange.
    pub draining: Cell<bool>,
    table: RefCell<Option<Rc<CoreTable>>>,
}

impl Core {
    /// A core without a table yet, accepting at most `max_conns` client connections.
    pub fn new(id: usize, settings: Arc<Settings>, max_conns: usize) -> Core {
        let wheel = Rc::new(Wheel::new());
        let idle_ticks = (settings.pool_idle.as_millis() / 10) as u64;
        Core {
            id,
            spare: Spare::new(&settings.buffers),
            pool: RefCell::new(Pool::new(settings.pool_max_idle, idle_ticks)),
            mirrors: Mirrors::new(id),
            busy: Cell::new(0),
            conns: Cell::new(0),
            max_conns,
            full_logged: Cell::new(0),
            draining: Cell::new(false),
            settings,
            wheel,
            table: RefCell::new(None),
        }
    }

    /// The table requests start on now. A request keeps the `Rc` it took, so it finishes on
    /// that table even when a new one is swapped in meanwhile.
    pub fn table(&self) -> Option<Rc<CoreTable>> {
        self.table.borrow().clone()
    }

    /// Swaps in a new table (between requests: only new requests see it).
    pub fn swap(&self, table: Rc<CoreTable>) {
        *self.table.borrow_mut() = Some(table);
    }
}
