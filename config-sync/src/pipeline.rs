//! The one pipeline both sources feed (`files`, `kubernetes`): a [`Model`] in, then compile →
//! publish → status → wait until lb serves the generation. A source decides *when* to run it
//! (file events, watch events) and what to do with the status changes (files write them at
//! once; the Kubernetes source writes them to the API server once lb serves the generation, from
//! the Lease holder only).
//!
//! lb's applied generation is learned one way for both: each publication starts a watcher
//! thread on lb's applied file (`publish::wait_applied`, backing off from 50 µs to 10 ms, a
//! warning naming lagging cores after 5 s), which records what lb serves in [`Pipeline::served`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::compile::{Incremental, Settings, bindable};
use crate::metrics::{self, metrics};
use crate::model::Model;
use crate::publish::{Published, Publisher};
use crate::status::{Change, StatusWriter};
use crate::{Config, Error};

/// Compiler settings, publisher, status memory and lb's applied generation.
#[derive(Debug)]
pub(crate) struct Pipeline {
    publisher: Publisher,
    status: StatusWriter,
    settings: Settings,
    /// Every route's compiled fragment from the last run (`compile::incremental`).
    compiler: Incremental,
    /// lb's report of listeners it could not bind (`<segment>.listeners`).
    listeners: PathBuf,
    /// The newest generation this process published (0: none yet); watchers of older ones
    /// stop when it moves past theirs.
    latest: Arc<AtomicU64>,
    /// The newest generation every lb core was seen to serve.
    served: Arc<AtomicU64>,
}

/// How the source came by the model (for the `published` log line, which the propagation
/// benchmark reads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    /// When the source started reading.
    pub started: Instant,
    /// Files read (file mode).
    pub files: usize,
    /// Reading and parsing.
    pub scan: Duration,
    /// Assembling the model.
    pub model: Duration,
}

impl Read {
    /// A model that was at hand (no files read).
    pub(crate) fn now() -> Read {
        Read { started: Instant::now(), files: 0, scan: Duration::ZERO, model: Duration::ZERO }
    }
}

impl Pipeline {
    /// Opens the segment; compiles nothing yet.
    pub(crate) fn new(config: &Config) -> Result<Pipeline, Error> {
        let publisher = Publisher::open(&config.table)
            .map_err(|source| Error::Segment { path: config.table.clone(), source })?;
        let listeners = table::shm::listeners_path(&config.table);
        Ok(Pipeline {
            publisher,
            status: StatusWriter::new(config.status_dir.clone()),
            settings: Settings {
                controller_name: config.controller_name.clone(),
                default_address: config.default_address,
                address_pool: config.address_pool,
                // lb runs on this node: an address this process cannot bind, lb cannot either.
                address_usable: Some(bindable),
                bind_failures: table::shm::read_bind_failures(&listeners),
                last_good: Default::default(),
            },
            compiler: Incremental::default(),
            listeners,
            latest: Arc::new(AtomicU64::new(0)),
            served: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The compiler's settings (the controller name, for the Kubernetes source's status).
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Compiles `model`, publishes the table when it changed, and records the statuses (logged,
    /// and written to `--status-dir`). Returns the objects whose status changed.
    pub(crate) fn run(&mut self, model: &Model, read: Read) -> Vec<Change> {
        let started = Instant::now();
        let mut compiled = self.compiler.compile(model, &self.settings);
        let reuse = self.compiler.last();
        self.settings.last_good = std::mem::take(&mut compiled.last_good);
        let compile_micros = started.elapsed().as_micros() as u64;
        let m = metrics();
        m.runs.inc();
        m.compile_seconds.observe(started.elapsed().as_secs_f64());
        metrics::count_objects(model);
        let (listeners, matches) = (compiled.table.listeners.len(), compiled.table.matches.len());
        let publishing = Instant::now();
        match self.publisher.publish(&compiled.table) {
            Ok(Some(p)) => {
                let micros = read.started.elapsed().as_micros() as u64;
                info!(
                    generation = p.generation,
                    bytes = p.bytes,
                    written = p.written,
                    chunks_written = p.chunks.0,
                    chunks_kept = p.chunks.1,
                    objects = model.len(),
                    listeners,
                    matches,
                    files_read = read.files,
                    micros,
                    scan_micros = read.scan.as_micros() as u64,
                    model_micros = read.model.as_micros() as u64,
                    compile_micros,
                    routes_replayed = reuse.replayed,
                    routes_compiled = reuse.fresh,
                    patched = reuse.patched,
                    publish_micros = publishing.elapsed().as_micros() as u64,
                    encode_micros = p.encode.as_micros() as u64,
                    "published"
                );
                self.watch_applied(p.generation);
                m.publishes.get_or_create(&metrics::result("published")).inc();
                m.generation.set(p.generation);
                m.table_bytes.set(p.bytes as i64);
                m.reconcile_seconds.observe(read.started.elapsed().as_secs_f64());
            }
            Ok(None) => {
                m.publishes.get_or_create(&metrics::result("unchanged")).inc();
            }
            Err(e) => {
                error!("cannot publish: {e}; lb keeps its current table");
                m.publishes.get_or_create(&metrics::result("failed")).inc();
            }
        }
        let started = Instant::now();
        // Unchanged routes of the next run are copied from this table.
        self.compiler.keep(compiled.table);
        let changes = self.status.apply(compiled.status, compiled.gone);
        info!(
            changes = changes.len(),
            micros = started.elapsed().as_micros() as u64,
            "statuses compared and written"
        );
        changes
    }

    /// Re-reads lb's report of listeners it could not bind; `true` when it changed (their
    /// status changes: run again).
    pub(crate) fn bind_failures_changed(&mut self) -> bool {
        let failures = table::shm::read_bind_failures(&self.listeners);
        if failures == self.settings.bind_failures {
            return false;
        }
        self.settings.bind_failures = failures;
        true
    }

    /// Checks the segment and republishes into a fresh one when someone damaged it.
    pub(crate) fn repair(&mut self) -> Option<Published> {
        match self.publisher.repair(self.compiler.table()) {
            Ok(Some(p)) => {
                self.watch_applied(p.generation);
                Some(p)
            }
            Ok(None) => None,
            Err(e) => {
                error!("cannot repair the table segment: {e}; lb keeps its current table");
                None
            }
        }
    }

    /// Whether lb serves (on every core) what this process published last.
    pub(crate) fn served(&self) -> bool {
        self.served.load(Ordering::Acquire) >= self.latest.load(Ordering::Acquire)
    }

    /// Every status as it stands (to write them all again, e.g. on becoming leader).
    pub(crate) fn statuses(&self) -> Vec<Change> {
        self.status.all()
    }

    /// Starts the watcher that learns when lb serves `generation`.
    fn watch_applied(&mut self, generation: u64) {
        self.latest.fetch_max(generation, Ordering::AcqRel);
        let applied = self.publisher.applied_path().to_owned();
        let (latest, served) = (Arc::clone(&self.latest), Arc::clone(&self.served));
        let at = Instant::now();
        // A plain thread, not `spawn_blocking`: a watcher for a generation no lb takes runs
        // until a newer one supersedes it, and the runtime's shutdown would wait for it
        // (config-sync hung on SIGTERM with no lb running).
        let spawned = std::thread::Builder::new().name("applied-watch".into()).spawn(move || {
            if crate::publish::wait_applied(&applied, generation, at, &latest).is_some() {
                let served = served.fetch_max(generation, Ordering::AcqRel).max(generation);
                metrics().served_generation.set(served);
            }
        });
        if let Err(e) = spawned {
            warn!("cannot watch lb's applied file: {e}");
        }
    }
}
