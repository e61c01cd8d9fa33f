//! The load engine: keep-alive HTTP/1.1 connections spread over pinned threads, each thread a
//! compio (io_uring) runtime like lb's, in one of two modes:
//!
//! - **closed loop**: each connection sends its next request as soon as the previous answer is
//!   in (maximum throughput; latency is measured from the actual send);
//! - **open loop**: requests are *scheduled* at a fixed total rate, spread evenly over the
//!   connections, and latency is measured from the scheduled send time (coordinated-omission
//!   correction, as wrk2 does). A connection that falls behind sends at once and keeps to the
//!   schedule, so a stall shows as the queue of late requests it really caused.
//!
//! Requests whose scheduled (or actual) send time falls in the warm-up are sent but not
//! recorded.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use hdrhistogram::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Server address.
    pub target: SocketAddr,
    /// The request, fully encoded (sent as is on every request).
    pub request: Vec<u8>,
    /// The request is HEAD (responses have no body).
    pub head_request: bool,
    /// Keep-alive connections in total.
    pub connections: usize,
    /// CPUs to run on, one thread each.
    pub cpus: Vec<usize>,
    /// Total run time, warm-up included.
    pub duration: Duration,
    /// Warm-up at the start, not recorded.
    pub warmup: Duration,
    /// Stop after this many recorded requests.
    pub max_requests: Option<u64>,
    /// Open loop at this many requests per second in total; `None` for closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Speak TLS (HTTPS) with this client configuration and server name.
    pub tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
    /// Open a new connection for every request (handshake benchmarks) instead of keeping
    /// connections alive.
    pub fresh_connections: bool,
}

/// A client connection: plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<crate::tls::Tls>),
}

/// Errors by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Errors {
    /// Connection could not be established.
    pub connect: u64,
    /// Connection reset or closed in the middle of an exchange.
    pub reset: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// Response status not 2xx.
    pub non_2xx: u64,
    /// Unparseable response.
    pub protocol: u64,
}

impl Errors {
    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.non_2xx += o.non_2xx;
        self.protocol += o.protocol;
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.reset + self.timeout + self.non_2xx + self.protocol
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency of recorded requests, nanoseconds.
    pub histogram: Histogram<u64>,
    /// Recorded requests with a complete response (any status).
    pub completed: u64,
    /// Errors during the recorded window.
    pub errors: Errors,
    /// Count per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Length of the recorded window.
    pub measured: Duration,
    /// TLS handshakes completed (all of the run), and how many of them resumed a session.
    pub handshakes: (u64, u64),
    /// The plan that ran.
    pub plan: Plan,
}

struct Stats {
    histogram: Histogram<u64>,
    completed: u64,
    errors: Errors,
    statuses: BTreeMap<u16, u64>,
    budget: Option<u64>,
    handshakes: (u64, u64),
}

/// Latencies up to an hour, three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Runs `plan` and returns the merged outcome.
pub fn run(plan: &Plan) -> io::Result<Outcome> {
    let threads = plan.cpus.len().max(1);
    let start = Instant::now() + Duration::from_millis(50);
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let budget_per_thread = plan.max_requests.map(|n| n.div_ceil(threads as u64));
    let mut handles = Vec::new();
    for t in 0..threads {
        let plan = plan.clone();
        let cpu = plan.cpus.get(t).copied();
        let pin = core_ids.iter().copied().find(|c| Some(c.id) == cpu);
        let conns: Vec<usize> = (0..plan.connections).filter(|c| c % threads == t).collect();
        handles.push(std::thread::spawn(move || -> io::Result<Stats> {
            if let Some(id) = pin {
                core_affinity::set_for_current(id);
            }
            let mut proactor = compio::driver::ProactorBuilder::new();
            proactor.coop_taskrun(true).taskrun_flag(true);
            let rt = compio::runtime::Runtime::builder().with_proactor(proactor).build()?;
            let stats = Rc::new(RefCell::new(Stats {
                histogram: new_histogram(),
                completed: 0,
                errors: Errors::default(),
                statuses: BTreeMap::new(),
                budget: budget_per_thread,
                handshakes: (0, 0),
            }));
            let plan = Rc::new(plan);
            rt.block_on(async {
                // lb's timer wheel: a compio timeout per request (a BTreeMap insert and an
                // allocation) cost ~10 % of throughput against wrk.
                let wheel = Rc::new(lb::Wheel::new());
                compio::runtime::spawn(Rc::clone(&wheel).run()).detach();
                let tasks: Vec<_> = conns
                    .iter()
                    .map(|&c| {
                        compio::runtime::spawn(connection(
                            Rc::clone(&plan),
                            c,
                            start,
                            Rc::clone(&stats),
                            Rc::clone(&wheel),
                        ))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
            let stats =
                Rc::try_unwrap(stats).map_err(|_| io::Error::other("tasks outlived the run"))?;
            Ok(stats.into_inner())
        }));
    }
    let mut merged = Stats {
        histogram: new_histogram(),
        completed: 0,
        errors: Errors::default(),
        statuses: BTreeMap::new(),
        budget: None,
        handshakes: (0, 0),
    };
    for h in handles {
        let s = h.join().map_err(|_| io::Error::other("load thread panicked"))??;
        merged.histogram.add(&s.histogram).map_err(|e| io::Error::other(e.to_string()))?;
        merged.completed += s.completed;
        merged.handshakes.0 += s.handshakes.0;
        merged.handshakes.1 += s.handshakes.1;
        merged.errors.add(&s.errors);
        for (k, v) in s.statuses {
            *merged.statuses.entry(k).or_insert(0) += v;
        }
    }
    let measured = if plan.max_requests.is_some() {
        // Ended by the request budget: the window is up to the last completion.
        Instant::now()
            .saturating_duration_since(start + plan.warmup)
            .min(plan.duration.saturating_sub(plan.warmup))
    } else {
        plan.duration.saturating_sub(plan.warmup)
    };
    Ok(Outcome {
        histogram: merged.histogram,
        completed: merged.completed,
        errors: merged.errors,
        statuses: merged.statuses,
        measured,
        handshakes: merged.handshakes,
        plan: plan.clone(),
    })
}

enum Failure {
    Reset,
    Timeout,
    Protocol,
}

async fn connection(
    plan: Rc<Plan>,
    index: usize,
    start: Instant,
    stats: Rc<RefCell<Stats>>,
    wheel: Rc<lb::Wheel>,
) {
    let deadline = Rc::new(lb::Deadline::default());
    let end = start + plan.duration;
    let warm = start + plan.warmup;
    // Open loop: this connection's share of the rate, phase-shifted so connections interleave.
    let interval =
        plan.rate.map(|r| Duration::from_secs_f64(plan.connections as f64 / r.max(1e-9)));
    let mut next = match interval {
        Some(iv) => start + iv.mul_f64(index as f64 / plan.connections.max(1) as f64),
        None => start,
    };
    let now = Instant::now();
    if start > now {
        compio::time::sleep(start - now).await;
    }
    let mut stream: Option<Conn> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut request = plan.request.clone();
    loop {
        let intended = match interval {
            Some(iv) => {
                let now = Instant::now();
                if next > now {
                    compio::time::sleep(next - now).await;
                }
                let t = next;
                next += iv;
                t
            }
            None => Instant::now(),
        };
        if intended >= end {
            break;
        }
        let recording = intended >= warm;
        if recording {
            let mut s = stats.borrow_mut();
            match s.budget.as_mut() {
                Some(0) => break,
                Some(b) => *b -= 1,
                None => {}
            }
        }
        let mut conn = match stream.take() {
            Some(c) => c,
            None => match wheel.timeout(&deadline, plan.timeout, open(&plan)).await {
                Ok(Ok(c)) => {
                    if let Conn::Tls(t) = &c {
                        let mut s = stats.borrow_mut();
                        s.handshakes.0 += 1;
                        s.handshakes.1 += u64::from(t.resumed());
                    }
                    c
                }
                _ => {
                    if recording {
                        stats.borrow_mut().errors.connect += 1;
                    }
                    compio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        buf.clear();
        let exchange = wheel
            .timeout(&deadline, plan.timeout, exchange(&mut conn, request, buf, plan.head_request))
            .await;
        let result = match exchange {
            Ok((result, req, b)) => {
                request = req;
                buf = b;
                result
            }
            Err(_) => {
                request = plan.request.clone();
                buf = Vec::with_capacity(64 * 1024);
                Err(Failure::Timeout)
            }
        };
        let done = Instant::now();
        match result {
            Ok((status, keep)) => {
                if recording {
                    let mut s = stats.borrow_mut();
                    let ns = done.saturating_duration_since(intended).as_nanos() as u64;
                    let _ = s.histogram.record(ns.max(1));
                    s.completed += 1;
                    *s.statuses.entry(status).or_insert(0) += 1;
                    if !(200..300).contains(&status) {
                        s.errors.non_2xx += 1;
                    }
                }
                if keep && !plan.fresh_connections {
                    stream = Some(conn);
                }
            }
            Err(f) => {
                if recording {
                    let mut s = stats.borrow_mut();
                    match f {
                        Failure::Reset => s.errors.reset += 1,
                        Failure::Timeout => s.errors.timeout += 1,
                        Failure::Protocol => s.errors.protocol += 1,
                    }
                }
            }
        }
    }
}

/// Connects (and handshakes, for TLS).
async fn open(plan: &Plan) -> io::Result<Conn> {
    let tcp = TcpStream::connect(plan.target).await?;
    let _ = tcp.set_nodelay(true);
    match &plan.tls {
        None => Ok(Conn::Plain(tcp)),
        Some((config, name)) => {
            Ok(Conn::Tls(Box::new(crate::tls::Tls::handshake(tcp, config, name).await?)))
        }
    }
}

/// Sends the request and reads one whole response. Returns (status, keep-alive) and the
/// buffers back.
async fn exchange(
    conn: &mut Conn,
    request: Vec<u8>,
    mut buf: Vec<u8>,
    head_request: bool,
) -> (Result<(u16, bool), Failure>, Vec<u8>, Vec<u8>) {
    let conn = match conn {
        Conn::Plain(c) => c,
        Conn::Tls(t) => {
            if t.write_all(&request).await.is_err() {
                return (Err(Failure::Reset), request, buf);
            }
            loop {
                match response_end(&buf, head_request) {
                    Ok(Some(done)) => return (Ok(done), request, buf),
                    Ok(None) => {}
                    Err(()) => return (Err(Failure::Protocol), request, buf),
                }
                match t.read_into(&mut buf).await {
                    Ok(0) | Err(_) => return (Err(Failure::Reset), request, buf),
                    Ok(_) => {}
                }
            }
        }
    };
    let mut w = &*conn;
    let BufResult(res, request) = w.write_all(request).await;
    if res.is_err() {
        return (Err(Failure::Reset), request, buf);
    }
    let mut r = &*conn;
    loop {
        match response_end(&buf, head_request) {
            Ok(Some(done)) => return (Ok(done), request, buf),
            Ok(None) => {}
            Err(()) => return (Err(Failure::Protocol), request, buf),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let BufResult(res, b) = r.append(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return (Err(Failure::Reset), request, buf),
            Ok(_) => {}
        }
    }
}

/// `Ok(Some((status, keep_alive)))` once `buf` holds one complete response (1xx skipped).
fn response_end(buf: &[u8], head_request: bool) -> Result<Option<(u16, bool)>, ()> {
    let mut at = 0;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut fields);
        let head = match res.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let status = res.code.unwrap_or(0);
        if (100..200).contains(&status) {
            at += head;
            continue;
        }
        let mut keep = res.version == Some(1);
        let mut length = None;
        let mut chunked = false;
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length =
                    std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                keep = if v.contains("close") { false } else { keep || v.contains("keep-alive") };
            }
        }
        let body = &buf[at + head..];
        if head_request || status == 204 || status == 304 {
            return Ok(Some((status, keep)));
        }
        if chunked {
            return Ok(chunked_complete(body).map(|()| (status, keep)));
        }
        return match length {
            Some(n) if body.len() >= n => Ok(Some((status, keep))),
            Some(_) => Ok(None),
            // Close-delimited: complete when the server closes; not reusable.
            None => Err(()),
        };
    }
}

fn chunked_complete(mut b: &[u8]) -> Option<()> {
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..line]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            loop {
                let e = b.windows(2).position(|w| w == b"\r\n")?;
                b = &b[e + 2..];
                if e == 0 {
                    return Some(());
                }
            }
        }
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_boundaries() {
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
            Ok(Some((200, true)))
        );
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok", false),
            Ok(None)
        );
        assert_eq!(response_end(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false), Ok(Some((503, false))));
        assert_eq!(
            response_end(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false
            ),
            Ok(Some((200, true)))
        );
        assert_eq!(
            response_end(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
                false
            ),
            Ok(None)
        );
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Ok(Some((200, true)))
        );
        assert!(response_end(b"garbage\r\n\r\n", false).is_err());
    }
}
