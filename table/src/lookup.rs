//! Request → rule lookup over a validated [`Router`]: port → listener (by Host) → virtual host
//! (by Host) → first matching rule, following fallbacks to less specific hostnames.
//!
//! Precedence was resolved by config-sync when it ordered each virtual host's matches, so this
//! is a first-match scan. Nothing here allocates; regex searches use the caller's per-core
//! [`Scratch`] so cores never share a regex cache (regex-automata's shared pool would take a
//! lock on every search from a second thread).

use std::net::IpAddr;

use regex_automata::{Input, meta};

use crate::format::{
    ArchivedAction, ArchivedHostIndex, ArchivedListener, ArchivedPathMatch, ArchivedPort,
    ArchivedRouteMatch, ArchivedValueMatch,
};
use crate::view::Router;

/// The request fields routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method as sent.
    pub method: &'a [u8],
    /// Path without the query.
    pub path: &'a [u8],
    /// Raw query after `?` (empty when absent).
    pub query: &'a [u8],
    /// Lower-case host without port (see [`normalize_host`]).
    pub host: &'a [u8],
}

/// Header access for header matches.
pub trait Headers {
    /// Value of the first field named `name` (given in lower case; compare case-insensitively).
    fn first(&self, name: &str) -> Option<&[u8]>;
}

/// Outcome of a lookup.
#[derive(Debug, Clone, Copy)]
pub enum Route<'t> {
    /// No Gateway listener on this port accepts the Host.
    NoListener,
    /// A listener took the request but no rule matched.
    NoRoute {
        /// The listener.
        listener: &'t ArchivedListener,
        /// Its index in `listeners`.
        listener_id: u32,
    },
    /// The first matching rule.
    Matched {
        /// The listener that took the request.
        listener: &'t ArchivedListener,
        /// Its index in `listeners`.
        listener_id: u32,
        /// The action's identity, for finding it again in the same [`Router`].
        id: ActionId,
        /// The matched rule's action.
        action: &'t ArchivedAction,
        /// The match that selected it (its path prefix is what `ReplacePrefixMatch` replaces).
        matched: &'t ArchivedRouteMatch,
    },
}

/// The first condition of a match a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The path.
    Path,
    /// The method.
    Method,
    /// Header match `index` (of the match's `headers`): the field is absent, or its value
    /// does not match.
    Header {
        /// Which.
        index: u32,
        /// No such field.
        absent: bool,
    },
    /// Query parameter match `index`.
    Query {
        /// Which.
        index: u32,
        /// No such parameter.
        absent: bool,
    },
}

/// What a traced lookup reports ([`Router::route_traced`]).
pub trait Trace {
    /// The listener the Host chose (`None`: none).
    fn listener(&mut self, _listener: Option<u32>) {}
    /// A virtual host looked at (the Host's own, then its fallbacks).
    fn vhost(&mut self, _vhost: u32) {}
    /// A match tried (index into `matches`) and the first condition it failed.
    fn candidate(&mut self, _match_index: u32, _failed: Option<Failed>) {}
}

/// The trace of an untraced lookup: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Trace for NoTrace {}

/// A rule's action in one table (index into `actions`). Ids found by a lookup stay valid for
/// as long as the [`Router`] they came from: a request carries its `Rc` of that router with the
/// id, never an id alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionId(pub u32);

/// A Service in one table (index into `services`), as named by a backend or a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// Per-core mutable state for lookups (regex caches), created with [`Router::scratch`].
/// A regex's cache is made on its first use, not up front: creating 1,000 caches at every
/// table swap cost milliseconds per core for regexes most tables rarely hit.
#[derive(Debug)]
pub struct Scratch {
    caches: Vec<Option<meta::Cache>>,
}

impl Router {
    /// Fresh per-core scratch space for this router.
    pub fn scratch(&self) -> Scratch {
        Scratch { caches: (0..self.regex_count()).map(|_| None).collect() }
    }

    /// The port entry for a connection accepted on `local`:`port`: an entry for exactly that
    /// address wins over one without an address.
    pub fn port(&self, local: IpAddr, port: u16) -> Option<&ArchivedPort> {
        self.port_index(local, port).and_then(|i| self.table().ports.get(i))
    }

    /// The index in `ports` of [`port`](Self::port)'s entry.
    pub fn port_index(&self, local: IpAddr, port: u16) -> Option<usize> {
        let mut fallback = None;
        for (i, p) in self.table().ports.iter().enumerate() {
            if p.port.to_native() != port {
                continue;
            }
            match p.address.as_ref() {
                Some(a) if a.ip() == local => return Some(i),
                Some(_) => {}
                None => fallback = Some(i),
            }
        }
        fallback
    }

    /// The listener of `port` that `host` (lower-case, without port; empty: none) selects:
    /// exact name, longest wildcard, else the listener without hostname. The same choice picks
    /// a TLS port's certificate by server name and a request's listener by Host, so a request
    /// whose Host selects another listener than its connection's server name did is
    /// misdirected (421).
    pub fn listener_for(&self, port: &ArchivedPort, host: &[u8]) -> Option<u32> {
        find_host(&port.listeners, host)
    }

    /// Finds the rule for `req` arriving on `port`.
    pub fn route<'t, H: Headers + ?Sized>(
        &'t self,
        port: &'t ArchivedPort,
        req: &Request<'_>,
        headers: &H,
        scratch: &mut Scratch,
    ) -> Route<'t> {
        self.route_traced(port, req, headers, scratch, &mut NoTrace)
    }

    /// [`route`](Self::route), telling `trace` each step: the listener, every virtual host
    /// looked at and every match tried with the first condition that failed. lb's lookups use
    /// [`NoTrace`] (compiled away); `explain` records the steps — the same code, so its answer
    /// is lb's.
    pub fn route_traced<'t, H: Headers + ?Sized, T: Trace>(
        &'t self,
        port: &'t ArchivedPort,
        req: &Request<'_>,
        headers: &H,
        scratch: &mut Scratch,
        trace: &mut T,
    ) -> Route<'t> {
        let table = self.table();
        let Some((listener_id, listener)) = find_host(&port.listeners, req.host)
            .and_then(|i| Some((i, table.listeners.get(i as usize)?)))
        else {
            trace.listener(None);
            return Route::NoListener;
        };
        trace.listener(Some(listener_id));
        let mut vhost = find_host(&listener.vhosts, req.host);
        let mut steps = 0;
        while let Some((vhost_id, v)) = vhost.and_then(|i| Some((i, self.vhost(i)?)))
            && steps < MAX_FALLBACKS
        {
            steps += 1;
            trace.vhost(vhost_id);
            for index in v.matches.iter() {
                let index = index.to_native();
                let Some(m) = self.route_match(index) else { continue };
                let checked = self.check(m, req, headers, scratch);
                trace.candidate(index, checked.err());
                if checked.is_ok()
                    && let Some(action) = self.action(ActionId(m.action.to_native()))
                {
                    let id = ActionId(m.action.to_native());
                    return Route::Matched { listener, listener_id, id, action, matched: m };
                }
            }
            vhost = v.fallback.as_ref().map(|f| f.to_native());
        }
        Route::NoRoute { listener, listener_id }
    }

    /// The first condition of `m` that `req` fails, if any.
    fn check<H: Headers + ?Sized>(
        &self,
        m: &ArchivedRouteMatch,
        req: &Request<'_>,
        headers: &H,
        scratch: &mut Scratch,
    ) -> Result<(), Failed> {
        let path_ok = match &m.path {
            ArchivedPathMatch::Exact(p) => req.path == p.as_bytes(),
            ArchivedPathMatch::Prefix(p) => prefix_matches(p.as_bytes(), req.path),
            ArchivedPathMatch::Regex(r) => self.regex_matches(r.to_native(), req.path, scratch),
        };
        if !path_ok {
            return Err(Failed::Path);
        }
        if let Some(method) = m.method.as_ref()
            && req.method != method.as_bytes()
        {
            return Err(Failed::Method);
        }
        for (i, h) in m.headers.iter().enumerate() {
            let Some(value) = headers.first(h.name.as_str()) else {
                return Err(Failed::Header { index: i as u32, absent: true });
            };
            if !self.value_matches(&h.value, value, scratch) {
                return Err(Failed::Header { index: i as u32, absent: false });
            }
        }
        for (i, q) in m.query.iter().enumerate() {
            let Some(value) = query_param(req.query, q.name.as_bytes()) else {
                return Err(Failed::Query { index: i as u32, absent: true });
            };
            if !self.value_matches(&q.value, value, scratch) {
                return Err(Failed::Query { index: i as u32, absent: false });
            }
        }
        Ok(())
    }

    fn value_matches(&self, m: &ArchivedValueMatch, value: &[u8], scratch: &mut Scratch) -> bool {
        match m {
            ArchivedValueMatch::Exact(v) => value == v.as_bytes(),
            ArchivedValueMatch::Regex(r) => self.regex_matches(r.to_native(), value, scratch),
        }
    }

    fn regex_matches(&self, index: u32, haystack: &[u8], scratch: &mut Scratch) -> bool {
        match (self.regex(index), scratch.caches.get_mut(index as usize)) {
            (Some(re), Some(slot)) => {
                let cache = slot.get_or_insert_with(|| re.create_cache());
                re.search_half_with(cache, &Input::new(haystack).earliest(true)).is_some()
            }
            // A scratch from another router: still correct, only slower.
            (Some(re), None) => re.is_match(Input::new(haystack)),
            (None, _) => false,
        }
    }
}

/// Element-wise prefix match: `/v2` matches `/v2`, `/v2/` and `/v2/x` but not `/v2x`. The
/// compiled prefix never ends in `/` except for the root `/`, which matches every path.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
}

/// Value of the first query parameter named exactly `name` (raw, not percent-decoded).
pub fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (n, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (n == name).then_some(v)
    })
}

/// Finds the target for `host` in `index`: exact, then the longest matching wildcard, then
/// the catch-all. Wildcards are found by binary search of each suffix that starts at a dot,
/// longest first: O(labels × log n), not a scan of every wildcard.
pub fn find_host(index: &ArchivedHostIndex, host: &[u8]) -> Option<u32> {
    if let Ok(i) = index.exact.binary_search_by(|e| e.host.as_bytes().cmp(host)) {
        return index.exact.get(i).map(|e| e.target.to_native());
    }
    if !index.wildcard.is_empty() {
        // Skip a leading dot: a wildcard needs at least one byte in front of its suffix.
        for (i, _) in host.iter().enumerate().skip(1).filter(|(_, b)| **b == b'.') {
            let suffix = &host[i..];
            if let Ok(j) = index.wildcard.binary_search_by(|e| e.host.as_bytes().cmp(suffix)) {
                return index.wildcard.get(j).map(|e| e.target.to_native());
            }
        }
    }
    index.any.as_ref().map(|a| a.to_native())
}

/// Most virtual hosts one lookup visits: the Host's own and its fallbacks. config-sync makes
/// each fallback strictly less specific (an exact name, then wildcards each at least one label
/// shorter, then the catch-all), and a host of [`MAX_HOST`] bytes has at most 128 labels; the
/// bound keeps a table whose fallbacks loop from hanging a lookup.
pub const MAX_FALLBACKS: usize = 130;

/// Longest host name we route on (DNS limit); longer hosts match only catch-alls.
pub const MAX_HOST: usize = 255;

/// Lower-cases `raw` (a Host header or URI authority) into `out` and strips the port and the
/// brackets of an IPv6 literal. Returns `None` when the host is longer than [`MAX_HOST`].
pub fn normalize_host<'o>(raw: &[u8], out: &'o mut [u8; MAX_HOST]) -> Option<&'o [u8]> {
    let host = if let Some(rest) = raw.strip_prefix(b"[") {
        // IPv6 literal: "[::1]:8080" → "::1".
        let end = rest.iter().position(|&b| b == b']').unwrap_or(rest.len());
        &rest[..end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    // A trailing dot names the same host (`example.com.`).
    let host = host.strip_suffix(b".").unwrap_or(host);
    let out = out.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}
