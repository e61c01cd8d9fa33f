//! Shared-memory delivery: the table segment config-sync publishes into and lb reads from, and
//! the small "applied" file in which lb reports, per core, the generation it serves.
//!
//! Segment file (tmpfs, e.g. `/dev/shm/sluice/table`):
//!
//! ```text
//! 0      header page (4 KiB): magic, segment and table format versions, futex word, header
//!        seqlock, published generation and active slot, two slot descriptors (each names
//!        a generation's root)
//! 4096.. roots and chunks, wherever the writer found room: nothing the active generation
//!        uses is ever overwritten
//! ```
//!
//! A generation is a root (ports, listeners, certificates, and for each paged vector the list
//! of its chunks: identity, offset, length, CRC32) and the chunks it names. The writer stores
//! the chunks that changed in space the active generation does not use (first fit; the file
//! grows when nothing fits), writes the root into the inactive slot under that slot's seqlock
//! (odd while writing), then switches `active`/`generation` under the header seqlock, bumps
//! the futex word and wakes waiters. A reader copies the header and the active root out with
//! `pread`, then every chunk the root names that it does not already hold, then re-reads the
//! header: if either sequence number moved, something it copied may have been overwritten and
//! it retries. CRC32s of the root and of each chunk catch what the protocol cannot (a buggy or
//! hostile writer); the copy then goes through full validation in `view`.
//!
//! **No byte of either file is ever dereferenced through a mapping.** Anyone may truncate,
//! shrink, grow, replace or delete these files while both processes run; a load from a mapped
//! page past the end of a truncated file is a SIGBUS that kills the process. Every header field
//! is read with `pread` and written with `pwrite` (a short file is an error value, not a
//! signal). The header page is still mapped, but only so that `futex(2)` has an address: the
//! kernel touches it, and a missing page makes the call fail with `EFAULT` instead of
//! faulting us. The syscall boundaries order the seqlock's reads; the CRC and full validation
//! remain the backstop for what a torn copy could still let through.
//!
//! Two config-syncs on one segment are kept apart by an exclusive `flock` on `<segment>.lock`,
//! taken before the segment is looked at (a lock on the segment itself left a check-then-lock
//! window when two started on a fresh path, and a segment replaced by rename would take its
//! lock with it).
//!
//! See `docs/table-format.md` for the byte layout.

#![allow(unsafe_code, reason = "maps the header page for futex(2) addresses and calls futex")]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use rkyv::util::AlignedVec;

use crate::Router;
use crate::build::Store;
use crate::format::{ArchivedChunkRef, ChunkRef, FORMAT_VERSION};
use crate::view::TableError;

/// `b"SLUICEtb"`, little-endian.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SLUICEtb");
/// Layout version of the segment header (the table inside has [`FORMAT_VERSION`]).
pub const SEGMENT_VERSION: u32 = 2;
/// `b"SLUICEak"`, little-endian.
pub const APPLIED_MAGIC: u64 = u64::from_le_bytes(*b"SLUICEak");
/// Most cores the applied file has room for.
pub const MAX_CORES: usize = 256;
/// Permissions of the segment, the applied file and the lock: a table carries private keys
/// (docs/table-format.md, "Key material").
pub const FILE_MODE: u32 = 0o600;
/// Largest table a reader accepts, so a corrupted length cannot make it allocate without bound.
pub const MAX_TABLE_BYTES: u64 = 1 << 30;

const PAGE: u64 = 4096;
const DATA_ALIGN: u64 = 64;
const READ_ATTEMPTS: usize = 1000;

/// Byte offsets of the segment header fields (native-endian; see docs/table-format.md).
mod at {
    pub(super) const MAGIC: u64 = 0;
    pub(super) const SEGMENT_VERSION: u64 = 8;
    pub(super) const FORMAT_VERSION: u64 = 12;
    pub(super) const NOTIFY: u64 = 16;
    pub(super) const WRITER_PID: u64 = 20;
    pub(super) const SEQ: u64 = 24;
    pub(super) const GENERATION: u64 = 32;
    pub(super) const ACTIVE: u64 = 40;
    /// Slot descriptors: seq, generation, offset, len, checksum (u64 each).
    pub(super) const SLOTS: u64 = 48;
    pub(super) const SLOT_LEN: u64 = 40;
    pub(super) const HEADER_LEN: usize = (SLOTS + 2 * SLOT_LEN) as usize;

    /// Applied file: magic, version, cores, pid, reserved, then one u64 per core.
    pub(super) const APPLIED_VERSION: u64 = 8;
    pub(super) const APPLIED_CORES: u64 = 12;
    pub(super) const APPLIED_PID: u64 = 16;
    pub(super) const APPLIED_SLOTS: u64 = 24;
}

const _: () = assert!(at::HEADER_LEN as u64 <= PAGE);
const _: () = assert!(at::APPLIED_SLOTS + 8 * MAX_CORES as u64 <= PAGE);

/// Errors reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// I/O on the segment file failed.
    #[error("segment I/O: {0}")]
    Io(#[from] io::Error),
    /// Others than the owner may read or write the segment (it carries private keys).
    #[error("{0}")]
    Exposed(String),
    /// The header is not a Sluice segment of a version this reader knows.
    #[error("segment header: {0}")]
    Header(String),
    /// The slot's bytes do not match its checksum.
    #[error("generation {generation}: checksum {found:#010x} != {expected:#010x}")]
    Checksum {
        /// Generation of the slot.
        generation: u64,
        /// From the descriptor.
        expected: u32,
        /// Computed.
        found: u32,
    },
    /// The slot descriptor is impossible (length or offset).
    #[error("generation {generation}: slot descriptor {reason}")]
    Descriptor {
        /// Generation of the slot.
        generation: u64,
        /// What is wrong.
        reason: String,
    },
    /// The generation's root or a chunk did not validate.
    #[error("generation {generation}: {error}")]
    Table {
        /// The generation.
        generation: u64,
        /// Why.
        error: TableError,
    },
    /// The writer kept changing the slot while we copied it.
    #[error("segment kept changing during {READ_ATTEMPTS} attempts to copy it")]
    Busy,
}

/// One generation's root, copied out of the segment (its chunks are read as
/// [`Router::open_parts`](crate::Router::open_parts) asks for them; see
/// [`SegmentReader::open_router`]).
#[derive(Debug)]
pub struct Snapshot {
    /// Generation the header announced.
    pub generation: u64,
    /// The root's bytes, copied out of the segment.
    pub bytes: AlignedVec<16>,
    /// The seqlocks as they were: the copy and every chunk read after it are good only while
    /// neither moves.
    seqs: (u64, usize, u64),
}

/// A copy of the segment header, read with one `pread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header([u8; at::HEADER_LEN]);

/// One slot descriptor out of a [`Header`] copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotDesc {
    seq: u64,
    generation: u64,
    offset: u64,
    len: u64,
    checksum: u64,
}

impl Header {
    /// Reads the header; a file too short to hold one is `Header` error, not a fault.
    fn read(file: &File) -> Result<Header, ReadError> {
        let mut h = Header([0; at::HEADER_LEN]);
        match file.read_exact_at(&mut h.0, 0) {
            Ok(()) => Ok(h),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(ReadError::Header("the file is shorter than a header (truncated?)".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn u64(&self, at: u64) -> u64 {
        get_u64(&self.0, at)
    }

    fn u32(&self, at: u64) -> u32 {
        get_u32(&self.0, at)
    }

    fn slot(&self, i: usize) -> SlotDesc {
        let base = at::SLOTS + i as u64 * at::SLOT_LEN;
        SlotDesc {
            seq: self.u64(base),
            generation: self.u64(base + 8),
            offset: self.u64(base + 16),
            len: self.u64(base + 24),
            checksum: self.u64(base + 32),
        }
    }

    /// Magic and versions are this writer's and reader's.
    fn check(&self) -> Result<(), ReadError> {
        let magic = self.u64(at::MAGIC);
        if magic != SEGMENT_MAGIC {
            return Err(ReadError::Header(format!("bad magic {magic:#018x}")));
        }
        let (sv, fv) = (self.u32(at::SEGMENT_VERSION), self.u32(at::FORMAT_VERSION));
        if sv != SEGMENT_VERSION || fv != FORMAT_VERSION {
            return Err(ReadError::Header(format!(
                "segment version {sv}/format {fv}, this reader knows {SEGMENT_VERSION}/{FORMAT_VERSION}"
            )));
        }
        Ok(())
    }
}

/// The publishing side (config-sync). Holds an exclusive `flock` on `<segment>.lock` so two
/// publishers cannot interleave.
#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    /// Only for `futex(2)`'s address; never dereferenced (see the module docs).
    map: MmapRaw,
    identity: (u64, u64),
    /// The last generation published (or found on open): a damaged header cannot make
    /// generations go backwards.
    generation: u64,
    /// The generation this writer last put in the header (0 in a fresh segment).
    written: u64,
    /// Extents (offset, length) the active generation uses: nothing is written there.
    active: Vec<(u64, u64)>,
    /// Extents of the generation being put together (chunks stored or kept since the last
    /// publication).
    pending: Vec<(u64, u64)>,
    _lock: File,
}

/// What [`SegmentWriter::check`] found wrong with the segment, and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The path names no file, or another file than the one being written (deleted, or
    /// replaced by a rename).
    Replaced,
    /// The header is unreadable or not ours (truncated, or scribbled on).
    Header(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Replaced => f.write_str("the segment file was deleted or replaced"),
            Damage::Header(why) => write!(f, "the segment header is damaged: {why}"),
        }
    }
}

impl SegmentWriter {
    /// Opens the segment at `path`, creating it (and its directory) when missing or not a
    /// segment of this version. An existing valid segment is reused so its generation keeps
    /// counting up across restarts and readers keep their file.
    pub fn open(path: &Path) -> io::Result<SegmentWriter> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let lock = lock_exclusive(&sibling(path, ".lock"), path)?;
        if let Ok(file) = OpenOptions::new().read(true).write(true).open(path)
            && let Ok(header) = Header::read(&file)
            && header.check().is_ok()
        {
            let meta = file.metadata()?;
            if meta.mode() & 0o077 != 0 {
                // A segment from before tables carried keys: readers now refuse it as it is.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
            }
            let map = MmapOptions::new().len(PAGE as usize).map_raw(&file)?;
            let generation = header.u64(at::GENERATION);
            // What the active generation uses is unknown: all of it, until the next one.
            let active = vec![(PAGE, meta.len().saturating_sub(PAGE))];
            let writer = SegmentWriter {
                path: path.to_owned(),
                file,
                map,
                identity: (meta.dev(), meta.ino()),
                generation,
                written: generation,
                active,
                pending: Vec::new(),
                _lock: lock,
            };
            writer.store_u32(at::WRITER_PID, std::process::id())?;
            return Ok(writer);
        }
        let (file, map, identity) = fresh_segment(path)?;
        Ok(SegmentWriter {
            path: path.to_owned(),
            file,
            map,
            identity,
            generation: 0,
            written: 0,
            active: Vec::new(),
            pending: Vec::new(),
            _lock: lock,
        })
    }

    /// The last published generation (0 when none).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Checks that the path still names this writer's file and that its header is intact;
    /// when not, puts a fresh segment in place (renamed over the path, so readers reopen it)
    /// that carries the generation on. Returns what was wrong; the caller republishes.
    pub fn check(&mut self) -> io::Result<Option<Damage>> {
        let damage = match fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                match Header::read(&self.file).and_then(|h| {
                    h.check()?;
                    // A header whose seqlocks or generation another process rewrote.
                    if h.u64(at::GENERATION) != self.written {
                        return Err(ReadError::Header(format!(
                            "generation {} where {} was published",
                            h.u64(at::GENERATION),
                            self.written
                        )));
                    }
                    Ok(())
                }) {
                    Ok(()) => None,
                    Err(e) => Some(Damage::Header(e.to_string())),
                }
            }
            _ => Some(Damage::Replaced),
        };
        if damage.is_some() {
            let (file, map, identity) = fresh_segment(&self.path)?;
            (self.file, self.map, self.identity, self.written) = (file, map, identity, 0);
            self.active.clear();
            self.pending.clear();
        }
        Ok(damage)
    }

    /// Publishes `root` (a table's root; its chunks were stored or kept through [`Store`]
    /// since the last publication) as `generation`, which must be larger than the current
    /// one. Only the root is written here; the extents of the chunks it names become the
    /// active generation's.
    pub fn publish(&mut self, generation: u64, root: &[u8]) -> io::Result<()> {
        if generation <= self.generation {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("generation {generation} is not after {}", self.generation),
            ));
        }
        let h = Header::read(&self.file).map_err(io::Error::other)?;
        let active = (h.u64(at::ACTIVE) & 1) as usize;
        let target = 1 - active;
        let len = root.len() as u64;
        let offset = self.place(len)?;
        let slot = at::SLOTS + target as u64 * at::SLOT_LEN;
        let seq = self.begin_write(slot, h.slot(target).seq)?;
        self.file.write_all_at(root, offset)?;
        let checksum = u64::from(crc32fast::hash(root));
        let mut desc = [0u8; 32];
        for (i, v) in [generation, offset, len, checksum].into_iter().enumerate() {
            put_u64(&mut desc, 8 * i as u64, v);
        }
        self.file.write_all_at(&desc, slot + 8)?;
        self.store_u64(slot, seq + 1)?;

        let hseq = self.begin_write(at::SEQ, h.u64(at::SEQ))?;
        let mut gen_active = [0u8; 16];
        put_u64(&mut gen_active, 0, generation);
        put_u64(&mut gen_active, at::ACTIVE - at::GENERATION, target as u64);
        self.file.write_all_at(&gen_active, at::GENERATION)?;
        self.store_u64(at::SEQ, hseq + 1)?;
        (self.generation, self.written) = (generation, generation);
        self.active = std::mem::take(&mut self.pending);

        // Only this writer (holding the lock) changes the futex word.
        self.store_u32(at::NOTIFY, h.u32(at::NOTIFY).wrapping_add(1))?;
        futex_wake(self.notify_addr());
        Ok(())
    }

    /// Publishes `table` whole as `generation`: every chunk written anew (for tools and tests;
    /// config-sync keeps an [`Encoder`](crate::build::Encoder) so that it writes only what
    /// changed).
    pub fn publish_table(&mut self, generation: u64, table: &crate::Table) -> io::Result<()> {
        self.discard();
        let mut root = crate::build::Encoder::default()
            .encode(table, generation, self)
            .map_err(io::Error::other)?;
        crate::build::stamp_generation(&mut root, generation).map_err(io::Error::other)?;
        self.publish(generation, &root)
    }

    /// Forgets what was stored or kept since the last publication (an encoding that failed or
    /// found nothing changed).
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Finds room for `len` bytes that neither the active generation nor the pending one uses
    /// (first fit), grows the file to hold them, and reserves them for the pending one.
    fn place(&mut self, len: u64) -> io::Result<u64> {
        let mut used: Vec<(u64, u64)> = self.active.iter().chain(&self.pending).copied().collect();
        used.sort_unstable();
        let mut at = PAGE;
        for (offset, l) in used {
            if at + len <= offset {
                break;
            }
            at = at.max(align_up(offset + l, DATA_ALIGN));
        }
        let end = at + len;
        if self.file.metadata()?.len() < end {
            self.file.set_len(end)?;
        }
        self.pending.push((at, len));
        Ok(at)
    }

    /// Marks the start of a seqlock write at `at` whose value was `current`; returns the odd
    /// value stored (store it + 1 when done).
    fn begin_write(&self, at: u64, current: u64) -> io::Result<u64> {
        // A writer that died mid-write left the count odd; step to the next odd value.
        let odd = if current & 1 == 1 { current + 2 } else { current + 1 };
        self.store_u64(at, odd)?;
        Ok(odd)
    }

    fn store_u64(&self, at: u64, v: u64) -> io::Result<()> {
        self.file.write_all_at(&v.to_ne_bytes(), at)
    }

    fn store_u32(&self, at: u64, v: u32) -> io::Result<()> {
        self.file.write_all_at(&v.to_ne_bytes(), at)
    }

    fn notify_addr(&self) -> *const u32 {
        // In bounds: the mapping is PAGE bytes and NOTIFY + 4 <= PAGE. Never dereferenced here.
        self.map.as_ptr().wrapping_add(at::NOTIFY as usize).cast()
    }
}

impl Store for SegmentWriter {
    fn store(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let offset = self.place(bytes.len() as u64)?;
        self.file.write_all_at(bytes, offset)?;
        Ok(offset)
    }

    fn keep(&mut self, chunk: &ChunkRef) {
        self.pending.push((chunk.offset, u64::from(chunk.len)));
    }
}

/// The reading side (lb). Polling it costs one `pread` of the header.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    /// Only for `futex(2)`'s address; never dereferenced (see the module docs).
    map: MmapRaw,
    identity: (u64, u64),
}

impl SegmentReader {
    /// Opens an existing segment and checks its header.
    pub fn open(path: &Path) -> Result<SegmentReader, ReadError> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        check_private(path, &meta)?;
        if meta.len() < PAGE {
            return Err(ReadError::Header(format!("{} is shorter than a header", path.display())));
        }
        Header::read(&file)?.check()?;
        let map = MmapOptions::new().len(PAGE as usize).map_raw_read_only(&file)?;
        Ok(SegmentReader { path: path.to_owned(), file, map, identity: (meta.dev(), meta.ino()) })
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The published generation (0 when none), without copying the table. An error when the
    /// header became unreadable or is no longer a segment's (truncated, scribbled on).
    pub fn published(&self) -> Result<u64, ReadError> {
        let h = Header::read(&self.file)?;
        h.check()?;
        Ok(h.u64(at::GENERATION))
    }

    /// Current value of the futex word (0 when unreadable); pass it to [`wait`](Self::wait).
    pub fn notify_word(&self) -> u32 {
        Header::read(&self.file).map_or(0, |h| h.u32(at::NOTIFY))
    }

    /// Sleeps until the writer publishes (the futex word moves away from `seen`) or `timeout`.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let addr = self.map.as_ptr().wrapping_add(at::NOTIFY as usize).cast();
        if !futex_wait(addr, seen, timeout) {
            // The page is gone (the file was truncated): the kernel refused the wait instead of
            // sleeping. Sleep here so the caller's loop does not spin.
            std::thread::sleep(timeout);
        }
    }

    /// `true` when `path` now names another file (the writer recreated the segment) or none.
    pub fn replaced(&self) -> bool {
        match fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.identity,
            Err(_) => true,
        }
    }

    /// Copies the published root out of the segment. `Ok(None)` when nothing is published.
    pub fn read(&self) -> Result<Option<Snapshot>, ReadError> {
        // Checked at every intake too: a chmod after lb opened the file counts.
        check_private(&self.path, &self.file.metadata()?)?;
        for _ in 0..READ_ATTEMPTS {
            let h = Header::read(&self.file)?;
            h.check()?;
            let hseq = h.u64(at::SEQ);
            if hseq & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let active = (h.u64(at::ACTIVE) & 1) as usize;
            let generation = h.u64(at::GENERATION);
            if generation == 0 {
                return Ok(None);
            }
            let slot = h.slot(active);
            if slot.seq & 1 == 1 || slot.generation != generation {
                continue;
            }
            let (offset, len) = (slot.offset, slot.len);
            if len > MAX_TABLE_BYTES || offset < PAGE {
                return Err(ReadError::Descriptor {
                    generation,
                    reason: format!("offset {offset} len {len}"),
                });
            }
            let mut bytes = AlignedVec::<16>::new();
            bytes.resize(len as usize, 0);
            let copied = self.file.read_exact_at(&mut bytes, offset);
            let snapshot = Snapshot { generation, bytes, seqs: (hseq, active, slot.seq) };
            // The header again: the copy is good only if neither seqlock moved meanwhile.
            match copied {
                _ if !self.still(&snapshot)? => continue,
                Ok(()) => {}
                // The file is shorter than the descriptor says and the slot did not move: bad.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ReadError::Descriptor {
                        generation,
                        reason: format!("points past the end of the file ({offset}+{len})"),
                    });
                }
                Err(e) => return Err(e.into()),
            }
            let found = crc32fast::hash(&snapshot.bytes);
            if u64::from(found) != slot.checksum {
                return Err(ReadError::Checksum {
                    generation,
                    expected: slot.checksum as u32,
                    found,
                });
            }
            return Ok(Some(snapshot));
        }
        Err(ReadError::Busy)
    }

    /// Whether `snapshot`'s generation is still the published one, untouched: nothing copied
    /// since it was taken (its chunks) can be torn.
    fn still(&self, snapshot: &Snapshot) -> Result<bool, ReadError> {
        let after = Header::read(&self.file)?;
        let (hseq, active, slot) = snapshot.seqs;
        Ok(after.u64(at::SEQ) == hseq && after.slot(active).seq == slot)
    }

    /// Copies `len` bytes at `offset` (a chunk) out of the segment.
    fn read_chunk(&self, offset: u64, len: u32) -> io::Result<AlignedVec<16>> {
        if offset < PAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a chunk inside the header"));
        }
        let mut bytes = AlignedVec::<16>::new();
        bytes.resize(len as usize, 0);
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    /// Reads and validates the published generation: its root, then the chunks `previous`
    /// does not hold (shared with it otherwise), retried while the writer publishes over the
    /// copy. `Ok(None)` when nothing is published.
    pub fn open_router(&self, previous: Option<&Router>) -> Result<Option<Router>, ReadError> {
        for _ in 0..READ_ATTEMPTS {
            let Some(mut snapshot) = self.read()? else { return Ok(None) };
            let mut budget = MAX_TABLE_BYTES.saturating_sub(snapshot.bytes.len() as u64);
            let mut fetch = |chunk: &ArchivedChunkRef| {
                let (offset, len) = (chunk.offset.to_native(), chunk.len.to_native());
                let failed = |reason: String| TableError::Chunk {
                    id: chunk.id.to_native(),
                    offset,
                    len,
                    reason,
                };
                budget = budget
                    .checked_sub(u64::from(len))
                    .ok_or_else(|| failed(format!("beyond {MAX_TABLE_BYTES} bytes in all")))?;
                self.read_chunk(offset, len).map_err(|e| failed(e.to_string()))
            };
            let generation = snapshot.generation;
            let root = std::mem::take(&mut snapshot.bytes);
            let opened = Router::open_parts(root, Some(generation), previous, &mut fetch);
            if !self.still(&snapshot)? {
                continue;
            }
            return opened.map(Some).map_err(|e| ReadError::Table { generation, error: e });
        }
        Err(ReadError::Busy)
    }
}

/// lb's side of the applied file: one generation per core. Written with `pwrite` only, so a
/// truncated or deleted file costs a repair, never a fault: each core's report goes into the
/// process's own copy first, and [`repair`](Self::repair) rewrites the file from it.
#[derive(Debug)]
pub struct AppliedWriter {
    path: PathBuf,
    cores: usize,
    generations: Vec<AtomicU64>,
    /// Another live lb recreated the file (a binary upgrade): this one no longer writes it.
    superseded: std::sync::atomic::AtomicU32,
}

/// What [`AppliedWriter::repair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The file says what this lb knows.
    Intact,
    /// It did not (truncated, changed, replaced, deleted) and was rewritten.
    Rewritten,
    /// Another running lb (this pid) owns the file now: a new lb took over this segment, and
    /// this one stops writing the file.
    Superseded(u32),
}

impl AppliedWriter {
    /// Creates (replacing) the applied file for `cores` cores, all at generation 0.
    pub fn create(path: &Path, cores: usize) -> io::Result<AppliedWriter> {
        if cores > MAX_CORES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{cores} cores, at most {MAX_CORES}"),
            ));
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let writer = AppliedWriter {
            path: path.to_owned(),
            cores,
            generations: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            superseded: std::sync::atomic::AtomicU32::new(0),
        };
        let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all_at(&writer.page(), 0)?;
        fs::rename(&tmp, path)?;
        Ok(writer)
    }

    /// Records that `core` now serves `generation`: one `pwrite` of its slot (a file that
    /// was removed meanwhile is created again, whole).
    pub fn set(&self, core: usize, generation: u64) {
        let Some(slot) = self.generations.get(core) else { return };
        slot.store(generation, Ordering::Release);
        if self.owner_elsewhere().is_some() {
            return;
        }
        let at = at::APPLIED_SLOTS + 8 * core as u64;
        let written = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.write_all_at(&generation.to_ne_bytes(), at));
        if written.is_err() {
            let _ = self.rewrite();
        }
    }

    /// Checks the file against this process's copy and rewrites it when it differs (truncated,
    /// scribbled on, deleted, replaced). Returns whether it had to. Called periodically off the
    /// request path.
    pub fn repair(&self) -> io::Result<Repair> {
        if let Some(pid) = self.owner_elsewhere() {
            return Ok(Repair::Superseded(pid));
        }
        let page = self.page();
        let mut current = vec![0u8; page.len()];
        let intact = File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut current, 0))
            .is_ok_and(|()| current == page);
        if intact {
            return Ok(Repair::Intact);
        }
        self.rewrite()?;
        Ok(Repair::Rewritten)
    }

    /// The pid of another running lb whose intact applied file is at the path, if any (and
    /// from then on, for good: an lb that was superseded never takes the file back).
    fn owner_elsewhere(&self) -> Option<u32> {
        let known = self.superseded.load(Ordering::Acquire);
        if known != 0 {
            return Some(known);
        }
        let head = File::open(&self.path).and_then(|f| applied_head(&f)).ok()?;
        let pid = get_u32(&head, at::APPLIED_PID);
        let alive = pid != 0 && Path::new(&format!("/proc/{pid}")).exists();
        if pid == std::process::id() || !alive {
            return None;
        }
        self.superseded.store(pid, Ordering::Release);
        Some(pid)
    }

    fn rewrite(&self) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&self.path)?;
        if file.metadata()?.len() < PAGE {
            file.set_len(PAGE)?;
        }
        file.write_all_at(&self.page(), 0)
    }

    /// The file's header and slots as this process knows them.
    fn page(&self) -> Vec<u8> {
        let mut page = vec![0u8; (at::APPLIED_SLOTS as usize) + 8 * self.cores];
        put_u64(&mut page, at::MAGIC, APPLIED_MAGIC);
        put_u32(&mut page, at::APPLIED_VERSION, SEGMENT_VERSION);
        put_u32(&mut page, at::APPLIED_CORES, self.cores as u32);
        put_u32(&mut page, at::APPLIED_PID, std::process::id());
        for (i, g) in self.generations.iter().enumerate() {
            put_u64(&mut page, at::APPLIED_SLOTS + 8 * i as u64, g.load(Ordering::Acquire));
        }
        page
    }
}

/// What lb reports through the applied file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// lb's process id.
    pub pid: u32,
    /// Generation served by each core (0: none yet).
    pub cores: Vec<u64>,
}

impl Applied {
    /// The generation every core has reached.
    pub fn min(&self) -> u64 {
        self.cores.iter().copied().min().unwrap_or(0)
    }
}

/// Reads lb's applied file (config-sync side) with `pread`. Opens the file on each call, which
/// also follows an lb restart that recreated it.
pub fn read_applied(path: &Path) -> io::Result<Applied> {
    let file = File::open(path)?;
    let head = applied_head(&file)?;
    let cores = (get_u32(&head, at::APPLIED_CORES) as usize).min(MAX_CORES);
    let mut slots = vec![0u8; 8 * cores];
    file.read_exact_at(&mut slots, at::APPLIED_SLOTS)?;
    Ok(Applied {
        pid: get_u32(&head, at::APPLIED_PID),
        cores: (0..cores).map(|i| get_u64(&slots, 8 * i as u64)).collect(),
    })
}

/// The applied file's header (magic checked), read with one `pread`.
fn applied_head(file: &File) -> io::Result<[u8; at::APPLIED_SLOTS as usize]> {
    let mut head = [0u8; at::APPLIED_SLOTS as usize];
    file.read_exact_at(&mut head, 0)?;
    if get_u64(&head, at::MAGIC) != APPLIED_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "applied file: bad magic"));
    }
    Ok(head)
}

/// The native-endian `u64` at byte `at` of `b` (0 past its end).
fn get_u64(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// The native-endian `u32` at byte `at` of `b` (0 past its end).
fn get_u32(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_ne_bytes)
}

fn put_u64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut [u8], at: u64, v: u32) {
    b[at as usize..at as usize + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The applied file that goes with a segment path.
pub fn applied_path(segment: &Path) -> PathBuf {
    sibling(segment, ".applied")
}

/// The file in which lb names the listeners it could not bind (`<segment>.listeners`).
pub fn listeners_path(segment: &Path) -> PathBuf {
    sibling(segment, ".listeners")
}

/// A listener lb could not open: the table's address (`None`: lb's bind address) and port.
pub type BindKey = (Option<std::net::IpAddr>, u16);

/// lb's side: replaces the listeners file with `failures` (one line each: address or `*`,
/// port, error), atomically.
pub fn write_bind_failures(
    path: &Path,
    failures: &std::collections::BTreeMap<BindKey, String>,
) -> io::Result<()> {
    let mut text = String::new();
    for ((addr, port), error) in failures {
        let addr = addr.map_or_else(|| "*".to_owned(), |a| a.to_string());
        let error = error.replace(['\n', '\t'], " ");
        text.push_str(&format!("{addr}\t{port}\t{error}\n"));
    }
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// config-sync's side: the listeners lb could not bind (empty when the file is missing; lines
/// that do not parse are skipped: the file is lb's, but anyone may write it).
pub fn read_bind_failures(path: &Path) -> std::collections::BTreeMap<BindKey, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else { return out };
    for line in text.lines().take(4096) {
        let mut parts = line.splitn(3, '\t');
        let (Some(addr), Some(port), Some(error)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let addr = match addr {
            "*" => None,
            a => match a.parse() {
                Ok(ip) => Some(ip),
                Err(_) => continue,
            },
        };
        let Ok(port) = port.parse::<u16>() else { continue };
        out.insert((addr, port), error.chars().take(200).collect());
    }
    out
}

/// A fresh segment (header only, nothing published) renamed over `path`: readers of the old
/// file notice the new inode and wait for the next publication.
fn fresh_segment(path: &Path) -> io::Result<(File, MmapRaw, (u64, u64))> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    file.set_len(PAGE)?;
    let mut h = [0u8; at::HEADER_LEN];
    put_u64(&mut h, at::MAGIC, SEGMENT_MAGIC);
    put_u32(&mut h, at::SEGMENT_VERSION, SEGMENT_VERSION);
    put_u32(&mut h, at::FORMAT_VERSION, FORMAT_VERSION);
    put_u32(&mut h, at::WRITER_PID, std::process::id());
    file.write_all_at(&h, 0)?;
    let map = MmapOptions::new().len(PAGE as usize).map_raw(&file)?;
    let meta = file.metadata()?;
    fs::rename(&tmp, path)?;
    Ok((file, map, (meta.dev(), meta.ino())))
}

/// Refuses a segment that anyone but its owner may read or write: it carries private keys, and
/// a file others can write is a table anyone could have published.
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), ReadError> {
    let mode = meta.mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(ReadError::Exposed(format!(
        "{} has mode {mode:03o}: a table carries private keys, so lb reads only a segment its owner alone can read and write (0600, as config-sync creates it)",
        path.display()
    )))
}

/// Creates `dir` (and its parents) if missing; a directory this creates is 0700.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Takes the exclusive lock at `lock` (created if missing) for the writer of `segment`.
fn lock_exclusive(lock: &Path, segment: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(lock)?;
    // SAFETY: flock on a valid descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(file)
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("{}: another config-sync publishes here ({e})", segment.display()),
        ))
    }
}

/// `FUTEX_WAIT` on a word of a shared file mapping. `false` when the kernel could not read
/// the word (`EFAULT`: the page is gone because the file was truncated).
fn futex_wait(word: *const u32, expected: u32, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is within a live MAP_SHARED mapping that we never dereference ourselves;
    // FUTEX_WAIT (not private) so the kernel keys it by file and offset and a wake from the
    // writer's process reaches us. Only the kernel reads the word (a missing page is EFAULT,
    // not a signal) and the timespec, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EFAULT)
}

fn futex_wake(word: *const u32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE reads nothing but the address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Table;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-shm-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir.join("table")
    }

    #[test]
    fn publish_then_read_each_generation() {
        let path = temp_path("rw");
        let mut w = SegmentWriter::open(&path).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert!(r.read().unwrap().is_none());
        for generation in 1..=5u64 {
            let bytes = vec![generation as u8; 1000 * generation as usize];
            w.publish(generation, &bytes).unwrap();
            let snap = r.read().unwrap().unwrap();
            assert_eq!(snap.generation, generation);
            assert_eq!(&snap.bytes[..], &bytes[..]);
        }
        assert!(w.publish(5, b"x").is_err(), "generations only go up");
    }

    /// Fifty generations of a table with one route changed each: every one reads back as the
    /// table published, the reader reads only the changed chunks (and the root), and the file
    /// stays within about twice the table.
    #[test]
    fn chunked_generations_read_only_what_changed_in_bounded_space() {
        let path = temp_path("chunks");
        let mut w = SegmentWriter::open(&path).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        let mut table = crate::fixtures::sample();
        let last = table.matches[5].clone();
        table.matches.extend((0..2000).map(|_| last.clone()));
        let mut encoder = crate::build::Encoder::default();
        let mut previous: Option<Router> = None;
        let mut whole = 0;
        for generation in 1..=50u64 {
            let at = (generation as usize * 37) % table.matches.len();
            table.matches[at].method = Some(format!("M{generation}"));
            let mut root = encoder.encode(&table, generation, &mut w).unwrap();
            crate::build::stamp_generation(&mut root, generation).unwrap();
            w.publish(generation, &root).unwrap();
            let router = r.open_router(previous.as_ref()).unwrap().unwrap();
            assert_eq!(router.generation(), generation);
            let got = router.to_native().unwrap();
            assert_eq!(Table { generation: 0, ..got }, Table { generation: 0, ..table.clone() });
            let intake = router.intake();
            if generation == 1 {
                whole = router.size();
                assert_eq!(intake.kept, 0);
            } else {
                assert_eq!(intake.read, 1, "generation {generation}: {intake:?}");
                assert!(intake.bytes < whole / 4, "{intake:?} of {whole}");
            }
            previous = Some(router);
        }
        let file = fs::metadata(&path).unwrap().len();
        assert!(
            file < PAGE + 2 * whole as u64 + 64 * 1024,
            "{file} bytes for a {whole}-byte table"
        );
    }

    #[test]
    fn writer_reopen_keeps_generation_and_readers() {
        let path = temp_path("reopen");
        let mut w = SegmentWriter::open(&path).unwrap();
        w.publish(7, b"seven").unwrap();
        drop(w);
        let r = SegmentReader::open(&path).unwrap();
        let mut w = SegmentWriter::open(&path).unwrap();
        assert_eq!(w.generation(), 7);
        assert!(!r.replaced());
        w.publish(8, b"eight").unwrap();
        assert_eq!(&r.read().unwrap().unwrap().bytes[..], b"eight");
    }

    #[test]
    fn segment_is_private_and_an_exposed_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("mode");
        let mut w = SegmentWriter::open(&path).unwrap();
        w.publish(1, b"one").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let r = SegmentReader::open(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = r.read().unwrap_err();
        assert!(matches!(err, ReadError::Exposed(_)), "{err}");
        assert!(err.to_string().contains("mode 644"), "{err}");
        assert!(matches!(SegmentReader::open(&path), Err(ReadError::Exposed(_))));
        // The writer puts it right when it opens the file again.
        drop(w);
        let _w = SegmentWriter::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(SegmentReader::open(&path).unwrap().read().unwrap().is_some());
        let applied = applied_path(&path);
        let _a = AppliedWriter::create(&applied, 2).unwrap();
        assert_eq!(mode(&applied), 0o600);
    }

    #[test]
    fn second_writer_is_refused() {
        let path = temp_path("lock");
        let _w = SegmentWriter::open(&path).unwrap();
        let err = SegmentWriter::open(&path).unwrap_err();
        assert!(err.to_string().contains("another config-sync"), "{err}");
    }

    #[test]
    fn corrupted_slot_fails_checksum() {
        let path = temp_path("crc");
        let mut w = SegmentWriter::open(&path).unwrap();
        w.publish(1, &[1u8; 100]).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[9], PAGE + 10).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert!(matches!(r.read(), Err(ReadError::Checksum { generation: 1, .. })));
    }

    #[test]
    fn foreign_file_is_refused() {
        let path = temp_path("foreign");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![0u8; 8192]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SegmentReader::open(&path), Err(ReadError::Header(_))));
        // The writer replaces it with a fresh segment.
        let w = SegmentWriter::open(&path).unwrap();
        assert_eq!(w.generation(), 0);
        assert!(SegmentReader::open(&path).is_ok());
    }

    #[test]
    fn wait_returns_on_publish() {
        let path = temp_path("wait");
        let mut w = SegmentWriter::open(&path).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        let seen = r.notify_word();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            r.wait(seen, Duration::from_secs(10));
            (start.elapsed(), r.published().unwrap())
        });
        std::thread::sleep(Duration::from_millis(50));
        w.publish(1, b"one").unwrap();
        let (waited, published) = t.join().unwrap();
        assert_eq!(published, 1);
        assert!(waited < Duration::from_secs(5), "woken by the publish, not the timeout");
    }

    #[test]
    fn concurrent_reads_are_never_torn() {
        let path = temp_path("torn");
        let mut w = SegmentWriter::open(&path).unwrap();
        w.publish(1, &[1u8; 4096]).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let mut seen = 0;
            for _ in 0..2000 {
                match r.read() {
                    Ok(Some(s)) => {
                        let fill = s.generation as u8;
                        assert!(
                            s.bytes.iter().all(|&b| b == fill),
                            "torn copy of {}",
                            s.generation
                        );
                        seen += 1;
                    }
                    Ok(None) => unreachable!(),
                    Err(ReadError::Busy) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            seen
        });
        for generation in 2..400u64 {
            let len = 4096 + (generation as usize % 7) * 1000;
            w.publish(generation, &vec![generation as u8; len]).unwrap();
        }
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn two_writers_started_together_on_a_fresh_path_never_both_run() {
        for round in 0..50 {
            let path = temp_path(&format!("race-{round}"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        SegmentWriter::open(&path).ok()
                    })
                })
                .collect();
            let writers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(writers.iter().flatten().count(), 1, "round {round}");
        }
    }

    #[test]
    fn truncated_or_scribbled_segment_is_an_error_and_the_writer_repairs_it() {
        let path = temp_path("truncate");
        let mut w = SegmentWriter::open(&path).unwrap();
        w.publish(1, b"one").unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(w.check().unwrap(), None);

        // Truncated under both: errors, no fault; a wait does not spin.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        assert!(matches!(r.published(), Err(ReadError::Header(_))));
        assert!(matches!(r.read(), Err(ReadError::Header(_))));
        let start = std::time::Instant::now();
        r.wait(r.notify_word(), Duration::from_millis(50));
        assert!(start.elapsed() >= Duration::from_millis(40), "wait on a truncated file spun");
        assert!(matches!(w.check().unwrap(), Some(Damage::Header(_))));
        assert!(r.replaced(), "the repair puts a new file in place");
        w.publish(2, b"two").unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(&r.read().unwrap().unwrap().bytes[..], b"two");

        // Scribbled on: the generation moved under the writer.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&77u64.to_ne_bytes(), at::GENERATION).unwrap();
        assert!(matches!(w.check().unwrap(), Some(Damage::Header(_))));
        w.publish(3, b"three").unwrap();

        // Deleted, or replaced by someone's rename.
        fs::remove_file(&path).unwrap();
        assert_eq!(w.check().unwrap(), Some(Damage::Replaced));
        let other = path.with_file_name("other");
        fs::write(&other, b"not a segment").unwrap();
        fs::rename(&other, &path).unwrap();
        assert_eq!(w.check().unwrap(), Some(Damage::Replaced));
        w.publish(4, b"four").unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.read().unwrap().unwrap().generation, 4);
        assert_eq!(w.check().unwrap(), None);
    }

    #[test]
    fn truncated_or_deleted_applied_file_is_repaired_from_memory() {
        let path = temp_path("applied-repair");
        let a = applied_path(&path);
        let w = AppliedWriter::create(&a, 2).unwrap();
        w.set(0, 3);
        w.set(1, 3);
        assert_eq!(w.repair().unwrap(), Repair::Intact);
        OpenOptions::new().write(true).open(&a).unwrap().set_len(0).unwrap();
        assert!(read_applied(&a).is_err());
        w.set(0, 4);
        assert_eq!(w.repair().unwrap(), Repair::Rewritten);
        assert_eq!(read_applied(&a).unwrap().cores, vec![4, 3]);
        fs::remove_file(&a).unwrap();
        w.set(1, 5);
        assert_eq!(read_applied(&a).unwrap().cores, vec![4, 5]);
        fs::write(&a, vec![0xffu8; 10]).unwrap();
        assert_eq!(w.repair().unwrap(), Repair::Rewritten);
        assert_eq!(read_applied(&a).unwrap().cores, vec![4, 5]);
        // A file of another live process (pid 1 here) is a takeover: left alone from then on.
        let mut foreign = w.page();
        foreign[at::APPLIED_PID as usize..at::APPLIED_PID as usize + 4]
            .copy_from_slice(&1u32.to_ne_bytes());
        fs::write(&a, &foreign).unwrap();
        assert_eq!(w.repair().unwrap(), Repair::Superseded(1));
        w.set(0, 9);
        assert_eq!(read_applied(&a).unwrap().pid, 1);
        assert_eq!(read_applied(&a).unwrap().cores, vec![4, 5]);
    }

    #[test]
    fn applied_round_trip() {
        let path = temp_path("applied");
        let a = applied_path(&path);
        let w = AppliedWriter::create(&a, 3).unwrap();
        w.set(0, 4);
        w.set(2, 5);
        let got = read_applied(&a).unwrap();
        assert_eq!(got.cores, vec![4, 0, 5]);
        assert_eq!(got.min(), 0);
        w.set(1, 4);
        assert_eq!(read_applied(&a).unwrap().min(), 4);
    }
}
