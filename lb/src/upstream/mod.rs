//! Upstream, in the order a forwarded request meets it: `select` (which backend and endpoint),
//! `pool` (an idle connection to reuse), `connect` (one connection for one attempt) and
//! `retry` (the one budget that decides every resend). The exchange with the upstream over
//! that connection is `proxy`'s.

pub(crate) mod select;
pub(crate) mod pool;
pub(crate) mod connect;
pub(crate) mod h2;
pub(crate) mod retry;

pub(crate) use select::{CoreTable, Target};
