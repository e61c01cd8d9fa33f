//! config-sync: Sluice's control plane. Reads Gateway API objects (file mode: a folder of
//! manifests), resolves them per the spec, compiles one routing table and publishes it to lb
//! through shared memory with a generation number. It also computes every owned object's status.
//!
//! Flow: `watch` (find and parse documents, keep the last good) → `model` (typed objects) →
//! `compile` (resolution, precedence, table) → `publish` (segment) and `status`.
//!
//! Runs on tokio; it never links compio (lb's runtime), which CI checks.

#![forbid(unsafe_code)]

pub mod compile;
pub mod kubernetes;
pub mod lease;
pub mod limits;
pub mod model;
pub mod publish;
pub mod status;
pub mod validate;
pub mod watch;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use compile::{Compiled, Settings, compile};

/// How often the segment is checked for damage (deleted, replaced, truncated, scribbled on).
pub const SEGMENT_CHECK: Duration = Duration::from_secs(1);

/// Default `controllerName` of the GatewayClasses Sluice serves.
pub const DEFAULT_CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

/// How long a Lease holder stays leader without renewing (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// How config-sync runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Folder of manifests (read recursively).
    pub manifests: PathBuf,
    /// Shared-memory segment to publish into.
    pub table: PathBuf,
    /// Where to write one status YAML per object, if anywhere.
    pub status_dir: Option<PathBuf>,
    /// Serve GatewayClasses with this controllerName.
    pub controller_name: String,
    /// The address lb binds when a Gateway names none (reported in Gateway status).
    pub default_address: Option<IpAddr>,
    /// Each Gateway without addresses gets its own address from this range.
    pub address_pool: Option<compile::AddressPool>,
    /// Quiet time after a file event before reloading.
    pub debounce: Duration,
    /// Full rescan interval, a safety net under inotify.
    pub rescan: Duration,
}

/// Errors that stop config-sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifests folder cannot be read at start.
    #[error("manifests folder {path}: {source}")]
    Manifests {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The segment cannot be opened.
    #[error("table segment {path}: {source}")]
    Segment {
        /// The segment path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file watcher cannot start.
    #[error("watching {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The async runtime cannot start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// No Kubernetes client could be configured (no in-cluster config, no kubeconfig).
    #[error("Kubernetes client: {0}")]
    Kubernetes(String),
}

/// Runs config-sync in file mode until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(run_files(config))
}

/// Runs config-sync against the Kubernetes API server (in-cluster config, or `KUBECONFIG` /
/// `~/.kube/config`) until SIGINT or SIGTERM.
pub fn run_kubernetes(config: Config, options: kubernetes::KubeOptions) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(kubernetes::run(config, options))
}

/// The file-mode pipeline: the source, the publisher and the status writer.
#[derive(Debug)]
pub struct Pipeline {
    source: watch::FileSource,
    publisher: publish::Publisher,
    status: status::StatusWriter,
    settings: Settings,
    /// lb's report of listeners it could not bind.
    listeners: PathBuf,
    loaded: bool,
}

impl Pipeline {
    /// Opens the segment and prepares the source; reads nothing yet.
    pub fn new(config: &Config) -> Result<Pipeline, Error> {
        std::fs::read_dir(&config.manifests)
            .map_err(|source| Error::Manifests { path: config.manifests.clone(), source })?;
        let publisher = publish::Publisher::open(&config.table)
            .map_err(|source| Error::Segment { path: config.table.clone(), source })?;
        Ok(Pipeline {
            source: watch::FileSource::new(&config.manifests),
            publisher,
            status: status::StatusWriter::new(config.status_dir.clone()),
            settings: Settings {
                controller_name: config.controller_name.clone(),
                default_address: config.default_address,
                address_pool: config.address_pool,
                // lb runs on this node: an address this process cannot bind, lb cannot either.
                address_usable: Some(compile::bindable),
                bind_failures: table::shm::read_bind_failures(&table::shm::listeners_path(
                    &config.table,
                )),
            },
            listeners: table::shm::listeners_path(&config.table),
            loaded: false,
        })
    }

    /// Re-reads what changed (the given paths from file events, or everything whose size,
    /// mtime or inode moved when `None`), compiles, publishes and writes status. Returns the
    /// generation published, if any.
    pub fn reload(&mut self, changed: Option<&BTreeSet<PathBuf>>) -> Option<(u64, Instant)> {
        let started = Instant::now();
        let scanned = match changed {
            Some(paths) if self.loaded => self.source.scan_paths(paths),
            _ => self.source.scan(&BTreeSet::new()),
        };
        let report = match scanned {
            Ok(r) => r,
            Err(e) => {
                error!(folder = %self.source.root().display(), "cannot scan manifests: {e}; keeping the current table");
                return None;
            }
        };
        let failures = table::shm::read_bind_failures(&self.listeners);
        let bind_changed = failures != self.settings.bind_failures;
        self.settings.bind_failures = failures;
        if !report.changed && !bind_changed && self.loaded {
            return None;
        }
        self.loaded = true;
        let scanned = started.elapsed();
        let (model, _) = self.source.model();
        let modelled = started.elapsed();
        let compiled = compile(&model, &self.settings);
        let compile_time = started.elapsed();
        let routes = compiled.table.matches.len();
        let listeners = compiled.table.listeners.len();
        let result = match self.publisher.publish(compiled.table) {
            Ok(Some(p)) => {
                info!(
                    generation = p.generation,
                    bytes = p.bytes,
                    objects = model.len(),
                    listeners,
                    matches = routes,
                    files_read = report.read,
                    micros = compile_time.as_micros() as u64,
                    scan_micros = scanned.as_micros() as u64,
                    model_micros = (modelled - scanned).as_micros() as u64,
                    compile_micros = (compile_time - modelled).as_micros() as u64,
                    "published"
                );
                Some((p.generation, Instant::now()))
            }
            Ok(None) => None,
            Err(e) => {
                error!("cannot publish: {e}; lb keeps its current table");
                None
            }
        };
        self.status.apply(compiled.status);
        result
    }

    /// When a file that lost objects in place is due for a re-read (`watch` module docs).
    pub fn next_recheck(&self) -> Option<Instant> {
        self.source.next_recheck()
    }

    /// Re-reads the files that lost objects in place; applies the loss once they are quiet.
    pub fn recheck(&mut self) -> Option<(u64, Instant)> {
        let paths = self.source.suspects();
        self.reload(Some(&paths))
    }

    /// Checks the segment and republishes into a fresh one when someone damaged it; picks up
    /// a change in the listeners lb could not bind (their status).
    pub fn repair(&mut self) -> Option<(u64, Instant)> {
        if table::shm::read_bind_failures(&self.listeners) != self.settings.bind_failures {
            return self.reload(Some(&BTreeSet::new()));
        }
        match self.publisher.repair() {
            Ok(Some(p)) => Some((p.generation, Instant::now())),
            Ok(None) => None,
            Err(e) => {
                error!("cannot repair the table segment: {e}; lb keeps its current table");
                None
            }
        }
    }

    /// lb's applied file for this segment.
    pub fn applied_path(&self) -> &Path {
        self.publisher.applied_path()
    }

    /// The status writer.
    pub fn status(&self) -> &status::StatusWriter {
        &self.status
    }
}

async fn run_files(config: Config) -> Result<(), Error> {
    use notify::Watcher;

    let mut pipeline = Pipeline::new(&config)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reads are events too (inotify's open/close-nowrite): our own re-reads would
            // trigger another reload of every file they touched, forever. Only changes count.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) => drop(tx.send(e.paths)),
            Err(e) => warn!("file watcher: {e}"),
        })
        .map_err(|source| Error::Watch { path: config.manifests.clone(), source })?;
    watcher
        .watch(&config.manifests, notify::RecursiveMode::Recursive)
        .map_err(|source| Error::Watch { path: config.manifests.clone(), source })?;
    info!(
        manifests = %config.manifests.display(),
        table = %config.table.display(),
        controller = %config.controller_name,
        "config-sync started (file mode)"
    );
    let applied = pipeline.applied_path().to_owned();
    let latest = publish::latest();
    let report = |published: Option<(u64, Instant)>| {
        if let Some((generation, at)) = published {
            let (applied, latest) = (applied.clone(), Arc::clone(&latest));
            latest.fetch_max(generation, Ordering::AcqRel);
            // A plain thread, not `spawn_blocking`: a watcher for a generation no lb takes
            // runs until a newer one supersedes it, and the runtime's shutdown would wait for
            // it (config-sync hung on SIGTERM with no lb running).
            let spawned = std::thread::Builder::new()
                .name("applied-watch".into())
                .spawn(move || publish::wait_applied(&applied, generation, at, &latest));
            if let Err(e) = spawned {
                warn!("cannot watch lb's applied file: {e}");
            }
        }
    };
    report(pipeline.reload(None));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Runtime)?;
    let mut rescan = tokio::time::interval(config.rescan);
    rescan.tick().await;
    let mut segment_check = tokio::time::interval(SEGMENT_CHECK);
    segment_check.tick().await;
    loop {
        let recheck = pipeline.next_recheck();
        let suspects_due = async move {
            match recheck {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = suspects_due => report(pipeline.recheck()),
            paths = rx.recv() => {
                let Some(paths) = paths else { break };
                let mut changed: BTreeSet<PathBuf> = paths.into_iter().collect();
                // Debounce: editors write in several steps; wait until the folder is quiet.
                let deadline = tokio::time::Instant::now() + config.debounce * 10;
                while let Ok(Some(more)) = tokio::time::timeout_at(
                    (tokio::time::Instant::now() + config.debounce).min(deadline),
                    rx.recv(),
                )
                .await
                {
                    changed.extend(more);
                }
                report(pipeline.reload(Some(&changed)));
            }
            _ = rescan.tick() => report(pipeline.reload(None)),
            _ = segment_check.tick() => report(pipeline.repair()),
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("config-sync stopping; lb keeps serving the last table");
    Ok(())
}
