//! Shared-memory delivery: the table segment config-sync publishes into and lb reads from, and
//! the small "applied" file in which lb reports, per core, the generation it serves.
//!
//! Segment file (tmpfs, e.g. `/dev/shm/sluice/table`):
//!
//! ```text
//! 0      header page (4 KiB): magic, segment and table format versions, futex word, header
//!        seqlock, published generation and active slot, two slot descriptors
//! 4096.. slot data: two regions (A/B), placed so the slot being written never overlaps the
//!        active one
//! ```
//!
//! The writer fills the inactive slot under that slot's seqlock (odd while writing), then
//! switches `active`/`generation` under the header seqlock, bumps the futex word and wakes
//! waiters. A reader copies the active slot out with `pread` (never by dereferencing the
//! mapping, so a file that changes size cannot fault it), then re-checks both sequence numbers:
//! if either moved, the copy may be torn and it retries. A CRC32 of the slot catches what the
//! protocol cannot (a buggy or hostile writer); the copy then goes through full validation in
//! `view`. Only the header page is mapped, and only for its atomics.
//!
//! See `docs/table-format.md` for the byte layout.

#![allow(unsafe_code, reason = "maps the header page as atomics and calls futex(2)")]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use rkyv::util::AlignedVec;

use crate::format::FORMAT_VERSION;

/// `b"SLUICEtb"`, little-endian.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SLUICEtb");
/// Layout version of the segment header (the table inside has [`FORMAT_VERSION`]).
pub const SEGMENT_VERSION: u32 = 1;
/// `b"SLUICEak"`, little-endian.
pub const APPLIED_MAGIC: u64 = u64::from_le_bytes(*b"SLUICEak");
/// Most cores the applied file has room for.
pub const MAX_CORES: usize = 256;
/// Largest table a reader accepts, so a corrupted length cannot make it allocate without bound.
pub const MAX_TABLE_BYTES: u64 = 1 << 30;

const PAGE: u64 = 4096;
const DATA_ALIGN: u64 = 64;
const READ_ATTEMPTS: usize = 1000;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    segment_version: AtomicU32,
    format_version: AtomicU32,
    /// Futex word: incremented after each publication.
    notify: AtomicU32,
    writer_pid: AtomicU32,
    /// Seqlock over `generation` and `active`.
    seq: AtomicU64,
    generation: AtomicU64,
    active: AtomicU64,
    slots: [Slot; 2],
}

#[repr(C)]
struct Slot {
    /// Seqlock over the descriptor and the data it points at.
    seq: AtomicU64,
    generation: AtomicU64,
    offset: AtomicU64,
    len: AtomicU64,
    checksum: AtomicU64,
}

#[repr(C)]
struct AppliedHeader {
    magic: AtomicU64,
    version: AtomicU32,
    cores: AtomicU32,
    pid: AtomicU32,
    _reserved: AtomicU32,
    applied: [AtomicU64; MAX_CORES],
}

const _: () = assert!(size_of::<Header>() as u64 <= PAGE);
const _: () = assert!(size_of::<AppliedHeader>() as u64 <= PAGE);

/// Errors reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// I/O on the segment file failed.
    #[error("segment I/O: {0}")]
    Io(#[from] io::Error),
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
    /// The writer kept changing the slot while we copied it.
    #[error("segment kept changing during {READ_ATTEMPTS} attempts to copy it")]
    Busy,
}

/// One copied table generation, ready for [`Router::open_owned`](crate::Router::open_owned).
#[derive(Debug)]
pub struct Snapshot {
    /// Generation the header announced.
    pub generation: u64,
    /// The table bytes, copied out of the segment.
    pub bytes: AlignedVec<16>,
}

/// The publishing side (config-sync). Holds an exclusive `flock` on the segment so two
/// publishers cannot interleave.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    map: MmapRaw,
}

impl SegmentWriter {
    /// Opens the segment at `path`, creating it (and its directory) when missing or not a
    /// segment of this version. An existing valid segment is reused so its generation keeps
    /// counting up across restarts and readers keep their mapping.
    pub fn open(path: &Path) -> io::Result<SegmentWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        if let Ok(file) = OpenOptions::new().read(true).write(true).open(path)
            && file.metadata()?.len() >= PAGE
        {
            let map = MmapOptions::new().len(PAGE as usize).map_raw(&file)?;
            let writer = SegmentWriter { file, map };
            if writer.header().magic.load(Ordering::Acquire) == SEGMENT_MAGIC
                && writer.header().segment_version.load(Ordering::Acquire) == SEGMENT_VERSION
                && writer.header().format_version.load(Ordering::Acquire) == FORMAT_VERSION
            {
                lock_exclusive(&writer.file, path)?;
                writer.header().writer_pid.store(std::process::id(), Ordering::Release);
                return Ok(writer);
            }
        }
        // Build a fresh segment beside the old one and rename it into place: readers of the old
        // inode keep a consistent (if stale) view and notice the new inode on their next check.
        let (tmp, file, map) = fresh_page(path)?;
        let writer = SegmentWriter { file, map };
        let h = writer.header();
        h.segment_version.store(SEGMENT_VERSION, Ordering::Relaxed);
        h.format_version.store(FORMAT_VERSION, Ordering::Relaxed);
        h.writer_pid.store(std::process::id(), Ordering::Relaxed);
        h.magic.store(SEGMENT_MAGIC, Ordering::Release);
        lock_exclusive(&writer.file, &tmp)?;
        fs::rename(&tmp, path)?;
        Ok(writer)
    }

    /// The last published generation (0 when none).
    pub fn generation(&self) -> u64 {
        self.header().generation.load(Ordering::Acquire)
    }

    /// Publishes `bytes` as `generation`, which must be larger than the current one.
    pub fn publish(&mut self, generation: u64, bytes: &[u8]) -> io::Result<()> {
        let h = self.header();
        if generation <= h.generation.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("generation {generation} is not after {}", self.generation()),
            ));
        }
        let active = (h.active.load(Ordering::Acquire) & 1) as usize;
        let target = 1 - active;
        let (a_off, a_len) = if h.generation.load(Ordering::Acquire) == 0 {
            (PAGE, 0)
        } else {
            let a = &h.slots[active];
            (a.offset.load(Ordering::Acquire).max(PAGE), a.len.load(Ordering::Acquire))
        };
        let len = bytes.len() as u64;
        // Before the active slot if it fits there, else right after it.
        let offset =
            if PAGE + len <= a_off { PAGE } else { align_up(a_off + a_len, DATA_ALIGN).max(PAGE) };
        let slot = &h.slots[target];
        let seq = begin_write(&slot.seq);
        let end = offset + len;
        if self.file.metadata()?.len() < end {
            self.file.set_len(end)?;
        }
        self.file.write_all_at(bytes, offset)?;
        slot.generation.store(generation, Ordering::Relaxed);
        slot.offset.store(offset, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.checksum.store(u64::from(crc32fast::hash(bytes)), Ordering::Relaxed);
        slot.seq.store(seq + 1, Ordering::Release);

        let hseq = begin_write(&h.seq);
        h.active.store(target as u64, Ordering::Relaxed);
        h.generation.store(generation, Ordering::Relaxed);
        h.seq.store(hseq + 1, Ordering::Release);

        h.notify.fetch_add(1, Ordering::Release);
        futex_wake(&h.notify);
        Ok(())
    }

    fn header(&self) -> &Header {
        // SAFETY: `map` is a live shared mapping of at least PAGE bytes, page-aligned, and
        // `Header` (all atomics, size checked above) is valid for any bit pattern.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }
}

/// The reading side (lb). Cheap to poll: [`published`](Self::published) is one atomic load.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    identity: (u64, u64),
}

impl SegmentReader {
    /// Opens an existing segment and checks its header.
    pub fn open(path: &Path) -> Result<SegmentReader, ReadError> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.len() < PAGE {
            return Err(ReadError::Header(format!("{} is shorter than a header", path.display())));
        }
        let map = MmapOptions::new().len(PAGE as usize).map_raw_read_only(&file)?;
        let reader =
            SegmentReader { path: path.to_owned(), file, map, identity: (meta.dev(), meta.ino()) };
        let h = reader.header();
        let magic = h.magic.load(Ordering::Acquire);
        if magic != SEGMENT_MAGIC {
            return Err(ReadError::Header(format!("bad magic {magic:#018x}")));
        }
        let (sv, fv) =
            (h.segment_version.load(Ordering::Acquire), h.format_version.load(Ordering::Acquire));
        if sv != SEGMENT_VERSION || fv != FORMAT_VERSION {
            return Err(ReadError::Header(format!(
                "segment version {sv}/format {fv}, this reader knows {SEGMENT_VERSION}/{FORMAT_VERSION}"
            )));
        }
        Ok(reader)
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The published generation (0 when none), without copying anything.
    pub fn published(&self) -> u64 {
        self.header().generation.load(Ordering::Acquire)
    }

    /// Current value of the futex word; pass it to [`wait`](Self::wait).
    pub fn notify_word(&self) -> u32 {
        self.header().notify.load(Ordering::Acquire)
    }

    /// Sleeps until the writer publishes (the futex word moves away from `seen`) or `timeout`.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        futex_wait(&self.header().notify, seen, timeout);
    }

    /// `true` when `path` now names another file (the writer recreated the segment).
    pub fn replaced(&self) -> bool {
        match fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.identity,
            Err(_) => false,
        }
    }

    /// Copies the published table out of the segment. `Ok(None)` when nothing is published.
    pub fn read(&self) -> Result<Option<Snapshot>, ReadError> {
        let h = self.header();
        for _ in 0..READ_ATTEMPTS {
            let hseq = h.seq.load(Ordering::Acquire);
            if hseq & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let active = (h.active.load(Ordering::Relaxed) & 1) as usize;
            let generation = h.generation.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if h.seq.load(Ordering::Relaxed) != hseq {
                continue;
            }
            if generation == 0 {
                return Ok(None);
            }
            let slot = &h.slots[active];
            let sseq = slot.seq.load(Ordering::Acquire);
            if sseq & 1 == 1 {
                continue;
            }
            let slot_generation = slot.generation.load(Ordering::Relaxed);
            let offset = slot.offset.load(Ordering::Relaxed);
            let len = slot.len.load(Ordering::Relaxed);
            let checksum = slot.checksum.load(Ordering::Relaxed);
            if slot_generation != generation {
                continue;
            }
            if len > MAX_TABLE_BYTES || offset < PAGE {
                return Err(ReadError::Descriptor {
                    generation,
                    reason: format!("offset {offset} len {len}"),
                });
            }
            let mut bytes = AlignedVec::<16>::with_capacity(len as usize);
            bytes.resize(len as usize, 0);
            match self.file.read_exact_at(&mut bytes, offset) {
                Ok(()) => {}
                // The file is shorter than the descriptor says: torn if the slot moved, else bad.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if slot.seq.load(Ordering::Acquire) != sseq {
                        continue;
                    }
                    return Err(ReadError::Descriptor {
                        generation,
                        reason: format!("points past the end of the file ({offset}+{len})"),
                    });
                }
                Err(e) => return Err(e.into()),
            }
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != sseq {
                continue;
            }
            let found = crc32fast::hash(&bytes);
            if u64::from(found) != checksum {
                return Err(ReadError::Checksum { generation, expected: checksum as u32, found });
            }
            return Ok(Some(Snapshot { generation, bytes }));
        }
        Err(ReadError::Busy)
    }

    fn header(&self) -> &Header {
        // SAFETY: as in `SegmentWriter::header`; the mapping is read-only and we only load.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }
}

/// lb's side of the applied file: one generation per core.
#[derive(Debug)]
pub struct AppliedWriter {
    map: MmapRaw,
    _file: File,
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
        let (tmp, file, map) = fresh_page(path)?;
        let writer = AppliedWriter { map, _file: file };
        let h = writer.header();
        h.version.store(SEGMENT_VERSION, Ordering::Relaxed);
        h.cores.store(cores as u32, Ordering::Relaxed);
        h.pid.store(std::process::id(), Ordering::Relaxed);
        h.magic.store(APPLIED_MAGIC, Ordering::Release);
        fs::rename(&tmp, path)?;
        Ok(writer)
    }

    /// Records that `core` now serves `generation`.
    pub fn set(&self, core: usize, generation: u64) {
        if let Some(slot) = self.header().applied.get(core) {
            slot.store(generation, Ordering::Release);
        }
    }

    fn header(&self) -> &AppliedHeader {
        // SAFETY: live shared mapping of PAGE bytes, page-aligned; all-atomic type that fits.
        unsafe { &*(self.map.as_ptr() as *const AppliedHeader) }
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

/// Reads lb's applied file (config-sync side). Opens the file on each call, which also follows
/// an lb restart that recreated it.
pub fn read_applied(path: &Path) -> io::Result<Applied> {
    let file = File::open(path)?;
    if file.metadata()?.len() < PAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "applied file too short"));
    }
    let map = MmapOptions::new().len(PAGE as usize).map_raw_read_only(&file)?;
    // SAFETY: live mapping of PAGE bytes, page-aligned; all-atomic type; loads only.
    let h = unsafe { &*(map.as_ptr() as *const AppliedHeader) };
    if h.magic.load(Ordering::Acquire) != APPLIED_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "applied file: bad magic"));
    }
    let cores = (h.cores.load(Ordering::Acquire) as usize).min(MAX_CORES);
    Ok(Applied {
        pid: h.pid.load(Ordering::Acquire),
        cores: h.applied[..cores].iter().map(|a| a.load(Ordering::Acquire)).collect(),
    })
}

/// The applied file that goes with a segment path.
pub fn applied_path(segment: &Path) -> PathBuf {
    sibling(segment, ".applied")
}

/// A new one-page file beside `path` (to be renamed over it once initialised), mapped shared.
fn fresh_page(path: &Path) -> io::Result<(PathBuf, File, MmapRaw)> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.set_len(PAGE)?;
    let map = MmapOptions::new().len(PAGE as usize).map_raw(&file)?;
    Ok((tmp, file, map))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Marks the start of a seqlock write; returns the even value to store (+1) when done.
fn begin_write(seq: &AtomicU64) -> u64 {
    // A writer that died mid-write left the count odd; step to the next odd value.
    let current = seq.load(Ordering::Relaxed);
    let odd = if current & 1 == 1 { current + 2 } else { current + 1 };
    seq.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    odd
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("{}: another config-sync publishes here ({e})", path.display()),
        ))
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` points into a live MAP_SHARED mapping; FUTEX_WAIT (not private) so the
    // kernel keys it by file and offset and a wake from the writer's process reaches us. The
    // kernel only reads the word and the timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE reads nothing but the address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
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
            (start.elapsed(), r.published())
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
