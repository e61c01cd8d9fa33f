//! Every resend of a request is decided here, by one budget per request (as pingora's
//! `proxy_to_upstream` loop and linkerd's retry layer own theirs): the caller makes one
//! attempt at a time and asks [`Budget::after`] what the failure allows.
//!
//! - A connect failure moves on to the next endpoint of the same round; it spends nothing
//!   (nothing was sent).
//! - Without a route policy, lb resends once on a fresh connection when a *reused* one died
//!   before answering (the upstream closed it while it sat in the pool) and the request is
//!   whole and idempotent.
//! - With a route policy (HTTPRoute `retry`), that free resend is gone: after a connection
//!   error, a `backendRequest` timeout or a listed status, the request goes to the next
//!   endpoint after the backoff, up to `attempts` more times, while the rule's `request`
//!   timeout has time left (504 when it ran out with a retry due).
//! - Only a request whose whole body was in hand when it was first sent is ever resent: a body
//!   that streamed past lb cannot be replayed. A write that timed out took the bytes with it.

use table::format::ArchivedRetry;

use crate::error::{Cause, Phase, ProxyError, Side};

/// A request's resends left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Resends the route's policy still allows (0 without one, or when the body streamed).
    left: u32,
    /// lb's own resend after a stale pooled connection is still available.
    stale_resend: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    /// The connection could not be opened (refused, unreachable, connect timeout).
    Connect,
    /// Every endpoint of this round was tried.
    Exhausted,
    /// The request was (partly) sent and then failed.
    Attempt {
        /// What went wrong.
        error: ProxyError,
        /// The connection came from the pool.
        reused: bool,
    },
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The next endpoint of this round, at once.
    OtherEndpoint,
    /// The same endpoint on a fresh connection, at once.
    Fresh,
    /// A new round from the next endpoint, on fresh connections, after the policy's backoff.
    Retry,
    /// Give up: the client gets this error.
    Fail(ProxyError),
}

impl Budget {
    /// The budget of a request: `policy` is the rule's (attempts 0: none); `whole` says the
    /// whole request is in hand; `idempotent` that sending it twice is harmless.
    pub(crate) fn new(policy: Option<&ArchivedRetry>, whole: bool, idempotent: bool) -> Budget {
        let attempts = policy.map_or(0, |p| p.attempts.to_native());
        Budget {
            left: if whole { attempts } else { 0 },
            stale_resend: whole && idempotent && attempts == 0,
        }
    }

    /// Whether a policy retry is still possible: a listed status then ends the attempt as a
    /// failure instead of being relayed.
    pub(crate) fn can_retry(&self) -> bool {
        self.left > 0
    }

    /// Decides after a failure. `time_over`: the rule's `request` timeout has run out (asked
    /// only when a policy retry would be due).
    pub(crate) fn after(&mut self, failure: Failure, time_over: impl FnOnce() -> bool) -> Next {
        let (error, reused) = match failure {
            Failure::Connect => return Next::OtherEndpoint,
            Failure::Exhausted => {
                let unreachable =
                    ProxyError::new(Side::Upstream, Phase::Connect, Cause::Unreachable);
                return self.spend(unreachable, time_over, unreachable);
            }
            Failure::Attempt { error, reused } => (error, reused),
        };
        if !resendable(&error) {
            return Next::Fail(error);
        }
        let stale = error.phase == Phase::Send || error.retry_safe;
        if reused && stale && self.stale_resend && error.cause != Cause::Timeout {
            self.stale_resend = false;
            return Next::Fresh;
        }
        let timeout = ProxyError::new(Side::Upstream, error.phase, Cause::Timeout);
        self.spend(error, time_over, timeout)
    }

    /// Spends a policy retry, or fails with `error` (`late` when the request timeout ran out).
    fn spend(
        &mut self,
        error: ProxyError,
        time_over: impl FnOnce() -> bool,
        late: ProxyError,
    ) -> Next {
        if self.left == 0 {
            return Next::Fail(error);
        }
        if time_over() {
            return Next::Fail(late);
        }
        self.left -= 1;
        Next::Retry
    }
}

/// Failures a resend may follow: upstream connection errors, timeouts waiting for the answer
/// and retried statuses. Never a client-side failure, an upstream that answered garbage, or a
/// write that timed out (its bytes may have gone).
fn resendable(e: &ProxyError) -> bool {
    e.side == Side::Upstream
        && match (e.phase, e.cause) {
            (Phase::Send, Cause::Timeout) => false,
            (_, Cause::Timeout | Cause::Closed | Cause::Io(_) | Cause::Status(_)) => true,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use table::format::Retry;

    use super::*;

    fn policy(attempts: u32) -> rkyv::util::AlignedVec {
        let r = Retry { attempts, codes: vec![503], backoff_ms: 0 };
        rkyv::to_bytes::<rkyv::rancor::Error>(&r).unwrap()
    }

    fn budget(attempts: Option<u32>, whole: bool, idempotent: bool) -> Budget {
        match attempts {
            None => Budget::new(None, whole, idempotent),
            Some(n) => {
                let bytes = policy(n);
                let p = rkyv::access::<ArchivedRetry, rkyv::rancor::Error>(&bytes).unwrap();
                Budget::new(Some(p), whole, idempotent)
            }
        }
    }

    fn up(phase: Phase, cause: Cause) -> ProxyError {
        ProxyError::new(Side::Upstream, phase, cause)
    }

    fn attempt(error: ProxyError, reused: bool) -> Failure {
        Failure::Attempt { error, reused }
    }

    const NOT_OVER: fn() -> bool = || false;

    #[test]
    fn connect_failures_walk_the_endpoints_for_free() {
        let mut b = budget(None, true, true);
        assert_eq!(b.after(Failure::Connect, NOT_OVER), Next::OtherEndpoint);
        let Next::Fail(e) = b.after(Failure::Exhausted, NOT_OVER) else { panic!() };
        assert_eq!((e.cause, e.status()), (Cause::Unreachable, 502));
    }

    #[test]
    fn a_stale_pooled_connection_is_resent_once_without_a_policy() {
        let closed = up(Phase::ResponseHead, Cause::Closed).retry_safe();
        let mut b = budget(None, true, true);
        assert_eq!(b.after(attempt(closed, true), NOT_OVER), Next::Fresh);
        // Once only; and never for a fresh connection.
        assert_eq!(b.after(attempt(closed, true), NOT_OVER), Next::Fail(closed));
        let mut b = budget(None, true, true);
        assert_eq!(b.after(attempt(closed, false), NOT_OVER), Next::Fail(closed));
        // A write to a stale connection failing counts too; a timed-out write does not.
        let send = up(Phase::Send, Cause::Closed);
        assert_eq!(budget(None, true, true).after(attempt(send, true), NOT_OVER), Next::Fresh);
        let send_timeout = up(Phase::Send, Cause::Timeout);
        assert_eq!(
            budget(None, true, true).after(attempt(send_timeout, true), NOT_OVER),
            Next::Fail(send_timeout)
        );
        // Not when the upstream may have seen the request: a response that had started,
        // a non-idempotent method, a body that streamed.
        let started = up(Phase::ResponseHead, Cause::Closed);
        assert_eq!(
            budget(None, true, true).after(attempt(started, true), NOT_OVER),
            Next::Fail(started)
        );
        assert_eq!(
            budget(None, true, false).after(attempt(closed, true), NOT_OVER),
            Next::Fail(closed)
        );
        assert_eq!(
            budget(None, false, true).after(attempt(closed, true), NOT_OVER),
            Next::Fail(closed)
        );
    }

    #[test]
    fn a_policy_owns_every_resend_and_counts_them() {
        let closed = up(Phase::ResponseHead, Cause::Closed).retry_safe();
        let status = up(Phase::ResponseHead, Cause::Status(503));
        let timeout = up(Phase::ResponseHead, Cause::Timeout);
        let mut b = budget(Some(2), true, true);
        assert!(b.can_retry());
        // The stale-connection resend is no longer free: it is one of the policy's.
        assert_eq!(b.after(attempt(closed, true), NOT_OVER), Next::Retry);
        assert_eq!(b.after(attempt(status, false), NOT_OVER), Next::Retry);
        assert!(!b.can_retry());
        assert_eq!(b.after(attempt(timeout, false), NOT_OVER), Next::Fail(timeout));
        // Endpoints exhausted: a new round costs one too.
        let mut b = budget(Some(1), true, false);
        assert_eq!(b.after(Failure::Exhausted, NOT_OVER), Next::Retry);
        assert!(
            matches!(b.after(Failure::Exhausted, NOT_OVER), Next::Fail(e) if e.cause == Cause::Unreachable)
        );
    }

    #[test]
    fn no_resend_of_a_streamed_body_garbage_or_client_failures() {
        let status = up(Phase::ResponseHead, Cause::Status(503));
        assert!(!budget(Some(3), false, true).can_retry());
        assert_eq!(
            budget(Some(3), false, true).after(attempt(status, false), NOT_OVER),
            Next::Fail(status)
        );
        let garbage = up(Phase::ResponseHead, Cause::Framing("malformed response head"));
        assert_eq!(
            budget(Some(3), true, true).after(attempt(garbage, false), NOT_OVER),
            Next::Fail(garbage)
        );
        let client = ProxyError::new(Side::Downstream, Phase::RequestBody, Cause::Closed);
        assert_eq!(
            budget(Some(3), true, true).after(attempt(client, false), NOT_OVER),
            Next::Fail(client)
        );
    }

    #[test]
    fn a_retry_due_after_the_request_timeout_is_a_504() {
        let status = up(Phase::ResponseHead, Cause::Status(503));
        let mut b = budget(Some(3), true, true);
        let Next::Fail(e) = b.after(attempt(status, false), || true) else { panic!() };
        assert_eq!((e.cause, e.status()), (Cause::Timeout, 504));
        // The clock is not consulted when no retry is due.
        let mut b = budget(None, true, true);
        assert_eq!(b.after(attempt(status, false), || panic!("asked")), Next::Fail(status));
    }
}
