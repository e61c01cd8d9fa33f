//! Per-core timer wheel for connection timeouts.
//!
//! compio's timers live in a BTreeMap with an allocation per timer; a proxy arms several
//! timeouts per request, so that cost would sit on the hot path. Here each connection owns one
//! [`Deadline`] (allocated once per connection) and re-arms it per phase: arming is a store,
//! plus a push into a slot vector only when the deadline moves earlier than the slot it is
//! already queued in (lazy re-queueing when a slot fires). One sleeping task per core turns
//! the wheel while anything is armed and sleeps on a waker when nothing is.
//!
//! Resolution is one tick (10 ms); timeouts here are in seconds.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const TICK: Duration = Duration::from_millis(10);
const SLOTS: u64 = 4096;
const NANOS_PER_TICK: u64 = TICK.as_nanos() as u64;
const TICKS_PER_SECOND: u64 = 1_000_000_000 / NANOS_PER_TICK;

fn coarse() -> (i64, i64) {
    crate::io::monotonic_coarse()
}
const NEVER: u64 = u64::MAX;

/// The wheel of one core.
#[derive(Debug)]
pub struct Wheel {
    /// Seconds of the coarse monotonic clock at creation.
    epoch: i64,
    inner: RefCell<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Last tick processed.
    now: u64,
    slots: Vec<Vec<Rc<Deadline>>>,
    queued: usize,
    /// The turning task, parked while nothing is queued.
    idle: Option<Waker>,
    spare: Vec<Rc<Deadline>>,
}

/// One connection's timeout.
#[derive(Debug, Default)]
pub struct Deadline {
    at: Cell<u64>,
    queued_at: Cell<Option<u64>>,
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The deadline passed before the operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Wheel {
    /// An empty wheel.
    pub fn new() -> Wheel {
        Wheel {
            epoch: coarse().0,
            inner: RefCell::new(Inner {
                now: 0,
                slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                queued: 0,
                idle: None,
                spare: Vec::new(),
            }),
        }
    }

    /// Current tick (also used for pool idle ages). Read from CLOCK_MONOTONIC_COARSE: no
    /// TSC read and no `Duration` arithmetic; `Instant::now` and `duration_since` were ~350
    /// instructions per request over four arms. The coarse clock moves in jiffies (≤ 4 ms),
    /// finer than the 10 ms tick.
    pub fn now(&self) -> u64 {
        let (secs, nanos) = coarse();
        ((secs - self.epoch).max(0) as u64) * TICKS_PER_SECOND + nanos as u64 / NANOS_PER_TICK
    }

    /// Time since tick `since` (whole ticks).
    pub fn elapsed_since(&self, since: u64) -> Duration {
        TICK * self.now().saturating_sub(since) as u32
    }

    /// Arms `d` to fire `after` from now, replacing any earlier arming.
    pub fn arm(&self, d: &Rc<Deadline>, after: Duration) {
        let ticks = after.as_millis().div_ceil(TICK.as_millis()).max(1) as u64;
        let now = self.now();
        let at = now.saturating_add(ticks);
        d.at.set(at);
        d.fired.set(false);
        if d.queued_at.get().is_some_and(|q| q <= at) {
            // Already queued no later than needed: it will be re-queued when that slot fires.
            return;
        }
        let mut inner = self.inner.borrow_mut();
        if inner.queued == 0 {
            // The wheel was parked: nothing is queued, so the ticks it slept through are empty.
            inner.now = inner.now.max(now);
        }
        let slot_tick = at.min(inner.now + SLOTS - 1).max(inner.now + 1);
        inner.slots[(slot_tick % SLOTS) as usize].push(Rc::clone(d));
        d.queued_at.set(Some(slot_tick));
        inner.queued += 1;
        if let Some(w) = inner.idle.take() {
            w.wake();
        }
    }

    /// Disarms `d`.
    pub fn disarm(&self, d: &Deadline) {
        d.at.set(NEVER);
        d.fired.set(false);
    }

    /// Runs `fut` under `d` armed for `after` (armed now, disarmed when it completes). The
    /// operation is dropped (cancelled) when the deadline passes first.
    ///
    /// A plain function returning a future that owns `fut`: an `async fn` here kept the
    /// operation twice in its state (argument and pinned local), which doubled the size of every
    /// connection task.
    pub fn timeout<'a, F: Future + 'a>(
        &'a self,
        d: &'a Rc<Deadline>,
        after: Duration,
        fut: F,
    ) -> Timeout<'a, F> {
        self.arm(d, after);
        Timeout { fut, deadline: d, wheel: Some(self) }
    }

    /// Runs `fut` under `d` as it is currently armed (for phases spanning several operations).
    pub fn race<'a, F: Future + 'a>(&'a self, d: &'a Deadline, fut: F) -> Timeout<'a, F> {
        Timeout { fut, deadline: d, wheel: None }
    }

    /// Turns the wheel forever; spawn once per core.
    pub async fn run(self: Rc<Self>) {
        loop {
            let queued = self.inner.borrow().queued;
            if queued == 0 {
                Parked { wheel: &self }.await;
                continue;
            }
            compio::time::sleep(TICK).await;
            self.advance(self.now());
        }
    }

    fn advance(&self, to: u64) {
        let mut batch = std::mem::take(&mut self.inner.borrow_mut().spare);
        loop {
            let mut inner = self.inner.borrow_mut();
            if inner.now >= to {
                break;
            }
            inner.now += 1;
            let tick = inner.now;
            std::mem::swap(&mut batch, &mut inner.slots[(tick % SLOTS) as usize]);
            inner.queued -= batch.len();
            drop(inner);
            for d in batch.drain(..) {
                if d.queued_at.get() != Some(tick) {
                    continue;
                }
                d.queued_at.set(None);
                let at = d.at.get();
                if at == NEVER {
                    continue;
                }
                if at <= tick {
                    d.fired.set(true);
                    if let Some(w) = d.waker.borrow_mut().take() {
                        w.wake();
                    }
                } else {
                    let mut inner = self.inner.borrow_mut();
                    let slot_tick = at.min(tick + SLOTS - 1);
                    d.queued_at.set(Some(slot_tick));
                    inner.slots[(slot_tick % SLOTS) as usize].push(d);
                    inner.queued += 1;
                }
            }
        }
        self.inner.borrow_mut().spare = batch;
    }
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new()
    }
}

struct Parked<'a> {
    wheel: &'a Wheel,
}

impl Future for Parked<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.wheel.inner.borrow_mut();
        if inner.queued > 0 {
            return Poll::Ready(());
        }
        inner.idle = Some(cx.waker().clone());
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// An operation raced against a [`Deadline`].
    #[derive(Debug)]
    pub struct Timeout<'a, F> {
        #[pin]
        fut: F,
        deadline: &'a Deadline,
        // Set when the deadline was armed for this operation alone: disarmed on completion.
        wheel: Option<&'a Wheel>,
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            if let Some(wheel) = this.wheel {
                wheel.disarm(this.deadline);
            }
            return Poll::Ready(Ok(v));
        }
        if this.deadline.fired.get() {
            return Poll::Ready(Err(Elapsed));
        }
        let mut slot = this.deadline.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn fires_after_the_deadline_not_before() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let wheel = Rc::new(Wheel::new());
            compio::runtime::spawn(Rc::clone(&wheel).run()).detach();
            let d = Rc::new(Deadline::default());
            let start = Instant::now();
            let r =
                wheel.timeout(&d, Duration::from_millis(50), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(40), "{took:?}");
            // Re-arming for a finished operation returns its value.
            let r = wheel.timeout(&d, Duration::from_millis(50), async { 7 }).await;
            assert_eq!(r, Ok(7));
            // A later deadline re-queued lazily still fires.
            let r = wheel
                .timeout(
                    &d,
                    Duration::from_millis(120),
                    compio::time::sleep(Duration::from_millis(60)),
                )
                .await;
            assert_eq!(r, Ok(()));
        });
    }
}
