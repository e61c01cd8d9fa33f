//! Access logs, off the request path: each core appends a compact binary record of every
//! finished exchange to a block of its own; full blocks (and every block at the core's 100 ms
//! tick) go to one writer thread, which formats them as JSON lines and writes them to stdout
//! or a file (reopened on SIGHUP, for logrotate). Blocks circulate between a core and the
//! writer ([`BLOCKS`] per core, [`BLOCK`] bytes each): when the writer falls behind and a core
//! has no free block, records are dropped and counted — a request never waits for the log.
//!
//! Request ids and W3C trace context are decided per request in `conn` (a generated
//! `X-Request-Id` when the client sent none; a `traceparent` started when asked for) and
//! logged with the record.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::clock::{self, Stamp};
use crate::http1::push_decimal;
use crate::metrics::Record;

/// Bytes per block.
const BLOCK: usize = 64 * 1024;
/// Blocks per core (in the core's hands, queued, or being written).
const BLOCKS: usize = 8;
/// Longest string kept of a logged field (a path, a user agent); longer ones are cut.
const MAX_FIELD: usize = 2048;

/// Where access logs go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogTarget {
    /// No access log.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// A file, appended to, reopened on SIGHUP.
    File(PathBuf),
}

/// `X-Request-Id` handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequestIds {
    /// A client's id is passed on; one is generated when it sent none.
    #[default]
    Generate,
    /// Always lb's own (a client's is replaced).
    Replace,
    /// Neither generated nor logged specially (a client's passes as any field).
    Off,
}

/// W3C trace context handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TraceContext {
    /// `traceparent`/`tracestate` pass through unchanged and are logged.
    #[default]
    Propagate,
    /// Also start a trace (a new `traceparent`, sampled flag set) for requests without one.
    Start,
}

/// Access-log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub target: LogTarget,
    /// Fraction of the records passing the filters that are written (1: all).
    pub sample: f64,
    /// Only exchanges with at least this status — or slower than `slower_than`, or without a
    /// response — are logged (0: all).
    pub min_status: u16,
    /// Exchanges at least this slow are logged whatever their status.
    pub slower_than: Option<Duration>,
    pub request_ids: RequestIds,
    pub trace: TraceContext,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            target: LogTarget::Off,
            sample: 1.0,
            min_status: 0,
            slower_than: None,
            request_ids: RequestIds::Generate,
            trace: TraceContext::Propagate,
        }
    }
}

/// Response flags (Envoy's short names, which operators grep for).
pub(crate) mod flags {
    /// No route: no listener or rule took the request.
    pub(crate) const NR: u16 = 1;
    /// No healthy upstream: the Service has no ready endpoints.
    pub(crate) const UH: u16 = 1 << 1;
    /// Upstream connection failure.
    pub(crate) const UF: u16 = 1 << 2;
    /// Upstream request timeout.
    pub(crate) const UT: u16 = 1 << 3;
    /// Upstream connection termination (closed or reset mid-exchange).
    pub(crate) const UC: u16 = 1 << 4;
    /// Upstream retry limit exceeded.
    pub(crate) const URX: u16 = 1 << 5;
    /// Downstream connection termination.
    pub(crate) const DC: u16 = 1 << 6;
    /// Downstream protocol error (a refused head or body framing).
    pub(crate) const DPE: u16 = 1 << 7;
    /// Downstream timeout (request head or body).
    pub(crate) const DT: u16 = 1 << 8;
    /// Local reply (lb answered itself: no table, misdirected, CORS, an invalid backend).
    pub(crate) const LR: u16 = 1 << 9;
    /// Upstream malformed response.
    pub(crate) const UMSDR: u16 = 1 << 10;

    pub(crate) const NAMES: [&str; 11] =
        ["NR", "UH", "UF", "UT", "UC", "URX", "DC", "DPE", "DT", "LR", "UMSDR"];
}

/// One core's side of the access log.
#[derive(Debug)]
pub(crate) struct CoreLog {
    core: usize,
    config: LogConfig,
    block: RefCell<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    full: SyncSender<(usize, Vec<u8>)>,
    /// Blocks this core made so far (at most [`BLOCKS`]).
    made: Cell<usize>,
    /// Records dropped for want of a free block; written.
    pub dropped: Cell<u64>,
    pub written: Cell<u64>,
    rng: Cell<u64>,
    /// Wall-clock time of an instant, refreshed every tick: start times cost no clock read.
    anchor: Cell<(Stamp, SystemTime)>,
}

/// One [`CoreLog`] per core, and the writer thread when records are written; `None` when
/// nothing is logged and no id is made (request ids off, trace context passed through).
pub(crate) fn start(config: &LogConfig, cores: usize) -> std::io::Result<Option<Vec<CoreLog>>> {
    let out = match &config.target {
        LogTarget::Off
            if config.request_ids == RequestIds::Off && config.trace == TraceContext::Propagate =>
        {
            return Ok(None);
        }
        LogTarget::Off => None,
        LogTarget::Stdout => Some(Output::Stdout),
        LogTarget::File(path) => Some(Output::File(path.clone(), open(path)?)),
    };
    let (full_tx, full_rx) = sync_channel(cores * BLOCKS);
    let mut returns = Vec::new();
    let mut logs = Vec::new();
    for core in 0..cores {
        let (free_tx, free_rx) = std::sync::mpsc::channel();
        returns.push(free_tx);
        logs.push(CoreLog {
            core,
            config: config.clone(),
            block: RefCell::new(Vec::new()),
            free: free_rx,
            full: full_tx.clone(),
            made: Cell::new(0),
            dropped: Cell::new(0),
            written: Cell::new(0),
            rng: Cell::new(seed(core)),
            anchor: Cell::new((clock::now(), SystemTime::now())),
        });
    }
    let Some(out) = out else { return Ok(Some(logs)) };
    let reopen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reopen))?;
    std::thread::Builder::new()
        .name("lb-access-log".into())
        .spawn(move || write_loop(out, &full_rx, &returns, &reopen))?;
    Ok(Some(logs))
}

fn seed(core: usize) -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(core as u64 + 1))) | 1
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

impl CoreLog {
    pub(crate) fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Whether records are written (else only ids are made).
    pub(crate) fn writing(&self) -> bool {
        self.config.target != LogTarget::Off
    }

    /// 64 random bits (xorshift64*; ids and sampling, not cryptography).
    pub(crate) fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Logs a finished exchange that took `duration`, if the filters and the sample keep it.
    pub(crate) fn append(&self, r: &Record, duration: Duration) {
        let status = r.status.get();
        let c = &self.config;
        let filtered = c.min_status > 0 || c.slower_than.is_some();
        let kept = !filtered
            || status == 0
            || (c.min_status > 0 && status >= c.min_status)
            || c.slower_than.is_some_and(|s| duration >= s);
        if !kept
            || (c.sample < 1.0 && (self.random() >> 11) as f64 / (1u64 << 53) as f64 >= c.sample)
        {
            return;
        }
        let (at, wall) = self.anchor.get();
        let start = if r.started >= at {
            wall + clock::between(at, r.started)
        } else {
            wall.checked_sub(clock::between(r.started, at)).unwrap_or(wall)
        };
        let start_us = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let text = r.text.borrow();
        let mut block = self.block.borrow_mut();
        // Length prefix, five numbers, status and flags, protocol, upstream address, the
        // rule's index, strings.
        let needed = 4 + 5 * 8 + 2 * 2 + 1 + 19 + 2 + text.len();
        if block.len() + needed > BLOCK && !self.swap(&mut block) {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        if block.capacity() == 0 {
            // The core's first block: one of its BLOCKS, so the writer's queue (BLOCKS per
            // core) can always take every block a core has.
            self.made.set(self.made.get() + 1);
            block.reserve_exact(BLOCK);
        }
        let b = &mut *block;
        b.extend_from_slice(&((needed as u32).to_le_bytes()));
        for v in [
            start_us,
            duration.as_micros() as u64,
            r.upstream_us.get(),
            r.bytes_in.get(),
            r.bytes_out.get(),
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&status.to_le_bytes());
        b.extend_from_slice(&r.flags.get().to_le_bytes());
        b.push(r.protocol.get());
        put_addr(b, r.upstream.get());
        b.extend_from_slice(&r.rule.get().to_le_bytes());
        b.extend_from_slice(&text);
        self.written.set(self.written.get() + 1);
    }

    /// Sends the current block to the writer and takes a free one; `false` when there is none.
    fn swap(&self, block: &mut Vec<u8>) -> bool {
        let next = match self.free.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty) if self.made.get() < BLOCKS => {
                self.made.set(self.made.get() + 1);
                Vec::with_capacity(BLOCK)
            }
            Err(_) => return false,
        };
        let full = std::mem::replace(block, next);
        if full.is_empty() {
            return true;
        }
        // Never full: at most BLOCKS per core circulate and the queue holds them all.
        let _ = self.full.try_send((self.core, full));
        true
    }

    /// The core's 100 ms tick: hands over what was logged since, refreshes the clock anchor.
    pub(crate) fn tick(&self) {
        self.anchor.set((clock::now(), SystemTime::now()));
        let mut block = self.block.borrow_mut();
        if !block.is_empty() {
            let _ = self.swap(&mut block);
        }
    }
}

fn put_addr(b: &mut Vec<u8>, addr: Option<SocketAddr>) {
    let (kind, octets, port) = match addr {
        None => (0u8, [0u8; 16], 0u16),
        Some(SocketAddr::V4(a)) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.ip().octets());
            (4, o, a.port())
        }
        Some(SocketAddr::V6(a)) => (6, a.ip().octets(), a.port()),
    };
    b.push(kind);
    b.extend_from_slice(&octets);
    b.extend_from_slice(&port.to_le_bytes());
}

/// The strings of a record, in order ([`put_text`] writes them, the writer reads them).
pub(crate) const TEXT_FIELDS: [&str; 10] = [
    "client",
    "method",
    "authority",
    "path",
    "user_agent",
    "request_id",
    "traceparent",
    "listener",
    "route",
    "upstream_service",
];

/// Appends one string field (cut to [`MAX_FIELD`]).
pub(crate) fn put_text(text: &mut Vec<u8>, value: &[u8]) {
    let v = &value[..value.len().min(MAX_FIELD)];
    text.extend_from_slice(&(v.len() as u16).to_le_bytes());
    text.extend_from_slice(v);
}

enum Output {
    Stdout,
    File(PathBuf, std::fs::File),
}

fn write_loop(
    mut out: Output,
    full: &Receiver<(usize, Vec<u8>)>,
    returns: &[Sender<Vec<u8>>],
    reopen: &AtomicBool,
) {
    let mut line = Vec::with_capacity(BLOCK * 2);
    loop {
        let first = match full.recv_timeout(Duration::from_secs(1)) {
            Ok(b) => Some(b),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if reopen.swap(false, Ordering::Relaxed)
            && let Output::File(path, file) = &mut out
        {
            match open(path) {
                Ok(f) => *file = f,
                Err(e) => warn!(file = %path.display(), "access log: cannot reopen: {e}"),
            }
        }
        let mut batch: Vec<(usize, Vec<u8>)> = first.into_iter().collect();
        while let Ok(b) = full.try_recv() {
            batch.push(b);
        }
        if batch.is_empty() {
            continue;
        }
        for (core, mut block) in batch {
            format_block(&block, &mut line);
            block.clear();
            if let Some(r) = returns.get(core) {
                let _ = r.send(block);
            }
        }
        let written = match &mut out {
            Output::Stdout => std::io::stdout().lock().write_all(&line),
            Output::File(_, f) => f.write_all(&line),
        };
        if let Err(e) = written {
            warn!("access log: {e}");
        }
        line.clear();
    }
}

/// A reader over one record's bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    fn u64(&mut self) -> u64 {
        let b = self.take(8);
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])
    }

    fn text(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }
}

/// Formats every record of a block as JSON lines onto `line`.
pub(crate) fn format_block(block: &[u8], line: &mut Vec<u8>) {
    let mut rest = block;
    while let Some(prefix) = rest.get(..4) {
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let Some(record) = rest.get(4..len) else { return };
        format_record(record, line);
        rest = &rest[len..];
    }
}

fn format_record(record: &[u8], out: &mut Vec<u8>) {
    let mut c = Cursor(record);
    let start_us = c.u64();
    let duration_us = c.u64();
    let upstream_us = c.u64();
    let bytes_in = c.u64();
    let bytes_out = c.u64();
    let status = c.u16();
    let flags = c.u16();
    let protocol = c.take(1).first().copied().unwrap_or(1);
    let kind = c.take(1).first().copied().unwrap_or(0);
    let octets = c.take(16);
    let port = c.u16();
    let rule = c.u16();
    let mut texts: [&[u8]; TEXT_FIELDS.len()] = [b""; TEXT_FIELDS.len()];
    for t in texts.iter_mut() {
        if c.0.is_empty() {
            break;
        }
        *t = c.text();
    }
    out.extend_from_slice(b"{\"start_time\":\"");
    rfc3339(out, start_us);
    out.push(b'"');
    let [
        client,
        method,
        authority,
        path,
        user_agent,
        request_id,
        traceparent,
        listener,
        route,
        service,
    ] = texts;
    string(out, b",\"client\":", client);
    string(out, b",\"method\":", method);
    string(out, b",\"authority\":", authority);
    string(out, b",\"path\":", path);
    out.extend_from_slice(match protocol {
        0 => &b",\"protocol\":\"HTTP/1.0\""[..],
        2 => b",\"protocol\":\"HTTP/2\"",
        _ => b",\"protocol\":\"HTTP/1.1\"",
    });
    out.extend_from_slice(b",\"status\":");
    push_decimal(out, u64::from(status));
    out.extend_from_slice(b",\"response_flags\":\"");
    if flags == 0 {
        out.push(b'-');
    } else {
        let mut first = true;
        for (i, n) in flags::NAMES.iter().enumerate() {
            if flags & (1 << i) != 0 {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(n.as_bytes());
                first = false;
            }
        }
    }
    out.extend_from_slice(b"\",\"bytes_received\":");
    push_decimal(out, bytes_in);
    out.extend_from_slice(b",\"bytes_sent\":");
    push_decimal(out, bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(out, duration_us);
    out.extend_from_slice(b",\"upstream_host\":");
    match kind {
        4 => {
            out.push(b'"');
            for (i, o) in octets.iter().take(4).enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(*o));
            }
            out.push(b':');
            push_decimal(out, u64::from(port));
            out.push(b'"');
        }
        6 => {
            let ip = <[u8; 16]>::try_from(octets)
                .map(std::net::Ipv6Addr::from)
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            let _ = write!(out, "\"[{ip}]:{port}\"");
        }
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_time_ms\":");
    if upstream_us == u64::MAX {
        out.extend_from_slice(b"null");
    } else {
        push_millis(out, upstream_us);
    }
    string(out, b",\"user_agent\":", user_agent);
    string(out, b",\"request_id\":", request_id);
    string(out, b",\"traceparent\":", traceparent);
    string(out, b",\"listener\":", listener);
    string(out, b",\"route\":", route);
    string(out, b",\"upstream_service\":", service);
    out.extend_from_slice(b",\"rule\":");
    if rule == u16::MAX {
        out.extend_from_slice(b"null");
    } else {
        push_decimal(out, u64::from(rule));
    }
    out.extend_from_slice(b"}\n");
}

/// `key` then `value` as a JSON string (`null` when empty).
fn string(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(key);
    if value.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        json_string(out, value);
    }
}

/// Microseconds as milliseconds with three decimals.
fn push_millis(out: &mut Vec<u8>, us: u64) {
    push_decimal(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Whether any of 8 bytes needs escaping in JSON or is not ASCII: a control (< 0x20), DEL or
/// above (≥ 0x7f), `"` or `\\` (word-at-a-time tests, no per-byte branch).
fn word_needs_care(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let at_or_above_del = (w.wrapping_add(ONES) | w) & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    (below_space | at_or_above_del | quote | backslash) != 0
}

/// A JSON string: UTF-8 passed with `"`, `\\` and controls escaped; bytes that are not UTF-8
/// become `\\u00XX` (a header may carry obs-text). Plain ASCII (the usual case) is found
/// eight bytes at a time and copied whole.
fn json_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    let chunks = value.chunks_exact(8);
    let tail = chunks.remainder();
    let plain = chunks.into_iter().all(|c| {
        !word_needs_care(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }) && tail.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.extend_from_slice(value);
        out.push(b'"');
        return;
    }
    let utf8 = std::str::from_utf8(value).is_ok();
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            0x80.. if !utf8 => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Writes `us` microseconds since the Unix epoch as RFC 3339 UTC with microseconds.
fn rfc3339(out: &mut Vec<u8>, us: u64) {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
    let two = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8])
    };
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month as u64);
    out.push(b'-');
    two(out, day as u64);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    let frac = us % 1_000_000;
    two(out, frac / 10_000);
    two(out, frac / 100 % 100);
    two(out, frac % 100);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_strings_are_formatted_for_json() {
        let mut out = Vec::new();
        rfc3339(&mut out, 0);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
        out.clear();
        // 2024-02-29T23:59:59.123456Z (a leap day).
        rfc3339(&mut out, 1_709_251_199_123_456);
        assert_eq!(String::from_utf8_lossy(&out), "2024-02-29T23:59:59.123456Z");
        out.clear();
        json_string(&mut out, b"a\"b\\c\x01\x7f\xc3\xa9");
        assert_eq!(String::from_utf8_lossy(&out), "\"a\\\"b\\\\c\\u0001\\u007fé\"");
        out.clear();
        json_string(&mut out, b"\xff");
        assert_eq!(String::from_utf8_lossy(&out), "\"\\u00ff\"");
        // The eight-at-a-time test against the byte-at-a-time rule, for every byte value in
        // every position of a word.
        for b in 0..=255u8 {
            let care = !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\';
            for at in 0..8 {
                let mut w = *b"abcdefgh";
                w[at] = b;
                assert_eq!(word_needs_care(u64::from_le_bytes(w)), care, "{b:#x} at {at}");
            }
        }
        out.clear();
        push_millis(&mut out, 1_234_005);
        push_decimal(&mut out, 0);
        assert_eq!(out, b"1234.0050");
    }
}
