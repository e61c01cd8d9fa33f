//! How an exchange fails or is refused, and the one place where each becomes the status the
//! client gets.
//!
//! A [`ProxyError`] records the side that failed, the phase it failed in and the cause, and
//! whether nothing the upstream could have acted on was sent (so another attempt is safe). A
//! [`Refusal`] is the exchange deciding not to forward (no table, no route, no endpoints, a
//! backend the table marks invalid, a CORS origin the policy refuses); a [`Reject`] is the
//! HTTP/1 parser refusing a head. Their statuses are all decided here, so a new protocol or
//! filter reuses them instead of choosing numbers of its own.

use std::fmt;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures_util::FutureExt;

use crate::http1::body::BodyError;
use crate::http1::parse::Reject;
use crate::timer::{Deadline, Wheel};

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client.
    Downstream,
    /// The backend.
    Upstream,
}

/// Where in the exchange it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the client's request head.
    RequestHead,
    /// Reading the client's request body (and sending it on).
    RequestBody,
    /// Opening an upstream connection.
    Connect,
    /// Sending the request upstream.
    Send,
    /// Waiting for or reading the upstream's response head.
    ResponseHead,
    /// Relaying the response body, or writing to the client.
    ResponseBody,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A deadline passed.
    Timeout,
    /// The peer closed or reset.
    Closed,
    /// Other I/O failure.
    Io(io::ErrorKind),
    /// Malformed body or head.
    Framing(&'static str),
    /// Body over the configured limit.
    TooLarge,
    /// No endpoint could be connected.
    Unreachable,
    /// The upstream answered with a status the route's retry policy retries.
    Status(u16),
    /// The request head was refused by the parser.
    Rejected(Reject),
}

/// A failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyError {
    /// Where.
    pub side: Side,
    /// In which phase.
    pub phase: Phase,
    /// What.
    pub cause: Cause,
    /// Nothing the upstream could have acted on was sent: another attempt is safe.
    pub retry_safe: bool,
}

impl ProxyError {
    /// An error on `side` in `phase`.
    pub(crate) fn new(side: Side, phase: Phase, cause: Cause) -> ProxyError {
        ProxyError { side, phase, cause, retry_safe: false }
    }

    /// From an I/O error on `side`.
    pub(crate) fn io(side: Side, phase: Phase, e: &io::Error) -> ProxyError {
        let cause = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => Cause::Closed,
            k => Cause::Io(k),
        };
        ProxyError::new(side, phase, cause)
    }

    /// From a body framing error on `side`.
    pub(crate) fn body(side: Side, phase: Phase, e: BodyError) -> ProxyError {
        match e {
            BodyError::Chunked(what) => ProxyError::new(side, phase, Cause::Framing(what)),
            BodyError::TooLarge => ProxyError::new(side, phase, Cause::TooLarge),
        }
    }

    /// A request head the parser refused.
    pub(crate) fn rejected(reject: Reject) -> ProxyError {
        ProxyError::new(Side::Downstream, Phase::RequestHead, Cause::Rejected(reject))
    }

    /// Marks the error safe to retry.
    pub(crate) fn retry_safe(mut self) -> ProxyError {
        self.retry_safe = true;
        self
    }

    /// The status the client gets when no response has started yet.
    pub(crate) fn status(&self) -> u16 {
        match (self.side, self.cause) {
            (_, Cause::Rejected(r)) => r.status(),
            (Side::Downstream, Cause::TooLarge) => 413,
            (Side::Downstream, Cause::Timeout) => 408,
            (Side::Downstream, _) => 400,
            (Side::Upstream, Cause::Timeout) => 504,
            (Side::Upstream, Cause::Status(s)) => s,
            (Side::Upstream, _) => 502,
        }
    }

    /// Whether the client connection must close after the answer (its stream cannot be
    /// trusted, or the request was not read whole).
    pub(crate) fn closes_client(&self) -> bool {
        self.side == Side::Downstream
    }
}

impl Reject {
    /// The status a refused head gets.
    pub(crate) fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::PayloadTooLarge => 413,
            Reject::UriTooLong => 414,
            Reject::ExpectationFailed => 417,
            Reject::HeadersTooLarge => 431,
            Reject::NotImplemented(_) => 501,
            Reject::VersionNotSupported => 505,
        }
    }
}

/// The exchange decided not to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// lb has no table yet.
    NoTable,
    /// No listener or rule for the request.
    NoRoute,
    /// The chosen Service has no ready endpoints.
    NoEndpoints,
    /// The table answers this rule (or this backend's share) itself: 500 for an invalid or
    /// unauthorised backend reference, as the spec asks.
    Status(u16),
    /// A CORS preflight from an origin the policy does not allow.
    CorsOrigin,
    /// On TLS: the Host selects another listener than the server name the connection's
    /// certificate was chosen for.
    Misdirected,
}

impl Refusal {
    /// Its status.
    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::NoTable | Refusal::NoEndpoints => 503,
            Refusal::NoRoute => 404,
            Refusal::Status(s) => s,
            Refusal::CorsOrigin => 403,
            Refusal::Misdirected => 421,
        }
    }

    /// Why, in words (`explain`).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::NoTable => "lb has no table yet",
            Refusal::NoRoute => "no listener or rule takes the request",
            Refusal::NoEndpoints => "the chosen Service has no ready endpoints",
            Refusal::Status(_) => {
                "the rule (or this backend's share) answers itself: an invalid or unpermitted backend reference, or no backends"
            }
            Refusal::CorsOrigin => "a CORS preflight from an origin the policy does not allow",
            Refusal::Misdirected => {
                "the Host selects another listener than the TLS server name did (misdirected)"
            }
        }
    }
}

/// Runs an I/O future under the connection's deadline armed for `limit`, turning its failure
/// or the deadline into a [`ProxyError`] on `side` in `phase`. The one way timed I/O of an
/// exchange reports errors.
///
/// A plain function returning the timer's future mapped, not an `async fn`: an `async fn`
/// would hold `fut` twice in its state (argument and pinned local), and the I/O futures it
/// wraps are the largest part of an exchange's state.
pub(crate) fn timed<'a, T: 'a>(
    wheel: &'a Wheel,
    deadline: &'a Rc<Deadline>,
    limit: Duration,
    (side, phase): (Side, Phase),
    fut: impl Future<Output = io::Result<T>> + 'a,
) -> impl Future<Output = Result<T, ProxyError>> + 'a {
    wheel.timeout(deadline, limit, fut).map(move |r| match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ProxyError::io(side, phase, &e)),
        Err(_) => Err(ProxyError::new(side, phase, Cause::Timeout)),
    })
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Downstream => "client",
            Side::Upstream => "upstream",
        };
        let phase = match self.phase {
            Phase::RequestHead => "request head",
            Phase::RequestBody => "request body",
            Phase::Connect => "connect",
            Phase::Send => "sending the request",
            Phase::ResponseHead => "response head",
            Phase::ResponseBody => "response body",
        };
        match self.cause {
            Cause::Timeout => write!(f, "{side} timed out ({phase})"),
            Cause::Closed => write!(f, "{side} closed the connection ({phase})"),
            Cause::Io(k) => write!(f, "{side} I/O error: {k} ({phase})"),
            Cause::Framing(w) => write!(f, "{side} framing: {w} ({phase})"),
            Cause::TooLarge => write!(f, "{side} body too large"),
            Cause::Unreachable => write!(f, "no {side} endpoint accepted a connection"),
            Cause::Status(s) => write!(f, "{side} answered {s}, which the route retries"),
            Cause::Rejected(r) => write!(f, "request refused: {}", r.reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(side: Side, cause: Cause) -> u16 {
        ProxyError::new(side, Phase::ResponseHead, cause).status()
    }

    #[test]
    fn every_failure_maps_to_one_status() {
        use Cause::*;
        use Side::*;
        assert_eq!(e(Downstream, TooLarge), 413);
        assert_eq!(e(Downstream, Timeout), 408);
        assert_eq!(e(Downstream, Closed), 400);
        assert_eq!(e(Downstream, Framing("x")), 400);
        assert_eq!(e(Upstream, Timeout), 504);
        assert_eq!(e(Upstream, Closed), 502);
        assert_eq!(e(Upstream, Io(io::ErrorKind::ConnectionRefused)), 502);
        assert_eq!(e(Upstream, Framing("bad chunk")), 502);
        assert_eq!(e(Upstream, Unreachable), 502);
        assert_eq!(e(Upstream, Status(503)), 503);
        assert_eq!(ProxyError::rejected(Reject::HeadersTooLarge).status(), 431);
        assert_eq!(ProxyError::rejected(Reject::VersionNotSupported).status(), 505);
        assert_eq!(ProxyError::rejected(Reject::NotImplemented("x")).status(), 501);
        assert_eq!(ProxyError::rejected(Reject::UriTooLong).status(), 414);
        assert_eq!(ProxyError::rejected(Reject::ExpectationFailed).status(), 417);
        assert_eq!(ProxyError::rejected(Reject::PayloadTooLarge).status(), 413);
        assert_eq!(ProxyError::rejected(Reject::BadRequest("x")).status(), 400);
        assert_eq!(Refusal::NoTable.status(), 503);
        assert_eq!(Refusal::NoRoute.status(), 404);
        assert_eq!(Refusal::NoEndpoints.status(), 503);
        assert_eq!(Refusal::Status(500).status(), 500);
        assert_eq!(Refusal::CorsOrigin.status(), 403);
    }

    #[test]
    fn resets_count_as_closed_and_client_errors_close_the_client() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let err = ProxyError::io(Side::Upstream, Phase::Send, &reset);
        assert_eq!(err.cause, Cause::Closed);
        assert!(!err.closes_client());
        assert!(ProxyError::io(Side::Downstream, Phase::RequestBody, &reset).closes_client());
        assert!(!err.retry_safe && err.retry_safe().retry_safe);
    }
}
