//! Publishing: the last stage of config-sync. Writes each changed table into the shared-memory
//! segment under the next generation, then watches lb's applied file to log when every lb
//! core serves it (the table-pickup latency), or to say loudly that lb does not.
//!
//! The segment is a file anyone with access can damage. Before each publication, and every
//! second from the main loop ([`Publisher::repair`]), the writer checks that the path still
//! names its file and that the header is intact; a deleted, replaced, truncated or scribbled-on
//! segment is logged, replaced by a fresh one and the last table republished into it (lb
//! reopens the new file and takes it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use table::build::{Encoder, stamp_generation};
use table::shm::{SegmentWriter, applied_path, read_applied};
use table::{AlignedVec, Table};
use tracing::{info, warn};

/// Owns the segment, the encoder (which remembers the chunks of the last table) and the last
/// root published.
#[derive(Debug)]
pub(crate) struct Publisher {
    writer: SegmentWriter,
    applied: PathBuf,
    encoder: Encoder,
    /// The last root published, at generation 0: a new root is compared as bytes (one
    /// `memcmp`); it names every chunk, so equal roots are equal tables.
    last: Option<AlignedVec<16>>,
}

/// What one publication did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    /// The new generation.
    pub generation: u64,
    /// Table size in bytes (root and chunks).
    pub bytes: usize,
    /// Bytes written: the root and the chunks that changed.
    pub written: usize,
    /// Chunks written and kept.
    pub chunks: (usize, usize),
    /// Time spent encoding (and storing the chunks that changed), before the root was written.
    pub encode: Duration,
}

impl Publisher {
    /// Opens (or creates) the segment at `segment`.
    pub(crate) fn open(segment: &Path) -> io::Result<Publisher> {
        let writer = SegmentWriter::open(segment)?;
        Ok(Publisher {
            writer,
            applied: applied_path(segment),
            encoder: Encoder::default(),
            last: None,
        })
    }

    /// Path of lb's applied file.
    pub(crate) fn applied_path(&self) -> &Path {
        &self.applied
    }

    /// Publishes `table` unless it equals the last one (and the segment is intact): encodes
    /// the pages that changed into chunks of the segment, then the root. Returns the new
    /// generation.
    pub(crate) fn publish(&mut self, table: &Table) -> io::Result<Option<Published>> {
        self.check_segment()?;
        self.writer.discard();
        let epoch = self.writer.generation() + 1;
        let started = Instant::now();
        let root = match self.encoder.encode(table, epoch, &mut self.writer) {
            Ok(root) => root,
            Err(e) => {
                // Whatever it stored is not in the segment's books.
                self.start_over();
                return Err(io::Error::other(e));
            }
        };
        if self.last.as_deref() == Some(root.as_slice()) {
            self.writer.discard();
            return Ok(None);
        }
        self.write(root, started.elapsed()).map(Some)
    }

    /// Checks the segment and, when it was damaged, puts a fresh one in place and republishes
    /// `last` (the table published last; `None` before the first) into it, whole, under the
    /// next generation.
    pub(crate) fn repair(&mut self, last: Option<&Table>) -> io::Result<Option<Published>> {
        if !self.check_segment()? {
            return Ok(None);
        }
        match last {
            Some(table) => self.publish(table),
            None => Ok(None),
        }
    }

    /// Whether the segment had to be replaced (then the next table is stored whole).
    fn check_segment(&mut self) -> io::Result<bool> {
        match self.writer.check()? {
            None => Ok(false),
            Some(damage) => {
                warn!(
                    generation = self.writer.generation() + 1,
                    "{damage}; a fresh segment is in place and the current table is republished"
                );
                self.start_over();
                Ok(true)
            }
        }
    }

    /// Forgets every chunk stored and the last root: the next table is stored whole and
    /// published even if unchanged (a fresh segment, or chunks stored for no generation, which
    /// a later encoding could otherwise place new ones over while naming them again).
    fn start_over(&mut self) {
        self.encoder.forget();
        self.writer.discard();
        self.last = None;
    }

    /// Publishes `root` (encoded at generation 0, in `encode`; its chunks are in the segment)
    /// under the next generation.
    fn write(&mut self, mut root: AlignedVec<16>, encode: Duration) -> io::Result<Published> {
        let generation = self.writer.generation() + 1;
        stamp_generation(&mut root, generation).map_err(io::Error::other)?;
        if let Err(e) = self.writer.publish(generation, &root) {
            self.start_over();
            return Err(e);
        }
        stamp_generation(&mut root, 0).map_err(io::Error::other)?;
        let reused = self.encoder.last;
        let published = Published {
            generation,
            bytes: root.len() + self.encoder.size(),
            written: root.len() + reused.bytes,
            chunks: (reused.stored, reused.kept),
            encode,
        };
        self.last = Some(root);
        Ok(published)
    }
}

/// How long lb gets to take a generation on every core before config-sync says it did not.
pub(crate) const APPLY_WARNING: Duration = Duration::from_secs(5);

/// Polls lb's applied file until every core serves `generation`; logs and returns the time from
/// `published_at`. Polls back off from 50 µs to 10 ms (the pickup time stays measurable to a
/// few percent; 5 s of waiting costs ~600 reads, not the 250,000 a fixed 20 µs poll made). A
/// generation lb has not taken after [`APPLY_WARNING`] is logged as a warning naming the cores
/// that lag (or a missing lb), and then watched once a second until lb takes it (logged too)
/// or `latest` moves past it. `None` when superseded first.
pub(crate) fn wait_applied(
    applied: &Path,
    generation: u64,
    published_at: Instant,
    latest: &AtomicU64,
) -> Option<Duration> {
    let mut pause = Duration::from_micros(50);
    let mut warned = false;
    loop {
        let state = read_applied(applied);
        match &state {
            Ok(a) if !a.cores.is_empty() && a.min() >= generation => {
                let took = published_at.elapsed();
                let cores = a.cores.len();
                let micros = took.as_micros() as u64;
                if warned {
                    warn!(generation, cores, micros, "generation live on every lb core, late");
                } else {
                    info!(generation, cores, micros, "generation live on every lb core");
                }
                return Some(took);
            }
            _ => {}
        }
        if latest.load(Ordering::Acquire) > generation {
            return None;
        }
        if !warned && published_at.elapsed() > APPLY_WARNING {
            warned = true;
            let why = match state {
                Ok(a) => {
                    let lagging: Vec<String> = a
                        .cores
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| **g < generation)
                        .map(|(i, g)| format!("core {i} at {g}"))
                        .collect();
                    format!("lb (pid {}) has {}", a.pid, lagging.join(", "))
                }
                Err(e) => {
                    format!("no lb reports through {} ({e}); is lb running?", applied.display())
                }
            };
            warn!(
                generation,
                "lb has not taken this generation after {APPLY_WARNING:?}: {why}; still watching"
            );
        }
        std::thread::sleep(pause);
        pause = if warned {
            Duration::from_secs(1)
        } else {
            (pause * 2).min(Duration::from_millis(10))
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use table::shm::{AppliedWriter, SegmentReader};

    use super::*;

    fn segment(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-publish-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("table")
    }

    fn read(path: &Path) -> (u64, Table) {
        let router = SegmentReader::open(path).unwrap().open_router(None).unwrap().unwrap();
        (router.generation(), router.to_native().unwrap())
    }

    #[test]
    fn only_a_changed_table_is_published_under_the_next_generation() {
        let path = segment("changed");
        let mut p = Publisher::open(&path).unwrap();
        let t = table::fixtures::sample();
        assert_eq!(p.publish(&t).unwrap().map(|p| p.generation), Some(1));
        // The same table again: nothing written; the generation a table carries is ignored.
        assert!(p.publish(&Table { generation: 77, ..t.clone() }).unwrap().is_none());
        let mut changed = t;
        changed.regexes.push("x+".into());
        let published = p.publish(&changed).unwrap().unwrap();
        assert_eq!(published.generation, 2);
        let (generation, got) = read(&path);
        assert_eq!((generation, got.generation), (2, 2));
        assert_eq!(Table { generation: 0, ..got }, Table { generation: 0, ..changed });
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_damaged_segment_is_replaced_and_the_table_republished() {
        let path = segment("damaged");
        let mut p = Publisher::open(&path).unwrap();
        let t = table::fixtures::sample();
        assert!(p.repair(None).unwrap().is_none(), "nothing to repair before the first table");
        p.publish(&t).unwrap();
        assert!(p.repair(Some(&t)).unwrap().is_none(), "an intact segment is left alone");
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        let republished = p.repair(Some(&t)).unwrap().unwrap();
        assert_eq!(republished.generation, 2);
        assert_eq!(read(&path).0, 2);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(p.repair(Some(&t)).unwrap().map(|p| p.generation), Some(3));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn waiting_for_lb_ends_when_every_core_serves_it_or_a_newer_one_is_out() {
        let path = segment("applied");
        let applied_file = applied_path(&path);
        let applied = AppliedWriter::create(&applied_file, 2).unwrap();
        let latest = AtomicU64::new(3);
        applied.set(0, 3);
        applied.set(1, 2);
        let watcher = {
            let applied_file = applied_file.clone();
            std::thread::spawn(move || wait_applied(&applied_file, 3, Instant::now(), &latest))
        };
        std::thread::sleep(Duration::from_millis(30));
        assert!(!watcher.is_finished(), "core 1 still serves generation 2");
        applied.set(1, 3);
        assert!(watcher.join().unwrap().is_some());
        // Superseded: a watcher for 4 stops once 5 is out, without lb ever serving 4.
        let newer = AtomicU64::new(5);
        assert_eq!(wait_applied(&applied_file, 4, Instant::now(), &newer), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
