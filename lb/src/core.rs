//! Per-core state: settings, the timer wheel, buffer free list, upstream pool and the table
//! this core serves. One `Core` per runtime thread, shared by its tasks through `Rc`; nothing
//! here is touched by another thread, so there are no locks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::CoreLog;
use crate::filters::mirror::Mirrors;
use crate::io::Spare;
use crate::metrics::CoreMetrics;
use crate::settings::Settings;
use crate::timer::Wheel;
use crate::upstream::CoreTable;
use crate::upstream::h2::H2Pool;
use crate::upstream::pool::Pool;

/// One core's state.
#[derive(Debug)]
pub struct Core {
    /// Core index (slot in the applied file).
    pub(crate) id: usize,
    /// Settings.
    pub(crate) settings: Arc<Settings>,
    /// Timer wheel.
    pub(crate) wheel: Rc<Wheel>,
    /// Heap buffer free list (shared with this core's TLS connections, which take their
    /// output buffers from it).
    pub(crate) spare: Rc<Spare>,
    /// Idle upstream connections.
    pub(crate) pool: RefCell<Pool>,
    /// Multiplexed HTTP/2 upstream connections.
    pub(crate) h2_pool: RefCell<H2Pool>,
    /// Request mirroring (copies in flight, sampling).
    pub(crate) mirrors: Mirrors,
    /// Exchanges in progress on this core.
    pub(crate) busy: Cell<usize>,
    /// Client connections open on this core.
    pub(crate) conns: Cell<usize>,
    /// TLS handshakes in progress on this core (`--max-handshakes` caps them).
    pub(crate) handshakes: Cell<usize>,
    /// The most it accepts: its share of `--max-connections`.
    pub(crate) max_conns: usize,
    /// Wheel tick of the last "connection limit reached" log line (0: never).
    pub(crate) full_logged: Cell<u64>,
    /// Shutting down: no new connections; each connection closes after its current exchange.
    pub(crate) draining: Cell<bool>,
    /// This core's metrics (written here only; the admin thread reads them).
    pub(crate) metrics: Arc<CoreMetrics>,
    /// This core's access log and request-id state (`None`: neither logs nor ids).
    pub(crate) log: Option<CoreLog>,
    table: RefCell<Option<Rc<CoreTable>>>,
}

impl Core {
    /// A core without a table yet, accepting at most `max_conns` client connections.
    pub fn new(id: usize, settings: Arc<Settings>, max_conns: usize) -> Core {
        Core::with_metrics(id, settings, max_conns, Arc::new(CoreMetrics::new()))
    }

    /// [`Core::new`], recording into `metrics`.
    pub(crate) fn with_metrics(
        id: usize,
        settings: Arc<Settings>,
        max_conns: usize,
        metrics: Arc<CoreMetrics>,
    ) -> Core {
        let wheel = Rc::new(Wheel::new());
        let idle_ticks = (settings.pool_idle.as_millis() / 10) as u64;
        let spare = Rc::new(Spare::new(&settings.buffers));
        Core {
            id,
            h2_pool: RefCell::new(H2Pool::new(Rc::clone(&spare), settings.h2)),
            mirrors: Mirrors::new(id, Rc::clone(&spare)),
            spare,
            pool: RefCell::new(Pool::new(settings.pool_max_idle, idle_ticks)),
            busy: Cell::new(0),
            conns: Cell::new(0),
            handshakes: Cell::new(0),
            max_conns,
            full_logged: Cell::new(0),
            draining: Cell::new(false),
            metrics,
            log: None,
            settings,
            wheel,
            table: RefCell::new(None),
        }
    }

    /// The table requests start on now. A request keeps the `Rc` it took, so it finishes on
    /// that table even when a new one is swapped in meanwhile.
    pub(crate) fn table(&self) -> Option<Rc<CoreTable>> {
        self.table.borrow().clone()
    }

    /// With `log` as this core's access log.
    pub(crate) fn with_log(mut self, log: Option<CoreLog>) -> Core {
        self.log = log;
        self
    }

    /// How long an upstream connection may sit idle, in wheel ticks.
    pub(crate) fn pool_idle_ticks(&self) -> u64 {
        (self.settings.pool_idle.as_millis() / 10) as u64
    }

    /// Swaps in a new table (between requests: only new requests see it).
    pub(crate) fn swap(&self, table: Rc<CoreTable>) {
        self.metrics.generation.set(table.router.generation());
        self.metrics.swaps.inc();
        *self.table.borrow_mut() = Some(table);
    }

    /// Copies the state this core keeps in `Cell`s into its metrics (gauges the admin thread
    /// reads; every 100 ms, off the request path).
    pub(crate) fn publish_gauges(&self) {
        let m = &self.metrics;
        m.connections_active.set(self.conns.get() as u64);
        m.requests_active.set(self.busy.get() as u64);
        m.draining.set(u64::from(self.draining.get()));
        m.ring_empty.set(self.spare.ring_empty.get());
        m.mirrors_dropped.set(self.mirrors.dropped.get());
        if let Some(log) = &self.log {
            log.tick();
            m.access_log_written.set(log.written.get());
            m.access_log_dropped.set(log.dropped.get());
        }
    }
}
