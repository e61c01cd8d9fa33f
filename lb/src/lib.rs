//! lb: Sluice's data plane. One compio runtime (io_uring) per core on its own pinned thread,
//! a SO_REUSEPORT listener per core and port, HTTP/1.1 parsed in place, routing by lookup in
//! an immutable compiled table that a watcher thread swaps in whole.
//!
//! Flow of a request: `listener` (accept) → `conn` (read a head) → `http1::parse` → `router`
//! (table lookup) → `upstream` (select an endpoint, reuse a pooled connection) → `proxy`
//! (forward, relay) → back to `conn`.
//!
//! Why these boundaries: lb never links tokio or kube (config-sync's world), which CI checks;
//! everything runtime-specific sits in `io` behind a thin layer; per-core state (`core`) is
//! `Rc`/`RefCell` because nothing crosses threads except the table (`tables`), which arrives
//! as an `Arc` of an immutable router.

#![deny(unsafe_code)]

pub mod conn;
pub mod core;
pub mod cors;
pub mod error;
pub mod http1;
pub mod io;
pub mod listener;
pub mod mirror;
pub mod proxy;
pub mod redirect;
pub mod router;
pub mod tables;
pub mod timer;
pub mod tunnel;
pub mod upstream;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc::{UnboundedReceiver, unbounded};
use futures_util::StreamExt;
use table::Router;
use table::shm::{AppliedWriter, applied_path};
use tracing::{error, info, warn};

pub use crate::core::{Settings, Timeouts};

/// How lb runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared-memory table segment to read.
    pub table: PathBuf,
    /// CPUs to run a core on (one runtime thread each, pinned).
    pub cpus: Vec<usize>,
    /// Settings shared by all cores.
    pub settings: Settings,
}

/// Errors that stop lb at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// io_uring (or its provided-buffer rings) is not available.
    #[error(
        "io_uring is unavailable ({0}). lb needs Linux 6.x io_uring with provided buffers; in a \
         container, run with a seccomp profile that allows io_uring_setup, io_uring_enter and \
         io_uring_register"
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
    let settings = Arc::new(config.settings);
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut senders = Vec::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), std::io::Error>>();
    let mut threads = Vec::new();
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let (tx, rx) = unbounded::<Arc<Router>>();
        senders.push(tx);
        let settings = Arc::clone(&settings);
        let applied = Arc::clone(&applied);
        let started = started_tx.clone();
        let pin = core_ids.iter().copied().find(|c| c.id == cpu);
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
                let core = Rc::new(core::Core::new(index, settings));
                rt.block_on(core_main(core, rx, applied));
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
    tables::spawn_watcher(config.table, senders).map_err(Error::Thread)?;
    for t in threads {
        if t.join().is_err() {
            error!("a core thread panicked");
        }
    }
    Ok(())
}

/// A core's control task: takes each new table, swaps it in, brings the listeners in line and
/// reports the generation. Requests run in their own tasks meanwhile.
async fn core_main(
    core: Rc<core::Core>,
    mut tables: UnboundedReceiver<Arc<Router>>,
    applied: Arc<AppliedWriter>,
) {
    compio::runtime::spawn(Rc::clone(&core.wheel).run()).detach();
    let listeners = listener::Listeners::default();
    let mut current: Option<Arc<Router>> = None;
    let mut bind_failed = false;
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
                idle_ticks += 1;
                if !(bind_failed && idle_ticks.is_multiple_of(10)) {
                    continue;
                }
                current.clone()
            }
        };
        let Some(mut router) = next else { return };
        // Several tables queued: only the newest matters.
        while let Ok(newer) = tables.try_recv() {
            router = newer;
        }
        let generation = router.generation();
        if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &router)) {
            core.swap(Rc::new(upstream::CoreTable::new(Arc::clone(&router))));
            let table = router.table();
            let now = core.wheel.now();
            core.pool.borrow_mut().prune(now, |addr| {
                table.services.iter().any(|s| s.endpoints.iter().any(|e| e.socket_addr() == *addr))
            });
        }
        bind_failed = !listeners.reconcile(&core, &router).await;
        applied.set(core.id, generation);
        if core.id == 0 {
            info!(generation, "serving table");
        }
        current = Some(router);
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
