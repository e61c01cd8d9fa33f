//! Publishing: the last stage of config-sync. Writes each changed table into the shared-memory
//! segment under the next generation, then watches lb's applied file to log when every lb
//! core serves it (the table-pickup latency).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use table::shm::{SegmentWriter, applied_path, read_applied};
use table::{Table, encode};
use tracing::{debug, info};

/// Owns the segment and the last table published.
#[derive(Debug)]
pub struct Publisher {
    writer: SegmentWriter,
    applied: PathBuf,
    last: Option<Table>,
}

/// What one publication did.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// The new generation.
    pub generation: u64,
    /// Table size in bytes.
    pub bytes: usize,
}

impl Publisher {
    /// Opens (or creates) the segment at `segment`.
    pub fn open(segment: &Path) -> io::Result<Publisher> {
        let writer = SegmentWriter::open(segment)?;
        Ok(Publisher { writer, applied: applied_path(segment), last: None })
    }

    /// The last published generation.
    pub fn generation(&self) -> u64 {
        self.writer.generation()
    }

    /// Path of lb's applied file.
    pub fn applied_path(&self) -> &Path {
        &self.applied
    }

    /// Publishes `table` unless it equals the last one. Returns the new generation.
    pub fn publish(&mut self, mut table: Table) -> io::Result<Option<Published>> {
        table.generation = 0;
        if self.last.as_ref() == Some(&table) {
            return Ok(None);
        }
        let generation = self.writer.generation() + 1;
        // Stamped in place and reset after: a clone of a 5,000-route table costs milliseconds.
        table.generation = generation;
        let bytes = encode(&table).map_err(io::Error::other)?;
        table.generation = 0;
        self.writer.publish(generation, &bytes)?;
        self.last = Some(table);
        Ok(Some(Published { generation, bytes: bytes.len() }))
    }
}

/// Polls lb's applied file until every core serves `generation` or `timeout` passes; logs and
/// returns the time from `published_at`. `None` when no lb reported it in time.
pub fn wait_applied(
    applied: &Path,
    generation: u64,
    published_at: Instant,
    timeout: Duration,
) -> Option<Duration> {
    loop {
        match read_applied(applied) {
            Ok(a) if !a.cores.is_empty() && a.min() >= generation => {
                let took = published_at.elapsed();
                info!(
                    generation,
                    cores = a.cores.len(),
                    micros = took.as_micros() as u64,
                    "generation live on every lb core"
                );
                return Some(took);
            }
            _ => {}
        }
        if published_at.elapsed() > timeout {
            debug!(generation, "no lb reported this generation within {timeout:?}");
            return None;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}
