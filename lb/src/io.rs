//! The thin I/O layer over compio: runtime construction (io_uring with cooperative task
//! running and a provided-buffer ring), listening sockets with SO_REUSEPORT, and connection
//! input buffers.
//!
//! Input buffering is where idle memory goes, so it follows one rule: a connection that is
//! waiting for bytes holds no buffer. Reads take a buffer from the ring only when data arrives
//! (`read_managed`); the buffer returns to the ring as soon as its bytes are consumed. Only a
//! head split across reads (or a ring that ran dry, `ResourceBusy`) moves the bytes to a heap
//! buffer, taken from a capped per-core free list and given back when emptied.
//!
//! Everything runtime-specific lives here, so a runtime change (docs/runtime.md: re-measure
//! first) touches this file and little else.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;

use compio::BufResult;
use compio::driver::ProactorBuilder;
use compio::io::{AsyncReadExt, AsyncReadManaged, AsyncWriteExt};
use compio::net::{TcpListener, TcpSocket, TcpStream};
use compio::runtime::Runtime;

use crate::settings::BufferConfig;

/// Builds the per-core runtime: io_uring only (no readiness fallback), cooperative task
/// running (without it every completion interrupts the thread: 1.9× CPU per request in our
/// glommio measurement), and the provided-buffer ring reads draw from.
pub(crate) fn runtime(buffers: &BufferConfig) -> io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor
        .capacity(4096)
        .coop_taskrun(true)
        .taskrun_flag(true)
        .buffer_pool_size(NonZeroU16::new(buffers.ring_buffers.max(1)).unwrap_or(NonZeroU16::MIN))
        .buffer_pool_buffer_len(buffers.ring_buffer_len);
    let rt = Runtime::builder().with_proactor(proactor).build()?;
    // Creating the ring now reports a kernel without provided buffers at start, not at the
    // first request.
    rt.buffer_pool()?;
    Ok(rt)
}

/// A listening socket bound with SO_REUSEPORT (one per core on the same address, the kernel
/// spreads connections) and a real backlog (compio's plain bind sets neither).
pub(crate) async fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { TcpSocket::new_v4().await? } else { TcpSocket::new_v6().await? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr).await?;
    socket.listen(backlog).await
}

/// Connects with TCP_NODELAY (without it small writes wait for ACKs: −17 % CPU per request
/// measured when missing).
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes all of `out` and clears it, keeping its allocation.
pub(crate) async fn write_out(stream: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let mut w = stream;
    let BufResult(res, buf) = w.write_all(std::mem::take(out)).await;
    *out = buf;
    out.clear();
    res
}

/// Per-core free list of heap buffers, capped in count and in the capacity it keeps.
#[derive(Debug)]
pub(crate) struct Spare {
    list: RefCell<Vec<Vec<u8>>>,
    max_count: usize,
    max_capacity: usize,
    /// Buffers freed to the allocator since the last trim.
    freed: std::cell::Cell<usize>,
    /// `freed` at the previous tick, and for how many ticks neither it nor the list changed.
    settled: std::cell::Cell<(usize, usize, u32)>,
    /// Reads that found the buffer ring empty (a metric).
    pub(crate) ring_empty: std::cell::Cell<u64>,
}

/// Ticks (of a core's 100 ms control loop) a burst must have been over before trimming.
const SETTLED_TICKS: u32 = 10;

/// Heap buffers a core keeps through a quiet spell (enough for the split heads of a light
/// load; a burst grows the list again).
const SPARE_QUIET_KEEP: usize = 16;

impl Spare {
    /// An empty free list.
    pub(crate) fn new(config: &BufferConfig) -> Spare {
        Spare {
            list: RefCell::new(Vec::new()),
            max_count: config.spare_buffers,
            max_capacity: config.spare_capacity,
            freed: std::cell::Cell::new(0),
            settled: std::cell::Cell::new((0, 0, 0)),
            ring_empty: std::cell::Cell::new(0),
        }
    }

    /// Called every control-loop tick: once a burst has been over for a second (nothing freed
    /// and the list unchanged since), [`trim`](Self::trim)s. Connections still open do not
    /// hold it off: a burst's leftovers are returned even while a few slow clients remain.
    pub(crate) fn tick(&self) {
        let (freed, len) = (self.freed.get(), self.list.borrow().len());
        let (last_freed, last_len, ticks) = self.settled.get();
        let worth = freed > 0 || len > SPARE_QUIET_KEEP;
        let ticks = if worth && freed == last_freed && len == last_len { ticks + 1 } else { 0 };
        if ticks >= SETTLED_TICKS {
            self.trim();
            self.settled.set((0, self.list.borrow().len(), 0));
        } else {
            self.settled.set((freed, len, ticks));
        }
    }

    /// Shrinks the list to a few buffers and, when a burst left freed
    /// buffers in the allocator, gives that memory back to the kernel. Without it a burst of
    /// 1,000 connections with 60 KB partial heads left lb at 84 MB (from 15) after they closed:
    /// glibc keeps freed chunks below its mmap threshold in the thread's arena.
    fn trim(&self) {
        let mut list = self.list.borrow_mut();
        let dropped = list.len().saturating_sub(SPARE_QUIET_KEEP);
        list.truncate(SPARE_QUIET_KEEP);
        list.shrink_to_fit();
        drop(list);
        if dropped + self.freed.replace(0) > 0 {
            trim_heap();
        }
    }

    /// A cleared buffer, reused when one is free.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.list.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a buffer; dropped when the list is full or the buffer grew past the cap, so a
    /// burst does not leave memory behind.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut list = self.list.borrow_mut();
        if buf.capacity() <= self.max_capacity && list.len() < self.max_count {
            buf.clear();
            list.push(buf);
        } else {
            self.freed.set(self.freed.get() + 1);
        }
    }
}

/// Bytes received and not yet consumed.
#[derive(Debug, Default)]
pub(crate) enum InBuf {
    /// Nothing buffered: an idle connection holds no memory for input.
    #[default]
    Empty,
    /// A buffer from the provided-buffer ring; bytes before `start` are consumed.
    Ring {
        /// The ring buffer.
        buf: compio::driver::BufferRef,
        /// Consumed prefix.
        start: usize,
    },
    /// A heap buffer (partial heads, or an exhausted ring).
    Heap {
        /// The buffer.
        buf: Vec<u8>,
        /// Consumed prefix.
        start: usize,
    },
}

/// Bytes to ask for when reading into a heap buffer.
const HEAP_READ: usize = 16 * 1024;

impl InBuf {
    /// Unconsumed bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            InBuf::Empty => &[],
            InBuf::Ring { buf, start } => buf.get(*start..).unwrap_or(&[]),
            InBuf::Heap { buf, start } => buf.get(*start..).unwrap_or(&[]),
        }
    }

    /// Unconsumed bytes, writable (TLS records are decrypted in place).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            InBuf::Empty => &mut [],
            InBuf::Ring { buf, start } => buf.get_mut(*start..).unwrap_or(&mut []),
            InBuf::Heap { buf, start } => buf.get_mut(*start..).unwrap_or(&mut []),
        }
    }

    /// Appends `bytes` after the unconsumed ones (decrypted TLS records), in a heap buffer
    /// from `spare`.
    pub(crate) fn append(&mut self, bytes: &[u8], spare: &Spare) {
        let mut heap = self.take_heap(spare);
        heap.extend_from_slice(bytes);
        *self = if heap.is_empty() {
            spare.give(heap);
            InBuf::Empty
        } else {
            InBuf::Heap { buf: heap, start: 0 }
        };
    }

    /// The unconsumed bytes at the front of a heap buffer (from `spare` unless there is one
    /// already); `self` is left empty and a ring buffer goes back to the ring.
    fn take_heap(&mut self, spare: &Spare) -> Vec<u8> {
        match std::mem::take(self) {
            InBuf::Heap { mut buf, start } => {
                buf.drain(..start);
                buf
            }
            InBuf::Ring { buf, start } => {
                let mut heap = spare.take();
                heap.extend_from_slice(buf.get(start..).unwrap_or(&[]));
                heap
            }
            InBuf::Empty => spare.take(),
        }
    }

    /// Marks `n` bytes consumed; an emptied buffer goes back (to the ring or `spare`).
    pub(crate) fn consume(&mut self, n: usize, spare: &Spare) {
        let empty = match self {
            InBuf::Empty => true,
            InBuf::Ring { buf, start } => {
                *start = (*start + n).min(buf.len());
                *start == buf.len()
            }
            InBuf::Heap { buf, start } => {
                *start = (*start + n).min(buf.len());
                *start == buf.len()
            }
        };
        if empty {
            self.release(spare);
        }
    }

    /// Drops whatever is buffered.
    pub(crate) fn release(&mut self, spare: &Spare) {
        if let InBuf::Heap { buf, .. } = std::mem::take(self) {
            spare.give(buf);
        }
    }

    /// Reads more bytes after the unconsumed ones. Returns the number read, 0 at end of stream.
    pub(crate) async fn fill(&mut self, stream: &TcpStream, spare: &Spare) -> io::Result<usize> {
        if let InBuf::Empty = self {
            let mut reader = stream;
            match reader.read_managed(0).await {
                Ok(Some(buf)) => {
                    let n = buf.len();
                    *self = InBuf::Ring { buf, start: 0 };
                    return Ok(n);
                }
                Ok(None) => return Ok(0),
                // The ring is empty: this read goes to the heap instead.
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                    spare.ring_empty.set(spare.ring_empty.get() + 1);
                    tracing::trace!("buffer ring empty; reading into a heap buffer");
                }
                Err(e) => return Err(e),
            }
        }
        // Boxed: this path is rare (a head split across reads, or an empty ring), and inline
        // its state would grow every idle connection's task by ~150 bytes.
        Box::pin(self.fill_heap(stream, spare)).await
    }

    /// Appends a read into a heap buffer, moving what is left there first.
    async fn fill_heap(&mut self, stream: &TcpStream, spare: &Spare) -> io::Result<usize> {
        let mut heap = self.take_heap(spare);
        heap.reserve(HEAP_READ);
        let mut reader = stream;
        // `append` reads into the spare capacity; `read` would overwrite from the start.
        let BufResult(res, heap) = reader.append(heap).await;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                *self = InBuf::Heap { buf: heap, start: 0 };
                return Err(e);
            }
        };
        *self = if heap.is_empty() {
            spare.give(heap);
            InBuf::Empty
        } else {
            InBuf::Heap { buf: heap, start: 0 }
        };
        Ok(n)
    }
}

/// Whether an idle upstream connection is still clean: nothing received and no end of stream
/// since its last exchange finished. An idle HTTP/1.1 connection must be silent (RFC 9112
/// §9.3: a server may close it, but it cannot send before a request); any byte that arrives
/// now is a stray response or body that would be read as the *next* client's answer, and EOF
/// or an error means the peer is gone. One non-blocking `recv(MSG_PEEK)` (nothing is consumed;
/// ~0.3 µs), the check nginx's and HAProxy's idle-connection read events make.
#[allow(unsafe_code, reason = "one recv(2) with MSG_PEEK into a local byte")]
pub(crate) fn idle_clean(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: the descriptor is open for the lifetime of `stream`; the kernel writes at most
    // one byte into `byte`, which outlives the call. MSG_DONTWAIT makes it non-blocking.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// `shutdown(fd, SHUT_RDWR)` on a listening socket: a pending accept fails with `EINVAL` and
/// the backlog is handed to the port's other listeners (`tcp_migrate_req`) or reset.
#[allow(unsafe_code, reason = "one shutdown(2) call on a descriptor the listener task owns")]
pub(crate) fn shutdown_listener(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: `fd` belongs to a listener whose task is still alive (it is detached only after
    // this call and closes the socket itself once its accept fails); no memory is passed.
    if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Fixes glibc's mmap threshold at its initial value, 128 KiB, for lb's process. Left dynamic,
/// glibc raises the threshold to the size of every large block freed (up to 32 MiB): after the
/// first table copy of a few MB is freed, the next ones come from the heap and the per-core
/// structures opened beside them fragment it. Over a propagation run at 5,000 routes (6,000
/// changes, ~1,300 tables taken) lb grew from 13.9 to 22.3 MB; fixed at 128 KiB, 15.3 MB, and
/// intake was not measurably slower (validate-and-open 1.36 vs 1.41 ms). Fixed at 1 MiB it grew
/// to 20.5 MB. Nothing on the request path allocates 128 KiB (buffers come from the ring;
/// access-log blocks are 64 KiB and reused). `sluice lb` calls it before starting any thread.
#[allow(unsafe_code, reason = "one mallopt call; no pointers")]
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt takes no pointers and is meant to be called before other threads
    // allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap memory to the kernel (glibc's `malloc_trim`, all arenas).
#[allow(unsafe_code, reason = "one malloc_trim call; no pointers")]
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Descriptors kept back from the connection limit: listeners, the table segment and applied
/// file, the ring, mirrors, logging.
const FD_RESERVE: u64 = 64;

/// Raises the soft descriptor limit to the hard one (as nginx and HAProxy do) and returns the
/// resulting soft limit.
#[allow(unsafe_code, reason = "getrlimit/setrlimit on a local struct")]
pub(crate) fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above; the kernel only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// The default connection limit for a descriptor limit: each client connection may hold an
/// upstream one too, so half of what is left after a reserve (HAProxy derives its maxconn the
/// same way).
pub(crate) fn max_connections(nofile: u64) -> usize {
    (nofile.saturating_sub(FD_RESERVE) / 2).max(1).min(usize::MAX as u64) as usize
}

/// `CLOCK_MONOTONIC_COARSE` as (seconds, nanoseconds), through glibc's vDSO call (rustix's own
/// vDSO parser does not survive valgrind, which the benchmarks run lb under).
#[allow(unsafe_code, reason = "one clock_gettime call into a local timespec")]
pub(crate) fn monotonic_coarse() -> (i64, i64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; the clock id is a
    // constant the kernel supports since 2.6.32 (on failure `ts` stays zero, which only makes
    // the wheel fire late, never early).
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    (ts.tv_sec, ts.tv_nsec)
}
