//! lb's metrics: recorded by each core in structures of its own, read by the admin thread at
//! scrape time.
//!
//! The request path never hashes a label, takes a lock or does an atomic read-modify-write
//! another core also does: every [`Counter`] has one writer (the core that owns it), which adds
//! with a plain load and store; the admin thread only loads. Series are indexed by *slots*:
//! the table thread gives every listener, route rule and Service of a table generation a
//! stable slot by name ([`Names`]), so a counter survives table swaps that renumber the
//! table, and a request finds its slot by the compiled index it already has
//! ([`Labels`]). Per route rule and per Service series are opt-in (`--metrics-routes`,
//! `--metrics-backends`): with 5,000 routes the default exposition has a few dozen series per
//! listener plus the process-wide ones. Rendering is `render`.

// The one lock here (`Names`) is taken by the table thread and the admin thread, never by a
// core: a request finds its slots in the `Labels` of the table it holds.
#![allow(clippy::disallowed_types, reason = "the names lock is off every core")]

mod render;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use table::Router;

use crate::clock::{self, Stamp};

pub(crate) use render::{Exposition, render};

/// A counter (or gauge) with a single writer: a load and a store, no lock prefix.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning thread may call this).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Sets a gauge (only the owning thread may call this).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the duration histogram's buckets, microseconds (the last bucket is +Inf).
pub(crate) const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A duration histogram (buckets not cumulative here; the renderer sums them).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [Counter; BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    pub(crate) fn observe(&self, us: u64) {
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.inc();
        }
        self.sum_us.add(us);
    }
}

/// Response status classes: index 0 is "none" (no response was sent: the client left, or the
/// head never completed and there was nobody to answer), 1–5 are 1xx–5xx.
pub(crate) const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The class index of `status` (0: none).
#[inline]
pub(crate) fn class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// Traffic of a listener (or, opt-in, a route rule).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub requests: Counter,
    pub responses: [Counter; CLASSES.len()],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub duration: Histogram,
}

/// What happened to the attempts sent to upstreams (all, or one Service's).
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    /// Attempts: a request sent (or tried) on a connection.
    pub attempts: Counter,
    pub connect_failures: Counter,
    pub timeouts: Counter,
    /// Closed or reset before the response was complete.
    pub resets: Counter,
    pub retries: Counter,
    /// An idle pooled connection (or a multiplexed one) was used.
    pub pool_hits: Counter,
    /// A new connection was opened.
    pub pool_misses: Counter,
}

/// TLS handshake outcomes.
#[derive(Debug, Default)]
pub(crate) struct Tls {
    pub handshakes: Counter,
    pub resumed: Counter,
    /// Failures by [`TLS_FAILURES`] reason.
    pub failures: [Counter; TLS_FAILURES.len()],
}

/// Reasons a TLS handshake failed: the peer broke the protocol or offered nothing acceptable (a
/// TLS alert was sent), the connection ended or failed, plain HTTP sent to a TLS port, the
/// handshake timeout, the core's cap on handshakes in flight, a port without a usable
/// configuration.
pub(crate) const TLS_FAILURES: [&str; 6] =
    ["error", "closed", "plain_http", "timeout", "overload", "unconfigured"];

/// Index of a [`TLS_FAILURES`] reason.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TlsFailure {
    Error,
    Closed,
    PlainHttp,
    Timeout,
    Overload,
    Unconfigured,
}

impl Tls {
    pub(crate) fn failed(&self, why: TlsFailure) {
        if let Some(c) = self.failures.get(why as usize) {
            c.inc();
        }
    }
}

/// Slots per segment of a [`Slots`] array.
const SEGMENT: usize = 64;
/// Segments per [`Slots`] array: 65,536 slots per dimension at most (more names than that,
/// alive at once, are not counted; `slots_exhausted` says so).
const SEGMENTS: usize = 1024;

/// Per-slot values, allocated a segment at a time as slots are handed out and never moved,
/// so the admin thread can read while the owning core writes.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    segments: Box<[OnceLock<Box<[T]>>]>,
}

impl<T: Default> Slots<T> {
    fn new() -> Slots<T> {
        Slots { segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect() }
    }

    /// The values of `slot`, if its segment exists.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        let slot = slot as usize;
        self.segments.get(slot / SEGMENT)?.get()?.get(slot % SEGMENT)
    }

    /// Zeroes `slots` with `reset` (slots handed to a new name; the owning core).
    fn zero(&self, slots: &[u32], reset: fn(&T)) {
        for &s in slots {
            if let Some(t) = self.get(s) {
                reset(t);
            }
        }
    }

    /// Makes sure slots `0..count` exist (the owning core, at a table swap).
    fn ensure(&self, count: u32) {
        let needed = (count as usize).div_ceil(SEGMENT).min(SEGMENTS);
        for segment in self.segments.iter().take(needed) {
            segment.get_or_init(|| (0..SEGMENT).map(|_| T::default()).collect());
        }
    }
}

/// One core's metrics. Written only by that core; read by the admin thread.
#[derive(Debug)]
pub(crate) struct CoreMetrics {
    pub listeners: Slots<Traffic>,
    /// Requests no listener took (no table, no port, a Host no listener names, a head that
    /// never completed).
    pub unmatched: Traffic,
    pub routes: Slots<Traffic>,
    pub backends: Slots<Upstream>,
    pub upstream: Upstream,
    pub tls: Tls,
    pub connections_accepted: Counter,
    /// Gauge.
    pub connections_active: Counter,
    /// Gauge: exchanges in progress.
    pub requests_active: Counter,
    pub h2_connections: Counter,
    pub h2_streams: Counter,
    /// Connections sent GOAWAY ENHANCE_YOUR_CALM (rapid reset).
    pub h2_abusive: Counter,
    /// Gauge: the table generation this core serves.
    pub generation: Counter,
    pub swaps: Counter,
    /// Reads that found the provided-buffer ring empty and went to a heap buffer.
    pub ring_empty: Counter,
    pub mirrors_dropped: Counter,
    pub access_log_written: Counter,
    /// Records dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Gauge: 1 while draining.
    pub draining: Counter,
}

impl CoreMetrics {
    pub(crate) fn new() -> CoreMetrics {
        CoreMetrics {
            listeners: Slots::new(),
            unmatched: Traffic::default(),
            routes: Slots::new(),
            backends: Slots::new(),
            upstream: Upstream::default(),
            tls: Tls::default(),
            connections_accepted: Counter::default(),
            connections_active: Counter::default(),
            requests_active: Counter::default(),
            h2_connections: Counter::default(),
            h2_streams: Counter::default(),
            h2_abusive: Counter::default(),
            generation: Counter::default(),
            swaps: Counter::default(),
            ring_empty: Counter::default(),
            mirrors_dropped: Counter::default(),
            access_log_written: Counter::default(),
            access_log_dropped: Counter::default(),
            draining: Counter::default(),
        }
    }

    /// Takes a generation's labels in (at its swap, on the owning core): slots exist for every
    /// name, and slots handed to a new name start from zero.
    pub(crate) fn adopt(&self, labels: &Labels) {
        self.listeners.ensure(labels.slot_counts[0]);
        self.routes.ensure(labels.slot_counts[1]);
        self.backends.ensure(labels.slot_counts[2]);
        self.listeners.zero(&labels.reused[0], Traffic::reset);
        self.routes.zero(&labels.reused[1], Traffic::reset);
        self.backends.zero(&labels.reused[2], Upstream::reset);
    }
}

impl Traffic {
    #[inline]
    fn record(&self, r: &Record, class: usize, us: u64) {
        if let Some(c) = self.responses.get(class) {
            c.inc();
        }
        self.bytes_in.add(r.bytes_in.get());
        self.bytes_out.add(r.bytes_out.get());
        self.duration.observe(us);
    }

    fn reset(&self) {
        self.requests.set(0);
        for c in self.responses.iter().chain([&self.bytes_in, &self.bytes_out]) {
            c.set(0);
        }
        for b in self.duration.buckets.iter().chain([&self.duration.sum_us]) {
            b.set(0);
        }
    }
}

impl Upstream {
    fn counters(&self) -> [&Counter; 7] {
        [
            &self.attempts,
            &self.connect_failures,
            &self.timeouts,
            &self.resets,
            &self.retries,
            &self.pool_hits,
            &self.pool_misses,
        ]
    }

    fn reset(&self) {
        for c in self.counters() {
            c.set(0);
        }
    }
}

/// One exchange's facts, gathered as it goes and recorded once at its end
/// ([`CoreMetrics::record`]).
#[derive(Debug)]
pub(crate) struct Record {
    /// When the exchange began (`clock::now`).
    pub started: Stamp,
    /// Slots ([`NO_SLOT`]: none).
    pub listener: Cell<u32>,
    pub route: Cell<u32>,
    pub backend: Cell<u32>,
    /// The status sent to the client (0: none).
    pub status: Cell<u16>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Access log only: response flags (`access_log::flags`).
    pub flags: Cell<u16>,
    /// Access log only: 0 HTTP/1.0, 1 HTTP/1.1, 2 HTTP/2.
    pub protocol: Cell<u8>,
    /// Access log only: the endpoint of the last attempt.
    pub upstream: Cell<Option<std::net::SocketAddr>>,
    /// Access log only: µs from the last attempt's start to its response head (`u64::MAX`:
    /// none).
    pub upstream_us: Cell<u64>,
    /// Access log only: the matched rule's index (`u16::MAX`: none).
    pub rule: Cell<u16>,
    /// Access log only: the record's strings (`access_log::put_text`), empty when not logging.
    pub text: std::cell::RefCell<Vec<u8>>,
}

impl Record {
    /// Adds a response flag (`access_log::flags`).
    pub(crate) fn flag(&self, f: u16) {
        self.flags.set(self.flags.get() | f);
    }

    pub(crate) fn start() -> Record {
        Record {
            started: clock::now(),
            listener: Cell::new(NO_SLOT),
            route: Cell::new(NO_SLOT),
            backend: Cell::new(NO_SLOT),
            status: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            flags: Cell::new(0),
            protocol: Cell::new(1),
            upstream: Cell::new(None),
            upstream_us: Cell::new(u64::MAX),
            rule: Cell::new(u16::MAX),
            text: std::cell::RefCell::new(Vec::new()),
        }
    }
}

impl CoreMetrics {
    /// Counts a finished exchange.
    /// Counts a finished exchange that took `elapsed` (read once by the caller, which the
    /// access log shares).
    pub(crate) fn record(&self, r: &Record, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let class = class(r.status.get());
        let listener = self.listeners.get(r.listener.get()).unwrap_or(&self.unmatched);
        listener.record(r, class, us);
        if let Some(route) = self.routes.get(r.route.get()) {
            route.record(r, class, us);
        }
    }

    /// The upstream counters an attempt to Service slot `backend` counts in: all upstreams',
    /// and the Service's own when per-backend series are on.
    #[inline]
    pub(crate) fn upstream(&self, backend: u32, f: impl Fn(&Upstream)) {
        f(&self.upstream);
        if let Some(b) = self.backends.get(backend) {
            f(b);
        }
    }
}

/// Process-wide figures the table thread records (the only writer).
#[derive(Debug, Default)]
pub(crate) struct TableMetrics {
    pub validated: Counter,
    pub refused: Counter,
    pub last_size: Counter,
}

/// Which series a deployment wants beyond the default ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detail {
    /// Series per route rule (requests, responses, bytes, duration).
    pub routes: bool,
    /// Series per Service (upstream attempts and failures).
    pub backends: bool,
}

/// A slot that names no series (a request no listener took).
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// Slots of one table generation, by the table's own indexes.
#[derive(Debug, Default)]
pub(crate) struct Labels {
    /// Per listener index.
    pub listener: Box<[u32]>,
    /// Per action index ([`NO_SLOT`] unless route series are on).
    pub route: Box<[u32]>,
    /// Per Service index ([`NO_SLOT`] unless backend series are on).
    pub backend: Box<[u32]>,
    /// Slots in use per dimension (listeners, routes, backends).
    slot_counts: [u32; 3],
    /// Slots handed to a name for the first time since another name had them.
    reused: [Box<[u32]>; 3],
}

impl Labels {
    #[inline]
    pub(crate) fn listener(&self, index: u32) -> u32 {
        self.listener.get(index as usize).copied().unwrap_or(NO_SLOT)
    }

    #[inline]
    pub(crate) fn route(&self, action: u32) -> u32 {
        self.route.get(action as usize).copied().unwrap_or(NO_SLOT)
    }

    #[inline]
    pub(crate) fn backend(&self, service: u32) -> u32 {
        self.backend.get(service as usize).copied().unwrap_or(NO_SLOT)
    }
}

/// How long a name that left the table keeps its slot (so requests still finishing on the old
/// table count where they belong) before another name may have it.
const RETIRE_AFTER: Duration = Duration::from_secs(60);

/// Names of one dimension and their slots.
#[derive(Debug)]
struct Dim<K> {
    slot_of: HashMap<K, u32>,
    /// Per slot: its name while it has one, and the last generation (`epoch`) that had it.
    names: Vec<Option<(K, u64)>>,
    /// Generations labelled so far; a name is live when its slot's epoch is this one.
    epoch: u64,
    /// Slots of names that left the table, with when they left.
    retiring: VecDeque<(u32, Instant)>,
    free: Vec<u32>,
}

impl<K: Hash + Eq + Clone> Dim<K> {
    fn new() -> Dim<K> {
        Dim {
            slot_of: HashMap::new(),
            names: Vec::new(),
            epoch: 0,
            retiring: VecDeque::new(),
            free: Vec::new(),
        }
    }

    /// Slots for `keys` (in table order; `None`: not counted), with the slots given to a new
    /// name after another had them.
    fn assign(
        &mut self,
        keys: impl Iterator<Item = Option<K>>,
        now: Instant,
    ) -> (Box<[u32]>, Box<[u32]>) {
        let previous = self.epoch;
        self.epoch += 1;
        while let Some(&(slot, since)) = self.retiring.front() {
            if now.duration_since(since) < RETIRE_AFTER {
                break;
            }
            self.retiring.pop_front();
            // Freed unless its name came back to the table meanwhile.
            if let Some(entry) = self.names.get_mut(slot as usize)
                && entry.as_ref().is_some_and(|(_, seen)| *seen < previous)
                && let Some((key, _)) = entry.take()
            {
                self.slot_of.remove(&key);
                self.free.push(slot);
            }
        }
        let epoch = self.epoch;
        let mut reused = Vec::new();
        let slots = keys
            .map(|key| {
                let Some(key) = key else { return NO_SLOT };
                let slot = match self.slot_of.get(&key) {
                    Some(&s) => s,
                    None => {
                        let s = match self.free.pop() {
                            Some(s) => {
                                reused.push(s);
                                s
                            }
                            None if self.names.len() < SEGMENT * SEGMENTS => {
                                self.names.push(None);
                                (self.names.len() - 1) as u32
                            }
                            None => return NO_SLOT,
                        };
                        self.slot_of.insert(key.clone(), s);
                        s
                    }
                };
                if let Some(entry) = self.names.get_mut(slot as usize) {
                    *entry = Some((key, epoch));
                }
                slot
            })
            .collect();
        // Names the previous generation had and this one has not start retiring (once each).
        for (slot, entry) in self.names.iter().enumerate() {
            if matches!(entry, Some((_, seen)) if *seen == previous && previous > 0) {
                self.retiring.push_back((slot as u32, now));
            }
        }
        (slots, reused.into())
    }

    /// The live names with their slots.
    fn live(&self) -> impl Iterator<Item = (u32, &K)> {
        self.names.iter().enumerate().filter_map(|(slot, e)| match e {
            Some((key, seen)) if *seen == self.epoch => Some((slot as u32, key)),
            _ => None,
        })
    }
}

/// Every name lb has given a slot, kept by the table thread, read by the admin thread.
#[derive(Debug)]
pub(crate) struct Names {
    detail: Detail,
    listeners: Dim<String>,
    routes: Dim<(String, u32)>,
    backends: Dim<String>,
}

impl Names {
    pub(crate) fn new(detail: Detail) -> Names {
        Names { detail, listeners: Dim::new(), routes: Dim::new(), backends: Dim::new() }
    }

    /// Shared by the table thread (which labels generations) and the admin thread.
    pub(crate) fn shared(detail: Detail) -> Arc<Mutex<Names>> {
        Arc::new(Mutex::new(Names::new(detail)))
    }

    /// Slots for a new generation's listeners, rules and Services.
    pub(crate) fn label(&mut self, router: &Router) -> Labels {
        let table = router.table();
        let now = Instant::now();
        let (listener, l_reused) = self
            .listeners
            .assign(table.listeners.iter().map(|l| Some(l.name.as_str().to_owned())), now);
        let routes = self.detail.routes;
        // An action without a route is a hole config-sync left patching the table: no
        // match leads there, it gets no series.
        let (route, r_reused) = self.routes.assign(
            router.actions().map(|a| {
                let named = routes && !a.route.is_empty();
                named.then(|| (a.route.as_str().to_owned(), a.rule.to_native()))
            }),
            now,
        );
        let backends = self.detail.backends;
        let (backend, b_reused) = self
            .backends
            .assign(router.services().map(|s| backends.then(|| s.name.as_str().to_owned())), now);
        Labels {
            listener,
            route,
            backend,
            slot_counts: [
                self.listeners.names.len() as u32,
                self.routes.names.len() as u32,
                self.backends.names.len() as u32,
            ],
            reused: [l_reused, r_reused, b_reused],
        }
    }
}

/// What the admin thread reads: every core's metrics, the names, the table thread's figures.
#[derive(Debug)]
pub(crate) struct Registry {
    pub cores: Vec<Arc<CoreMetrics>>,
    pub names: Arc<Mutex<Names>>,
    pub table: Arc<TableMetrics>,
    pub started: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_buckets_and_classes() {
        let h = Histogram::default();
        for us in [50, 100, 101, 1_000_000, 20_000_000] {
            h.observe(us);
        }
        let counts: Vec<u64> = h.buckets.iter().map(Counter::get).collect();
        assert_eq!(counts[0], 2, "≤ 100 µs");
        assert_eq!(counts[1], 1, "≤ 250 µs");
        assert_eq!(counts[12], 1, "≤ 1 s");
        assert_eq!(counts[16], 1, "+Inf");
        assert_eq!(h.sum_us.get(), 50 + 100 + 101 + 1_000_000 + 20_000_000);
        assert_eq!(class(204), 2);
        assert_eq!(class(101), 1);
        assert_eq!(class(599), 5);
        assert_eq!(class(0), 0);
        assert_eq!(class(600), 0);
    }

    #[test]
    fn a_name_keeps_its_slot_across_generations_and_a_freed_slot_starts_from_zero() {
        let mut dim: Dim<String> = Dim::new();
        let t0 = Instant::now();
        let k = |s: &str| Some(s.to_owned());
        let (a, _) = dim.assign([k("a"), k("b")].into_iter(), t0);
        assert_eq!(&*a, &[0, 1]);
        // Renumbered in the table: same slots by name; a new name gets a new slot.
        let (b, reused) = dim.assign([k("c"), k("b"), k("a")].into_iter(), t0);
        assert_eq!(&*b, &[2, 1, 0]);
        assert!(reused.is_empty());
        // "c" leaves; its slot is kept while requests on older tables may still finish…
        let (c, _) = dim.assign([k("a"), k("b")].into_iter(), t0 + Duration::from_secs(1));
        assert_eq!(&*c, &[0, 1]);
        assert_eq!(dim.live().count(), 2);
        let (d, reused) =
            dim.assign([k("a"), k("b"), k("d")].into_iter(), t0 + Duration::from_secs(2));
        assert_eq!(&*d, &[0, 1, 3]);
        assert!(reused.is_empty());
        // …and freed after RETIRE_AFTER: the next new name reuses it, reported for zeroing.
        let later = t0 + RETIRE_AFTER + Duration::from_secs(5);
        let (e, reused) = dim.assign([k("a"), k("b"), k("d"), k("e")].into_iter(), later);
        assert_eq!(&*e, &[0, 1, 3, 2]);
        assert_eq!(&*reused, &[2]);
        // A name that comes back before it is freed keeps its slot.
        let (f, _) = dim.assign([k("a")].into_iter(), later);
        assert_eq!(&*f, &[0]);
        let (g, reused) = dim.assign([k("a"), k("b")].into_iter(), later + Duration::from_secs(1));
        assert_eq!(&*g, &[0, 1]);
        assert!(reused.is_empty());
        // Not counted: no slot.
        let (h, _) = dim.assign([None, k("a")].into_iter(), later);
        assert_eq!(&*h, &[NO_SLOT, 0]);
        // A name whose retirement falls due after it came back keeps its slot.
        let back = later + Duration::from_secs(2);
        dim.assign([k("a"), k("b")].into_iter(), back);
        let due = back + RETIRE_AFTER + Duration::from_secs(1);
        let (i, reused) = dim.assign([k("a"), k("b"), k("z")].into_iter(), due);
        assert_eq!(&i[..2], &[0, 1]);
        assert!(!reused.contains(&1), "b's slot is b's");
        assert!(dim.live().any(|(slot, key)| slot == 1 && key == "b"));
    }

    #[test]
    fn slots_are_allocated_by_segment_and_read_back() {
        let m = CoreMetrics::new();
        assert!(m.listeners.get(0).is_none());
        m.listeners.ensure(65);
        m.listeners.get(64).expect("second segment").requests.add(3);
        assert_eq!(m.listeners.get(64).map(|t| t.requests.get()), Some(3));
        assert!(m.listeners.get(128).is_none());
    }
}
