//! Table intake: one watcher thread per lb process (off every core's request path) waits on
//! the segment's futex, copies a new generation out, validates it completely and compiles its
//! regexes, then hands the same immutable router to every core. Each core swaps it in between
//! requests and reports the generation it serves in the applied file.
//!
//! A table that fails any check is logged and refused; cores keep the last good one. A missing
//! segment (config-sync not started yet, or gone) is waited for; lb keeps serving meanwhile.
//! A segment whose header became unreadable (truncated, scribbled on) is logged once and
//! waited out: config-sync repairs it by putting a fresh file in place, which is reopened.
//! The same thread rewrites the applied file from lb's own copy whenever someone damaged it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "locks shared with the admin thread, never taken by a core"
)]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use crate::metrics::{Labels, Names, TableMetrics};
use crate::tls;
use table::Router;
use table::shm::{AppliedWriter, ReadError, Repair, SegmentReader};
use tracing::{error, info, warn};

/// How often the watcher re-checks that the segment file is still the one it has open (its
/// futex wait times out at this interval; publications wake it at once).
const RECHECK: Duration = Duration::from_millis(100);

/// A validated table and what was built from it for every core: the TLS configuration of
/// its ports (certificates parsed once per process, not per core).
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    /// The table.
    pub router: Arc<Router>,
    /// Server configs of its TLS ports.
    pub tls: Arc<tls::Ports>,
    /// Metric slots of its listeners, rules and Services.
    pub labels: Arc<Labels>,
}

/// What the watcher records for metrics: the slot names, its own figures. Its locks are
/// taken by this thread and the admin thread only, never by a core.
#[derive(Debug, Clone)]
#[allow(clippy::disallowed_types, reason = "off every core")]
pub(crate) struct Metrics {
    pub names: Arc<Mutex<Names>>,
    pub table: Arc<TableMetrics>,
    /// The table last handed to the cores (the admin listener's `/config`).
    pub served: Arc<Mutex<Option<Arc<Router>>>>,
}

/// Starts the watcher thread.
pub(crate) fn spawn_watcher(
    path: PathBuf,
    cores: Vec<UnboundedSender<Generation>>,
    applied: Arc<AppliedWriter>,
    shared: tls::Shared,
    metrics: Metrics,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lb-tables".into())
        .spawn(move || watch(&path, &cores, &applied, &shared, &metrics))?;
    Ok(())
}

/// Rewrites the applied file when someone damaged it (config-sync would otherwise never see
/// lb confirm a generation).
fn repair_applied(applied: &AppliedWriter, superseded_logged: &mut bool) {
    match applied.repair() {
        Ok(Repair::Intact) => {}
        Ok(Repair::Rewritten) => {
            warn!("the applied file was truncated, changed or removed; rewritten");
        }
        Ok(Repair::Superseded(pid)) => {
            if !*superseded_logged {
                info!(pid, "another lb took over this segment (an upgrade); no longer reporting");
                *superseded_logged = true;
            }
        }
        Err(e) => warn!("the applied file cannot be rewritten: {e}"),
    }
}

fn watch(
    path: &Path,
    cores: &[UnboundedSender<Generation>],
    applied: &AppliedWriter,
    shared: &tls::Shared,
    metrics: &Metrics,
) {
    let mut waiting_logged = false;
    let mut keys = tls::KeyCache::default();
    let mut superseded = false;
    loop {
        repair_applied(applied, &mut superseded);
        let reader = match SegmentReader::open(path) {
            Ok(r) => r,
            Err(e) => {
                if !waiting_logged {
                    warn!(segment = %path.display(), "waiting for a table: {e}");
                    waiting_logged = true;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        waiting_logged = false;
        info!(segment = %path.display(), "table segment opened");
        let mut delivered = 0u64;
        let mut last: Option<Arc<Router>> = None;
        let mut refused = 0u64;
        let mut damaged = false;
        loop {
            repair_applied(applied, &mut superseded);
            let seen = reader.notify_word();
            let published = match reader.published() {
                Ok(p) => {
                    damaged = false;
                    p
                }
                Err(e) => {
                    if !damaged {
                        error!(
                            segment = %path.display(),
                            "table segment unreadable: {e}; keeping generation {delivered} until config-sync repairs it"
                        );
                        damaged = true;
                    }
                    0
                }
            };
            if published != 0 && published != delivered && published != refused {
                let started = Instant::now();
                match reader.open_router(last.as_deref()) {
                    Ok(Some(router)) => {
                        let generation = router.generation();
                        let (bytes, intake) = (router.size(), router.intake());
                        let router = Arc::new(router);
                        last = Some(Arc::clone(&router));
                        let tls = Arc::new(tls::build(&router, shared, &mut keys));
                        let labels = match metrics.names.lock() {
                            Ok(mut names) => names.label(&router),
                            Err(poisoned) => poisoned.into_inner().label(&router),
                        };
                        let labels = Arc::new(labels);
                        let generation_of = Generation { router, tls, labels };
                        for core in cores {
                            let _ = core.unbounded_send(generation_of.clone());
                        }
                        info!(
                            generation,
                            bytes,
                            read = intake.bytes,
                            chunks_read = intake.read,
                            chunks_kept = intake.kept,
                            micros = started.elapsed().as_micros() as u64,
                            "table validated"
                        );
                        delivered = generation;
                        metrics.table.validated.inc();
                        if let Ok(mut served) = metrics.served.lock() {
                            *served = last.clone();
                        }
                        metrics.table.last_size.set(bytes as u64);
                    }
                    Ok(None) => {}
                    Err(ReadError::Busy) => continue,
                    Err(e) => {
                        let generation = match &e {
                            ReadError::Table { generation, .. } => *generation,
                            _ => published,
                        };
                        error!(generation, "table refused: {e}; keeping generation {delivered}");
                        metrics.table.refused.inc();
                        refused = generation;
                    }
                }
            }
            if reader.replaced() {
                info!(segment = %path.display(), "segment file replaced; reopening");
                break;
            }
            reader.wait(seen, RECHECK);
        }
    }
}
