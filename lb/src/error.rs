//! Proxy errors: which side failed, whether the request may be retried, and the one place
//! where errors become statuses.

use std::fmt;
use std::io;

use crate::http1::body::BodyError;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Downstream,
    /// The backend.
    Upstream,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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
    /// The service has no ready endpoints.
    NoEndpoints,
    /// The upstream answered with a status the route's retry policy retries.
    Status(u16),
}

/// A failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    /// Where.
    pub side: Side,
    /// What.
    pub kind: Kind,
    /// Nothing the upstream could have acted on was sent: another attempt is safe.
    pub retry_safe: bool,
}

impl ProxyError {
    /// An error on `side`.
    pub fn new(side: Side, kind: Kind) -> ProxyError {
        ProxyError { side, kind, retry_safe: false }
    }

    /// From an I/O error on `side`.
    pub fn io(side: Side, e: &io::Error) -> ProxyError {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => Kind::Closed,
            k => Kind::Io(k),
        };
        ProxyError::new(side, kind)
    }

    /// From a body framing error on `side`.
    pub fn body(side: Side, e: BodyError) -> ProxyError {
        match e {
            BodyError::Chunked(what) => ProxyError::new(side, Kind::Framing(what)),
            BodyError::TooLarge => ProxyError::new(side, Kind::TooLarge),
        }
    }

    /// Marks the error safe to retry.
    pub fn retry_safe(mut self) -> ProxyError {
        self.retry_safe = true;
        self
    }

    /// The status the client gets when no response has started yet.
    pub fn status(&self) -> u16 {
        match (self.side, self.kind) {
            (Side::Downstream, Kind::TooLarge) => 413,
            (Side::Downstream, Kind::Timeout) => 408,
            (Side::Downstream, _) => 400,
            (Side::Upstream, Kind::Timeout) => 504,
            (Side::Upstream, Kind::NoEndpoints) => 503,
            (Side::Upstream, Kind::Status(s)) => s,
            (Side::Upstream, _) => 502,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Downstream => "client",
            Side::Upstream => "upstream",
        };
        match self.kind {
            Kind::Timeout => write!(f, "{side} timed out"),
            Kind::Closed => write!(f, "{side} closed the connection"),
            Kind::Io(k) => write!(f, "{side} I/O error: {k}"),
            Kind::Framing(w) => write!(f, "{side} framing: {w}"),
            Kind::TooLarge => write!(f, "{side} body too large"),
            Kind::Unreachable => write!(f, "no {side} endpoint accepted a connection"),
            Kind::NoEndpoints => write!(f, "{side} service has no ready endpoints"),
            Kind::Status(s) => write!(f, "{side} answered {s}, which the route retries"),
        }
    }
}
