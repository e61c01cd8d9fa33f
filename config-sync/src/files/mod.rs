//! The file source: a folder of manifests (`scan`: walk, read, keep the last good objects) and
//! its event loop — inotify events debounced into re-reads, a full rescan every few seconds as
//! a safety net, in-place rewrites re-checked once quiet, the segment checked every second —
//! each re-read that changed something run through the [`Pipeline`].

mod scan;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use scan::FileSource;
use scan::{ScanReport, Walked, walk_folder};

use crate::pipeline::{Pipeline, Read};
use crate::{Config, Error, SEGMENT_CHECK};

/// Runs the file source for `manifests` until SIGINT or SIGTERM.
pub(crate) async fn run(config: &Config, manifests: &Path) -> Result<(), Error> {
    use notify::Watcher;

    std::fs::read_dir(manifests)
        .map_err(|source| Error::Manifests { path: manifests.to_owned(), source })?;
    let mut files = Files { source: FileSource::new(manifests), loaded: false };
    let mut pipeline = Pipeline::new(config)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reads are events too (inotify's open/close-nowrite): our own re-reads would
            // trigger another reload of every file they touched, forever. Only changes count.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) => drop(tx.send(e.paths)),
            Err(e) => warn!("file watcher: {e}"),
        })
        .map_err(|source| Error::Watch { path: manifests.to_owned(), source })?;
    watcher
        .watch(manifests, notify::RecursiveMode::Recursive)
        .map_err(|source| Error::Watch { path: manifests.to_owned(), source })?;
    info!(
        manifests = %manifests.display(),
        table = %config.table.display(),
        controller = %config.controller_name,
        "config-sync started (file mode)"
    );
    // File mode has no election: this process is the one writing status.
    crate::metrics::metrics().leader.set(1);
    files.reload(&mut pipeline, None);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Runtime)?;
    let mut rescan = tokio::time::interval(config.rescan);
    rescan.tick().await;
    let mut segment_check = tokio::time::interval(SEGMENT_CHECK);
    segment_check.tick().await;
    // The safety-net rescan's walk (a stat of every file: 45 ms at 5,000 files) runs on a
    // blocking thread so a change arriving meanwhile is not held up behind it.
    let mut walking: Option<tokio::task::JoinHandle<std::io::Result<Walked>>> = None;
    loop {
        let recheck = files.source.next_recheck();
        let suspects_due = async move {
            match recheck {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = suspects_due => {
                let paths = files.source.suspects();
                files.reload(&mut pipeline, Some(&paths));
            }
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
                files.reload(&mut pipeline, Some(&changed));
            }
            _ = rescan.tick(), if walking.is_none() => {
                let root = files.source.root().to_owned();
                walking = Some(tokio::task::spawn_blocking(move || walk_folder(&root)));
            }
            walked = async {
                match walking.as_mut() {
                    Some(walk) => walk.await,
                    None => std::future::pending().await,
                }
            }, if walking.is_some() => {
                walking = None;
                match walked {
                    Ok(walked) => files.apply(&mut pipeline, walked),
                    Err(e) => error!("manifest rescan's walk stopped: {e}"),
                }
            }
            _ = segment_check.tick() => {
                if pipeline.bind_failures_changed() {
                    // Those listeners' status changes; the objects did not.
                    pipeline.run(files.source.model(), Read::now());
                } else {
                    pipeline.repair();
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("config-sync stopping; lb keeps serving the last table");
    Ok(())
}

/// The folder and whether it has been read once.
struct Files {
    source: FileSource,
    loaded: bool,
}

impl Files {
    /// Re-reads what changed (the given paths from file events, or everything whose size,
    /// mtime or inode moved when `None`) and runs the pipeline when something did (or lb's
    /// bind report moved).
    fn reload(&mut self, pipeline: &mut Pipeline, changed: Option<&BTreeSet<PathBuf>>) {
        let started = Instant::now();
        let scanned = match changed {
            Some(paths) if self.loaded => self.source.scan_paths(paths),
            _ => self.source.scan(&BTreeSet::new()),
        };
        self.run_if_changed(pipeline, scanned, started);
    }

    /// Applies a rescan's walk, done off the event loop (see [`FileSource::apply`]).
    fn apply(&mut self, pipeline: &mut Pipeline, walked: std::io::Result<Walked>) {
        let started = Instant::now();
        let scanned = walked.map(|w| self.source.apply(w, &BTreeSet::new()));
        self.run_if_changed(pipeline, scanned, started);
    }

    /// Runs the pipeline when the read changed something (or lb's bind report moved).
    fn run_if_changed(
        &mut self,
        pipeline: &mut Pipeline,
        scanned: std::io::Result<ScanReport>,
        started: Instant,
    ) {
        let report = match scanned {
            Ok(r) => r,
            Err(e) => {
                error!(folder = %self.source.root().display(), "cannot scan manifests: {e}; keeping the current table");
                return;
            }
        };
        let bind_changed = pipeline.bind_failures_changed();
        if !report.changed && !bind_changed && self.loaded {
            return;
        }
        self.loaded = true;
        let scan = started.elapsed();
        let read = Read { started, files: report.read, scan, model: started.elapsed() - scan };
        pipeline.run(self.source.model(), read);
    }
}
