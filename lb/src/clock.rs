//! The clock exchanges are timed with (the duration histogram, the access log's start time,
//! duration and upstream time).
//!
//! Every exchange reads it twice, so it must be cheap: where the kernel itself keeps time with
//! the CPU's time-stamp counter (clocksource `tsc`, which it only selects when the counter is
//! invariant and synchronised across CPUs), a reading is one `rdtsc`, converted to time with a
//! rate calibrated once against the monotonic clock. `Instant::now` and `elapsed` cost ~90
//! instructions a request more (the vDSO's `clock_gettime` and `Timespec` arithmetic), 0.4 % of
//! a proxied request. Elsewhere (another clocksource, another architecture) a reading is
//! `Instant::now`, in nanoseconds since the clock was made.
//!
//! The timer wheel keeps its own, coarser clock (`timer`): deadlines need no microseconds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A reading of [`now`]: only differences between readings mean anything.
pub(crate) type Stamp = u64;

/// How readings become time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Readings are time-stamp counter values (else nanoseconds since `origin`).
    tsc: bool,
    /// Nanoseconds per reading unit, as a 32.32 fixed-point number.
    ns_per_unit: u64,
    origin: Instant,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// Chooses the source and calibrates it (≤ 10 ms, once per process); lb calls it before its
/// cores start, so no request waits for it.
pub(crate) fn init() {
    clock();
}

#[inline]
fn clock() -> &'static Clock {
    CLOCK.get_or_init(Clock::new)
}

/// The current reading.
#[inline]
pub(crate) fn now() -> Stamp {
    let c = clock();
    if c.tsc {
        return tsc();
    }
    c.origin.elapsed().as_nanos() as u64
}

/// Time from reading `from` to reading `to` (zero if `to` is earlier).
#[inline]
pub(crate) fn between(from: Stamp, to: Stamp) -> Duration {
    let units = u128::from(to.saturating_sub(from));
    Duration::from_nanos(((units * u128::from(clock().ns_per_unit)) >> 32) as u64)
}

/// Time since reading `from`.
#[inline]
pub(crate) fn since(from: Stamp) -> Duration {
    between(from, now())
}

impl Clock {
    fn new() -> Clock {
        let origin = Instant::now();
        let os = Clock { tsc: false, ns_per_unit: 1 << 32, origin };
        if !kernel_uses_tsc() {
            return os;
        }
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(Duration::from_millis(10));
        let (t1, c1) = (Instant::now(), tsc());
        let (ns, units) = (t1.duration_since(t0).as_nanos(), u128::from(c1.wrapping_sub(c0)));
        // A counter that did not move forward at a plausible rate (≥ 1 MHz) is not one to use.
        if units < ns / 1000 || ns == 0 {
            return os;
        }
        Clock { tsc: true, ns_per_unit: ((ns << 32) / units) as u64, origin }
    }
}

#[cfg(target_arch = "x86_64")]
fn kernel_uses_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_uses_tsc() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code, reason = "one rdtsc instruction; no memory touched")]
fn tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86_64 CPU and only reads the counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_measure_time_like_the_monotonic_clock() {
        init();
        let (t0, s0) = (Instant::now(), now());
        std::thread::sleep(Duration::from_millis(30));
        let (s1, t1) = (now(), Instant::now());
        let measured = between(s0, s1).as_secs_f64();
        let real = t1.duration_since(t0).as_secs_f64();
        assert!((measured - real).abs() < real * 0.02 + 0.000_2, "{measured} s vs {real} s");
        assert_eq!(between(s1, s0), Duration::ZERO);
        assert!(since(s0) >= between(s0, s1));
    }
}
