//! lb: Sluice's data plane. One compio runtime (io_uring) per core on its own pinned thread,
//! a SO_REUSEPORT listener per core and port, HTTP/1.1 parsed in place, routing by lookup in
//! an immutable compiled table that a watcher thread swaps in whole.
//!
//! A connection is a **transport** (`transport`: plain TCP today, TLS next) carrying a
//! **protocol** (`conn` + `http1`: HTTP/1 today, HTTP/2 next), whose requests go through one
//! protocol-neutral **exchange** (`exchange`: route lookup, `filters`, backend selection) to an
//! **upstream** (`upstream`: select, pool, connect, retry), over which `proxy` forwards and
//! relays. Flow of a request: `listener` (accept) → `conn` (read a head) → `http1::parse` →
//! `exchange` → `upstream` → `proxy` → back to `conn`.
//!
//! Why these boundaries: lb never links tokio or kube (config-sync's world), which CI checks;
//! everything runtime-specific sits in `io` behind a thin layer; per-core state (`core`) is
//! `Rc`/`RefCell` because nothing crosses threads except the table (`tables`), which arrives
//! as an `Arc` of an immutable router.

#![deny(unsafe_code)]

// In the order a request meets them (rustfmt keeps this order: `reorder_modules = false`).
mod settings;
mod io;
mod timer;
mod clock;
mod transport;
mod tls;
mod listener;
mod h2io;
pub mod downstream;
pub mod conn;
pub mod http1;
mod http2;
mod fields;
mod exchange;
mod filters;
mod upstream;
mod proxy;
mod tunnel;
mod error;
pub mod core;
mod tables;
mod metrics;
pub mod admin;
mod access_log;
pub mod explain;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_channel::mpsc::{UnboundedReceiver, unbounded};
use futures_util::StreamExt;
use table::shm::{AppliedWriter, applied_path};
use tracing::{error, info, warn};

pub use crate::access_log::{LogConfig, LogTarget, RequestIds, TraceContext};
pub use crate::fields::{Edits, FieldList};
pub use crate::io::fix_mmap_threshold;
pub use crate::metrics::Detail as MetricsDetail;
pub use crate::settings::{BufferConfig, Limits, Underscores};
pub use crate::settings::{H2Limits, Settings, Timeouts, defaults};
pub use crate::timer::{Deadline, Elapsed, Wheel};

/// How lb runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared-memory table segment to read.
    pub table: PathBuf,
    /// CPUs to run a core on (one runtime thread each, pinned).
    pub cpus: Vec<usize>,
    /// Settings shared by all cores.
    pub settings: Settings,
    /// After SIGTERM or SIGINT: listeners close at once, requests in flight get this long to
    /// finish, then lb exits.
    pub drain: Duration,
    /// The admin listener (`/metrics`, `/ready`, `/config`); `None`: none.
    pub admin: Option<std::net::SocketAddr>,
    /// Opt-in metric series.
    pub metrics: metrics::Detail,
    /// Access logs, request ids and trace context.
    pub log: LogConfig,
}

/// What the main thread and the cores share about shutting down.
#[derive(Debug)]
struct Shutdown {
    /// Set on SIGTERM/SIGINT.
    draining: Arc<AtomicBool>,
    /// Exchanges in progress per core, as each core last reported (every 100 ms).
    busy: Vec<AtomicUsize>,
}

/// Errors that stop lb at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// io_uring (or its provided-buffer rings) is not available.
    #[error(
        "io_uring is unavailable ({0}). lb needs Linux 6.x io_uring with provided buffers. In a \
         container the runtime's default seccomp profile blocks it: run lb under Sluice's \
         profile (deploy/seccomp/sluice-io-uring.json, also printed by `sluice seccomp-profile`; \
         the DaemonSet in deploy/kubernetes installs it as Localhost profile \
         sluice/io-uring.json). Also check that the sysctl kernel.io_uring_disabled is 0"
    )]
    IoUring(std::io::Error),
    /// The applied file cannot be created.
    #[error("applied file {path}: {source}")]
    Applied {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not start.
    #[error("starting threads: {0}")]
    Thread(std::io::Error),
    /// No CPU to run on.
    #[error("no CPUs selected")]
    NoCpus,
}

/// Runs lb until the process is terminated.
pub fn run(config: Config) -> Result<(), Error> {
    if config.cpus.is_empty() {
        return Err(Error::NoCpus);
    }
    let applied_file = applied_path(&config.table);
    let applied = Arc::new(
        AppliedWriter::create(&applied_file, config.cpus.len())
            .map_err(|source| Error::Applied { path: applied_file.clone(), source })?,
    );
    enable_request_migration();
    // A report left by an earlier lb is stale: this one writes its own once it has bound.
    let _ = std::fs::remove_file(table::shm::listeners_path(&config.table));
    let nofile = io::raise_nofile();
    let max_connections = config.settings.max_connections.unwrap_or(io::max_connections(nofile));
    let per_core = max_connections.div_ceil(config.cpus.len()).max(1);
    info!(max_connections, nofile, "connection limit");
    let settings = Arc::new(config.settings);
    let shutdown = Arc::new(Shutdown {
        draining: Arc::new(AtomicBool::new(false)),
        busy: config.cpus.iter().map(|_| AtomicUsize::new(0)).collect(),
    });
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&shutdown.draining))
            .map_err(Error::Thread)?;
    }
    // Calibrated here, before any core runs a request.
    clock::init();
    let core_metrics: Vec<Arc<metrics::CoreMetrics>> =
        config.cpus.iter().map(|_| Arc::new(metrics::CoreMetrics::new())).collect();
    let mut logs = access_log::start(&config.log, config.cpus.len())
        .map_err(|e| Error::Thread(std::io::Error::other(format!("access log: {e}"))))?
        .map(|l| l.into_iter().map(Some).collect::<Vec<_>>());
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut senders = Vec::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), std::io::Error>>();
    let mut threads = Vec::new();
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let (tx, rx) = unbounded::<tables::Generation>();
        senders.push(tx);
        let settings = Arc::clone(&settings);
        let applied = Arc::clone(&applied);
        let shutdown = Arc::clone(&shutdown);
        let segment = config.table.clone();
        let started = started_tx.clone();
        let pin = core_ids.iter().copied().find(|c| c.id == cpu);
        let recorded = Arc::clone(&core_metrics[index]);
        let log = logs.as_mut().and_then(|l| l.get_mut(index)).and_then(Option::take);
        let thread = std::thread::Builder::new()
            .name(format!("lb-core-{index}"))
            .spawn(move || {
                match pin {
                    Some(id) if core_affinity::set_for_current(id) => {}
                    _ => warn!(cpu, "could not pin core {index} to CPU {cpu}; running unpinned"),
                }
                let rt = match io::runtime(&settings.buffers) {
                    Ok(rt) => {
                        let _ = started.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let core = core::Core::with_metrics(index, settings, per_core, recorded);
                let core = Rc::new(core.with_log(log));
                rt.block_on(core_main(core, rx, applied, shutdown, segment));
            })
            .map_err(Error::Thread)?;
        threads.push(thread);
    }
    drop(started_tx);
    for _ in 0..config.cpus.len() {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::IoUring(e)),
            Err(_) => {
                return Err(Error::Thread(std::io::Error::other("core thread died at start")));
            }
        }
    }
    info!(cores = config.cpus.len(), segment = %config.table.display(), "lb started; waiting for a table");
    let tls = tls::Shared::new(settings.h2.enabled)
        .map_err(|e| Error::Thread(std::io::Error::other(e)))?;
    let watched = tables::Metrics {
        names: metrics::Names::shared(config.metrics),
        table: Arc::default(),
        served: Arc::default(),
    };
    let registry = Arc::new(metrics::Registry {
        cores: core_metrics,
        names: Arc::clone(&watched.names),
        table: Arc::clone(&watched.table),
        started: std::time::Instant::now(),
    });
    if let Some(addr) = config.admin {
        let admin = admin::Admin {
            exposition: metrics::Exposition::new(Arc::clone(&registry)),
            registry,
            segment: config.table.clone(),
            draining: Arc::clone(&shutdown.draining),
            served: Arc::clone(&watched.served),
        };
        admin::spawn(addr, admin).map_err(Error::Thread)?;
    }
    tables::spawn_watcher(config.table, senders, Arc::clone(&applied), tls, watched)
        .map_err(Error::Thread)?;
    while !shutdown.draining.load(Ordering::Relaxed) {
        if threads.iter().any(std::thread::JoinHandle::is_finished) {
            error!("a core thread ended unexpectedly; exiting");
            return Err(Error::Thread(std::io::Error::other("core thread died")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drain(&shutdown, config.drain);
    Ok(())
}

/// Turns on `net.ipv4.tcp_migrate_req` (Linux 5.14+, per network namespace) when it is off:
/// a listener closed while others share its port (SO_REUSEPORT) then hands the connections
/// queued in its backlog to them instead of resetting them. That is what makes a binary
/// upgrade lossless: the new lb opens its listeners beside the old one's, the old one closes
/// its own on SIGTERM and drains, and nothing that was still in its accept queue is lost.
fn enable_request_migration() {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(KNOB) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(KNOB, "1") {
            Ok(()) => info!(
                "set net.ipv4.tcp_migrate_req=1: queued connections move to the next lb on upgrade"
            ),
            Err(e) => warn!(
                "net.ipv4.tcp_migrate_req is 0 and cannot be set ({e}); during a binary upgrade, \
                 connections queued on the old lb's listeners will be reset. Set it (sysctl, or \
                 the pod's securityContext.sysctls) to make upgrades lossless"
            ),
        },
        Err(e) => warn!("{KNOB}: {e}; binary upgrades may reset queued connections"),
    }
}

/// Waits until no core has an exchange in progress, or `limit` passed. The cores have closed
/// their listeners; idle keep-alive connections close when the process exits.
fn drain(shutdown: &Shutdown, limit: Duration) {
    info!(
        limit_s = limit.as_secs_f64(),
        "draining: listeners closed, finishing requests in flight"
    );
    let start = std::time::Instant::now();
    // Give every core a report after it saw the flag (they report each 100 ms).
    std::thread::sleep(Duration::from_millis(250));
    loop {
        let busy: usize = shutdown.busy.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        if busy == 0 {
            info!(after_ms = start.elapsed().as_millis() as u64, "drained; exiting");
            return;
        }
        if start.elapsed() >= limit {
            warn!(busy, "drain time over; exiting with requests in flight");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A core's control task: takes each new table, swaps it in, brings the listeners in line and
/// reports the generation. Requests run in their own tasks meanwhile.
async fn core_main(
    core: Rc<core::Core>,
    mut tables: UnboundedReceiver<tables::Generation>,
    applied: Arc<AppliedWriter>,
    shutdown: Arc<Shutdown>,
    listeners_of: PathBuf,
) {
    compio::runtime::spawn(Rc::clone(&core.wheel).run()).detach();
    let listeners = listener::Listeners::default();
    let mut current: Option<tables::Generation> = None;
    let mut bind_failed = false;
    let mut reported: Option<std::collections::BTreeMap<table::shm::BindKey, String>> = None;
    let mut idle_ticks: u64 = 0;
    loop {
        // Wake at least every 100 ms even when idle: a failed bind is retried each second, and
        // under valgrind (which runs one thread at a time and holds its lock across
        // io_uring_enter) the table watcher only gets to run when a core returns from the
        // kernel. Ten wake-ups a second cost nothing measurable.
        let tick = std::pin::pin!(compio::time::sleep(Duration::from_millis(100)));
        let next = match futures_util::future::select(tables.next(), tick).await {
            futures_util::future::Either::Left((t, _)) => t,
            futures_util::future::Either::Right(_) => {
                if let Some(slot) = shutdown.busy.get(core.id) {
                    slot.store(core.busy.get(), Ordering::Relaxed);
                }
                core.publish_gauges();
                if shutdown.draining.load(Ordering::Relaxed) && !core.draining.get() {
                    // Stop accepting; connections close after their current exchange.
                    core.draining.set(true);
                    listeners.close_all();
                    continue;
                }
                if core.draining.get() {
                    continue;
                }
                // Give back what a burst left behind once it is over.
                core.spare.tick();
                idle_ticks += 1;
                if !(bind_failed && idle_ticks.is_multiple_of(10)) {
                    continue;
                }
                current.clone()
            }
        };
        let Some(mut next) = next else { return };
        // Several tables queued: only the newest is served, but each one's metric slots are
        // taken in (a slot a skipped generation handed to a new name must start from zero).
        core.metrics.adopt(&next.labels);
        while let Ok(newer) = tables.try_recv() {
            core.metrics.adopt(&newer.labels);
            next = newer;
        }
        let router = Arc::clone(&next.router);
        let generation = router.generation();
        if current.as_ref().is_none_or(|c| !Arc::ptr_eq(&c.router, &router)) {
            let (tls, labels) = (Arc::clone(&next.tls), Arc::clone(&next.labels));
            core.swap(Rc::new(upstream::CoreTable::new(Arc::clone(&router), tls, labels)));
            let now = core.wheel.now();
            let in_table = |addr: &std::net::SocketAddr| {
                router.services().any(|s| s.endpoints.iter().any(|e| e.socket_addr() == *addr))
            };
            core.pool.borrow_mut().prune(now, in_table);
            core.h2_pool.borrow_mut().prune(now, core.pool_idle_ticks(), in_table);
        }
        let failures = listeners.reconcile(&core, &router).await;
        bind_failed = !failures.is_empty();
        if core.id == 0 && reported.as_ref() != Some(&failures) {
            let path = table::shm::listeners_path(&listeners_of);
            if let Err(e) = table::shm::write_bind_failures(&path, &failures) {
                warn!(file = %path.display(), "cannot report listeners: {e}");
            }
            reported = Some(failures);
        }
        applied.set(core.id, generation);
        if core.id == 0 {
            info!(generation, "serving table");
        }
        current = Some(next);
    }
}

/// Parses a CPU list: `all`, or ids and ranges such as `0,2-3`.
pub fn parse_cpus(spec: &str) -> Result<Vec<usize>, String> {
    if spec == "all" {
        let ids: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        return if ids.is_empty() { Ok(vec![0]) } else { Ok(ids) };
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CPU id or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(out)
}
