//! The file source: a folder of manifests (`scan`: walk, read, keep the last good objects) and
//! its event loop — inotify events turned into re-reads (at once when the files are settled,
//! after their writer closes them when written in place; a burst taken whole), a full rescan
//! every few seconds as a safety net, in-place rewrites re-checked once quiet, the segment
//! checked every second — each re-read that changed something run through the [`Pipeline`].

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
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<PathBuf>, bool)>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) => {
                if let Some(settled) = settles(&e.kind) {
                    drop(tx.send((e.paths, settled)));
                }
            }
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
            event = rx.recv() => {
                let Some((paths, settled)) = event else { break };
                let mut changes = Changes::default();
                changes.note(paths, settled);
                // A burst is taken whole: everything queued meanwhile (while the last change
                // was compiled, say) goes into this reload.
                while let Ok((paths, settled)) = rx.try_recv() {
                    changes.note(paths, settled);
                }
                // A single change goes out at once, unless a manifest is being written in
                // place: then until its writer closes it, or it is quiet for `debounce`
                // (bounded; a short read keeps the file's last objects anyway, `scan`).
                let deadline = tokio::time::Instant::now() + config.debounce * 10;
                while !changes.writing.is_empty() {
                    let quiet = (tokio::time::Instant::now() + config.debounce).min(deadline);
                    match tokio::time::timeout_at(quiet, rx.recv()).await {
                        Ok(Some((paths, settled))) => changes.note(paths, settled),
                        _ => break,
                    }
                }
                files.reload(&mut pipeline, Some(&changes.paths));
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

/// Whether a file event leaves the file settled (`true`: renamed into place, removed, closed
/// after writing), may be followed by more of its content (`false`: created, written), or is
/// not a change (`None`). Reads are events too (inotify's open and close-nowrite): our own
/// re-reads would otherwise trigger another reload of every file they touched, forever.
fn settles(kind: &notify::EventKind) -> Option<bool> {
    use notify::EventKind as E;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        E::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        E::Access(_) => None,
        E::Remove(_) | E::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => Some(true),
        _ => Some(false),
    }
}

/// File events gathered for one reload.
#[derive(Default)]
struct Changes {
    paths: BTreeSet<PathBuf>,
    /// Manifests written to and not closed since.
    writing: BTreeSet<PathBuf>,
}

impl Changes {
    fn note(&mut self, paths: Vec<PathBuf>, settled: bool) {
        for p in paths {
            if settled {
                self.writing.remove(&p);
            } else if scan::is_manifest(&p) {
                self.writing.insert(p.clone());
            }
            self.paths.insert(p);
        }
    }
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

#[cfg(test)]
mod tests {
    use notify::EventKind as E;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};

    use super::*;

    #[test]
    fn a_manifest_written_in_place_waits_for_its_close_and_settled_files_do_not_wait() {
        let written = settles(&E::Modify(ModifyKind::Data(DataChange::Any)));
        let closed = settles(&E::Access(AccessKind::Close(AccessMode::Write)));
        let renamed = settles(&E::Modify(ModifyKind::Name(RenameMode::To)));
        let created = settles(&E::Create(CreateKind::File));
        let read = settles(&E::Access(AccessKind::Close(AccessMode::Read)));
        assert_eq!(
            (written, closed, renamed, created, read),
            (Some(false), Some(true), Some(true), Some(false), None)
        );
        let mut c = Changes::default();
        // kubectl-style: a temporary file written and closed, then renamed into place.
        c.note(vec!["m/r.yaml.tmp~".into()], false);
        assert!(c.writing.is_empty(), "not a manifest: nothing to wait for");
        c.note(vec!["m/r.yaml.tmp~".into(), "m/r.yaml".into()], true);
        assert!(c.writing.is_empty());
        // In place: written, then closed.
        c.note(vec!["m/a.yaml".into()], false);
        c.note(vec!["m/b.json".into()], false);
        assert_eq!(c.writing.len(), 2);
        c.note(vec!["m/a.yaml".into()], true);
        assert_eq!(c.writing.iter().collect::<Vec<_>>(), [&PathBuf::from("m/b.json")]);
        assert_eq!(c.paths.len(), 4, "every path is read");
    }
}
