//! HTTPRoute `RequestMirror`: a copy of a sampled request goes to one endpoint of the mirror
//! service, fire-and-forget. The copy is sent by its own task on the same core; the main
//! exchange never waits for it, and a mirror that cannot connect, times out or answers badly
//! only costs a debug line.
//!
//! The copy's bytes are written by the protocol's head writer (HTTP/1 today); this module
//! samples, picks the mirror's endpoint and delivers: on a connection of its own to an
//! HTTP/1 service (`Connection: close`), as a stream on the core's multiplexed connections to
//! an h2c one (`upstream::h2` translates the same bytes).
//!
//! A copy needs the whole request in hand when the main request is routed: requests whose body
//! has not fully arrived with the head (or is chunked) are not mirrored. Each core caps the
//! copies in flight ([`MAX_IN_FLIGHT`]); beyond it, copies are dropped rather than queued.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tracing::debug;

use table::format::ArchivedMirror;

use crate::io::{InBuf, Spare, connect};
use crate::settings::Timeouts;
use crate::timer::{Deadline, Elapsed, Wheel};
use crate::transport::Transport;
use crate::upstream::CoreTable;
use crate::upstream::h2::{self, H2Pool};
use crate::upstream::pool::{Key, Protocol};
use table::ServiceId;

/// Mirror copies one core keeps in flight at most.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Most bytes of a mirror's response read (and dropped) before the connection is closed.
const MAX_RESPONSE: usize = 1 << 20;

/// A mirror backend's response is awaited this long at most.
const RESPONSE_WAIT: Duration = Duration::from_secs(10);

/// Sends a copy of the request to each sampled mirror of a rule. `body`: the whole request
/// body when it is all in hand (`None`: not copied); `head` writes the copy's head, asking
/// the mirror to close after answering (the rule's header edits apply, not a backend's).
pub(crate) fn copy(
    (state, wheel, timeouts, h2): (&Mirrors, &Rc<Wheel>, Timeouts, &RefCell<H2Pool>),
    table: &CoreTable,
    mirrors: &[ArchivedMirror],
    body: Option<&[u8]>,
    head: impl Fn(&mut Vec<u8>),
) {
    for m in mirrors {
        if !state.sampled(m.per_million.to_native()) {
            continue;
        }
        let Some(body) = body else {
            debug!("request not mirrored: its body has not all arrived with the head");
            return;
        };
        let service = ServiceId(m.service.to_native());
        let Some(addr) = table.endpoint(service, table.next_cursor(service), 0) else {
            debug!(
                service = service.0,
                "request not mirrored: the mirror service has no endpoints"
            );
            continue;
        };
        let mut bytes = Vec::with_capacity(512 + body.len());
        head(&mut bytes);
        bytes.extend_from_slice(body);
        let via = (table.protocol(service) == Protocol::H2c).then(|| h2.borrow().clone());
        state.send(wheel, timeouts, (addr, via), bytes);
    }
}

/// Per-core mirror state: copies in flight and the sampling generator.
#[derive(Debug)]
pub(crate) struct Mirrors {
    in_flight: Rc<Cell<usize>>,
    rng: Cell<u64>,
    /// The core's buffer free list (answers are read through it).
    spare: Rc<Spare>,
    /// Copies dropped because [`MAX_IN_FLIGHT`] were in flight (a metric).
    pub(crate) dropped: Cell<u64>,
}

impl Mirrors {
    /// State for core `id` (each core samples from its own sequence).
    pub(crate) fn new(id: usize, spare: Rc<Spare>) -> Mirrors {
        let seed = 0x9e37_79b9_7f4a_7c15_u64 ^ ((id as u64 + 1) << 32) ^ clock_seed();
        let in_flight = Rc::new(Cell::new(0));
        Mirrors { in_flight, rng: Cell::new(seed | 1), spare, dropped: Cell::new(0) }
    }

    /// Whether this request is sampled at `per_million` (xorshift64*).
    pub(crate) fn sampled(&self, per_million: u32) -> bool {
        if per_million >= 1_000_000 {
            return true;
        }
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 1_000_000 < u64::from(per_million)
    }

    /// Sends `bytes` (a complete request) to `addr` on a task of its own — over h2c through
    /// the pool when one is given — unless the core already has [`MAX_IN_FLIGHT`] copies going.
    pub(crate) fn send(
        &self,
        wheel: &Rc<Wheel>,
        timeouts: Timeouts,
        (addr, h2): (SocketAddr, Option<H2Pool>),
        bytes: Vec<u8>,
    ) {
        if self.in_flight.get() >= MAX_IN_FLIGHT {
            debug!(%addr, "mirror dropped: {MAX_IN_FLIGHT} copies already in flight");
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let in_flight = Rc::clone(&self.in_flight);
        let (wheel, spare) = (Rc::clone(wheel), Rc::clone(&self.spare));
        compio::runtime::spawn(async move {
            if let Err(e) = deliver(&wheel, timeouts, addr, bytes, (h2, &spare)).await {
                debug!(%addr, "mirror copy failed: {e}");
            }
            in_flight.set(in_flight.get() - 1);
        })
        .detach();
    }
}

fn clock_seed() -> u64 {
    let (s, ns) = crate::io::monotonic_coarse();
    (s as u64).wrapping_mul(1_000_000_007) ^ ns as u64
}

/// Opens a connection for one copy — a new TCP connection, or a stream on the core's h2c
/// connections when `h2` is given — writes it, and reads the answer to its end (at most
/// [`MAX_RESPONSE`]) and drops it: closing with unread bytes would reset the connection under
/// the backend. The answer is read through the core's buffer ring like any upstream's.
async fn deliver(
    wheel: &Wheel,
    t: Timeouts,
    addr: SocketAddr,
    mut bytes: Vec<u8>,
    (h2, spare): (Option<H2Pool>, &Spare),
) -> std::io::Result<()> {
    let deadline = Rc::new(Deadline::default());
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let transport = match h2 {
        None => {
            let stream = wheel
                .timeout(&deadline, t.connect, connect(addr))
                .await
                .map_err(|_| timed_out())??;
            Transport::Plain(stream)
        }
        Some(pool) => {
            let pool = RefCell::new(pool);
            let key = Key { addr, protocol: Protocol::H2c };
            let (stream, _) = h2::open(&pool, (wheel, &deadline), t.connect, key, false)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            stream
        }
    };
    wheel
        .timeout(&deadline, t.body, transport.write(&mut bytes))
        .await
        .map_err(|_| timed_out())??;
    let mut input = InBuf::Empty;
    let mut read = 0;
    let result = loop {
        if read >= MAX_RESPONSE {
            break Ok(());
        }
        let wait = RESPONSE_WAIT.min(t.upstream);
        match wheel.timeout(&deadline, wait, transport.read(&mut input, spare)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                read += n;
                let all = input.bytes().len();
                input.consume(all, spare);
            }
            Ok(Err(e)) => break Err(e),
            Err(Elapsed) => break Err(timed_out()),
        }
    };
    input.release(spare);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_rate() {
        let m = Mirrors::new(0, Rc::new(Spare::new(&crate::settings::Settings::default().buffers)));
        assert!((0..1000).all(|_| m.sampled(1_000_000)));
        assert!((0..1000).all(|_| !m.sampled(0)));
        let hits = (0..100_000).filter(|_| m.sampled(200_000)).count();
        // 20 % of 100,000: 3 binomial standard deviations are ~380.
        assert!((19_500..20_500).contains(&hits), "{hits}");
    }
}
