//! Validated, zero-copy view of a table: bytes in, [`Router`] out.
//!
//! `open` is the only way from bytes to a [`Router`]. It copies the bytes into an aligned buffer
//! the router owns, runs rkyv's structural check (bytecheck: every relative pointer, length,
//! enum tag and UTF-8 string), then checks every index this crate follows, then compiles the
//! regular expressions. After that, lookups read the archive in place without checks of their
//! own. Bytes come from shared memory, which we treat as untrusted: any failure is an error
//! value, never a panic.

#![allow(
    unsafe_code,
    reason = "access_unchecked of an archive validated in `open`; volatile key zeroing"
)]

use std::collections::HashMap;

use regex_automata::meta;
use rkyv::{rancor, util::AlignedVec};

use crate::format::{
    ArchivedActionKind, ArchivedBackendTarget, ArchivedHeaderEdits, ArchivedHostIndex,
    ArchivedPathMatch, ArchivedPathRewrite, ArchivedTable, ArchivedValueMatch,
};
use crate::wire::{is_editable, is_field_value, is_host_name, is_token};

/// A table that passed validation, ready for lookups.
pub struct Router {
    // INVARIANT: `bytes` holds an archive that `rkyv::access::<ArchivedTable>` accepted and that
    // `check_indices` accepted; it is never mutated after `open`.
    bytes: AlignedVec<16>,
    regexes: Vec<meta::Regex>,
}

/// Why a table was refused.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// rkyv's structural check failed.
    #[error("table structure is invalid: {0}")]
    Structure(String),
    /// An index points outside its vector, or an invariant of the format does not hold.
    #[error("table is inconsistent: {0}")]
    Inconsistent(String),
    /// A regular expression does not compile.
    #[error("regex {index} does not compile: {reason}")]
    Regex {
        /// Index into the table's regexes.
        index: usize,
        /// Compiler message.
        reason: String,
    },
    /// The table's own generation does not match the one it was published under.
    #[error("table says generation {found}, header said {expected}")]
    Generation {
        /// From the header.
        expected: u64,
        /// From the table.
        found: u64,
    },
}

/// Size limit for one compiled regex, so a hostile pattern cannot take the reader's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Router {
    /// Validates `bytes` completely and builds a router. `generation` is the generation the
    /// segment header announced; the table must carry the same.
    pub fn open(bytes: &[u8], generation: Option<u64>) -> Result<Router, TableError> {
        let mut owned = AlignedVec::<16>::with_capacity(bytes.len());
        owned.extend_from_slice(bytes);
        Router::open_owned(owned, generation)
    }

    /// [`open`](Self::open) for bytes already in an aligned buffer (a segment snapshot).
    pub fn open_owned(
        owned: AlignedVec<16>,
        generation: Option<u64>,
    ) -> Result<Router, TableError> {
        Router::open_reusing(owned, generation, None)
    }

    /// [`open_owned`](Self::open_owned), taking compiled regexes from `previous` where the
    /// pattern is the same. Compiling is most of the cost of opening a regex-heavy table
    /// (~50 µs a pattern); consecutive generations mostly share their patterns.
    pub fn open_reusing(
        owned: AlignedVec<16>,
        generation: Option<u64>,
        previous: Option<&Router>,
    ) -> Result<Router, TableError> {
        let table = rkyv::access::<ArchivedTable, rancor::Error>(&owned)
            .map_err(|e| TableError::Structure(e.to_string()))?;
        if let Some(expected) = generation {
            let found = table.generation.to_native();
            if found != expected {
                return Err(TableError::Generation { expected, found });
            }
        }
        check_indices(table)?;
        let known: HashMap<&str, &meta::Regex> = previous
            .map(|p| p.table().regexes.iter().map(|s| s.as_str()).zip(p.regexes.iter()).collect())
            .unwrap_or_default();
        let regexes = table
            .regexes
            .iter()
            .enumerate()
            .map(|(index, pattern)| match known.get(pattern.as_str()) {
                Some(re) => Ok((*re).clone()),
                None => compile_regex(pattern.as_str())
                    .map_err(|reason| TableError::Regex { index, reason }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Router { bytes: owned, regexes })
    }

    /// The archived table.
    pub fn table(&self) -> &ArchivedTable {
        // SAFETY: `bytes` passed `rkyv::access::<ArchivedTable>` in `open` and is immutable
        // since (INVARIANT on the field), so the root is valid for this borrow.
        unsafe { rkyv::access_unchecked::<ArchivedTable>(&self.bytes) }
    }

    /// The table as native values (a copy; for dumps and tools, never the request path).
    pub fn to_native(&self) -> Result<crate::Table, crate::EncodeError> {
        rkyv::deserialize::<crate::Table, rancor::Error>(self.table())
            .map_err(|e| crate::EncodeError::new(e.to_string()))
    }

    /// The generation number.
    pub fn generation(&self) -> u64 {
        self.table().generation.to_native()
    }

    /// Size of the table in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn regex(&self, index: u32) -> Option<&meta::Regex> {
        self.regexes.get(index as usize)
    }

    pub(crate) fn regex_count(&self) -> usize {
        self.regexes.len()
    }
}

impl Router {
    /// The table's bytes back, private keys zeroed as dropping does: the buffer the next
    /// generation is read into ([`SegmentReader::read_into`](crate::shm::SegmentReader::read_into)),
    /// already faulted in (a fresh 2 MB buffer costs its page faults on every intake).
    pub fn into_bytes(self) -> AlignedVec<16> {
        let mut router = std::mem::ManuallyDrop::new(self);
        router.wipe_keys();
        drop(std::mem::take(&mut router.regexes));
        std::mem::take(&mut router.bytes)
    }

    /// Zeroes the private keys in the table's bytes.
    fn wipe_keys(&mut self) {
        let base = self.bytes.as_ptr() as usize;
        let ranges: Vec<(usize, usize)> = self
            .table()
            .certificates
            .iter()
            .map(|c| (c.key.as_ptr() as usize - base, c.key.len()))
            .collect();
        let bytes = self.bytes.as_mut_slice();
        for (start, len) in ranges {
            for b in bytes.iter_mut().skip(start).take(len) {
                // SAFETY: `b` is a valid, aligned, exclusive reference into our own buffer;
                // a volatile store is not elided although the buffer is freed next.
                unsafe { std::ptr::write_volatile(b, 0) };
            }
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Router {
    /// Zeroes the private keys in the table's bytes, so a dropped generation does not leave
    /// them in freed memory (the TLS library's parsed copies are its own to clear: aws-lc
    /// cleanses a key when it is freed).
    fn drop(&mut self) {
        self.wipe_keys();
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("generation", &self.generation())
            .field("bytes", &self.bytes.len())
            .field("regexes", &self.regexes.len())
            .finish()
    }
}

/// Compiles a Gateway API regular expression as a whole-input match.
pub fn compile_regex(pattern: &str) -> Result<meta::Regex, String> {
    let anchored = format!("^(?:{pattern})$");
    meta::Regex::builder()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .dfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .hybrid_cache_capacity(REGEX_SIZE_LIMIT),
        )
        .build(&anchored)
        .map_err(|e| e.to_string())
}

fn check_indices(t: &ArchivedTable) -> Result<(), TableError> {
    let bad = |what: String| Err(TableError::Inconsistent(what));
    let (listeners, vhosts, matches, actions, services, regexes) = (
        t.listeners.len(),
        t.vhosts.len(),
        t.matches.len(),
        t.actions.len(),
        t.services.len(),
        t.regexes.len(),
    );
    for (i, port) in t.ports.iter().enumerate() {
        check_host_index(&port.listeners, listeners)
            .map_err(|e| incons(format!("port {i}: {e}")))?;
    }
    for (i, listener) in t.listeners.iter().enumerate() {
        check_host_index(&listener.vhosts, vhosts)
            .map_err(|e| incons(format!("listener {i}: {e}")))?;
        if let Some(c) =
            listener.certificates.iter().find(|c| c.to_native() as usize >= t.certificates.len())
        {
            return bad(format!("listener {i}: certificate {c} out of range"));
        }
    }
    for (i, cert) in t.certificates.iter().enumerate() {
        // Whether the DER parses is the TLS library's check when lb loads the key; here only
        // what every reader relies on.
        if cert.chain.is_empty() || cert.key.is_empty() {
            return bad(format!("certificate {i}: empty chain or key"));
        }
    }
    for (i, vhost) in t.vhosts.iter().enumerate() {
        if let Some(fallback) = vhost.fallback.as_ref() {
            let fallback = fallback.to_native() as usize;
            if fallback <= i || fallback >= vhosts {
                return bad(format!("vhost {i}: fallback {fallback} must be in ({i}, {vhosts})"));
            }
        }
        if let Some(m) = vhost.matches.iter().find(|m| m.to_native() as usize >= matches) {
            return bad(format!("vhost {i}: match {m} out of range"));
        }
    }
    let regex_ok = |r: u32| (r as usize) < regexes;
    for (i, m) in t.matches.iter().enumerate() {
        if m.action.to_native() as usize >= actions {
            return bad(format!("match {i}: action out of range"));
        }
        let path_ok = match &m.path {
            ArchivedPathMatch::Regex(r) => regex_ok(r.to_native()),
            ArchivedPathMatch::Prefix(_) | ArchivedPathMatch::Exact(_) => true,
        };
        let values = m.headers.iter().map(|h| &h.value).chain(m.query.iter().map(|q| &q.value));
        let values_ok = values.into_iter().all(|v| match v {
            ArchivedValueMatch::Regex(r) => regex_ok(r.to_native()),
            ArchivedValueMatch::Exact(_) => true,
        });
        if !path_ok || !values_ok {
            return bad(format!("match {i}: regex out of range"));
        }
    }
    let mut wrr_total: u64 = 0;
    for (i, action) in t.actions.iter().enumerate() {
        let backend_edits = match &action.kind {
            ArchivedActionKind::Forward { backends, .. } => {
                backends.iter().map(|b| &b.request_headers).collect()
            }
            _ => Vec::new(),
        };
        let rule_edits = [&action.request_headers, &action.response_headers];
        for edits in rule_edits.into_iter().chain(backend_edits) {
            if let Some(problem) = edits_problem(edits) {
                return bad(format!("action {i}: {problem}"));
            }
        }
        if let ArchivedActionKind::Redirect { status, scheme, host, path, .. } = &action.kind {
            let status = status.to_native();
            let scheme_ok = scheme.as_ref().is_none_or(|s| matches!(s.as_str(), "http" | "https"));
            let host_ok = host.as_ref().is_none_or(|h| is_host_name(h));
            let path_ok = path_ok(path);
            if !(300..400).contains(&status) || !scheme_ok || !host_ok || !path_ok {
                return bad(format!("action {i}: redirect cannot be written into a Location"));
            }
        }
        if let Some(h) = action
            .client_cert_headers
            .iter()
            .find(|h| !is_token(h.name.as_bytes()) || !is_editable(&h.name))
        {
            return bad(format!(
                "action {i}: client-certificate field {:?} cannot be written",
                h.name.as_str()
            ));
        }
        let rewrite = &action.rewrite;
        if !rewrite.host.as_ref().is_none_or(|h| is_host_name(h)) || !path_ok(&rewrite.path) {
            return bad(format!("action {i}: rewrite cannot be written into a request head"));
        }
        if action.mirrors.iter().any(|m| {
            m.service.to_native() as usize >= services || m.per_million.to_native() > 1_000_000
        }) {
            return bad(format!("action {i}: mirror service out of range"));
        }
        if let Some(cors) = action.cors.as_ref() {
            let tokens = cors.methods.iter().chain(cors.headers.iter()).chain(cors.expose.iter());
            let origins_ok =
                cors.origins.iter().all(|o| is_field_value(o.as_bytes()) && !o.contains(','));
            if !origins_ok || !tokens.into_iter().all(|t| is_token(t.as_bytes())) {
                return bad(format!("action {i}: CORS policy cannot be written into a head"));
            }
        }
        if action.retry.codes.iter().any(|c| !(100..600).contains(&c.to_native())) {
            return bad(format!("action {i}: retry status out of range"));
        }
        if let ArchivedActionKind::Forward { backends, wrr_offset } = &action.kind {
            let end = u64::from(wrr_offset.to_native()) + backends.len() as u64;
            if end > u64::from(t.wrr_slots.to_native()) {
                return bad(format!("action {i}: weighted state beyond wrr_slots"));
            }
            wrr_total += backends.len() as u64;
            for b in backends.iter() {
                if let ArchivedBackendTarget::Service(s) = &b.target
                    && s.to_native() as usize >= services
                {
                    return bad(format!("action {i}: service out of range"));
                }
            }
        }
    }
    if wrr_total != u64::from(t.wrr_slots.to_native()) {
        return bad(format!("wrr_slots {} but actions hold {wrr_total}", t.wrr_slots));
    }
    Ok(())
}

/// A path lb may write into a request line or `Location`.
fn path_ok(path: &ArchivedPathRewrite) -> bool {
    match path {
        ArchivedPathRewrite::Keep => true,
        ArchivedPathRewrite::Full(p) => {
            p.starts_with('/') && is_field_value(p.as_bytes()) && !p.contains(' ')
        }
        ArchivedPathRewrite::Prefix(p) => {
            (p.is_empty() || p.starts_with('/')) && is_field_value(p.as_bytes()) && !p.contains(' ')
        }
    }
}

/// Why lb could not write these header edits into a head.
fn edits_problem(edits: &ArchivedHeaderEdits) -> Option<String> {
    let fields = || edits.set.iter().chain(edits.add.iter());
    let mut names =
        fields().map(|f| f.name.as_str()).chain(edits.remove.iter().map(|n| n.as_str()));
    if let Some(name) = names.find(|n| !is_token(n.as_bytes()) || !is_editable(n)) {
        return Some(format!("header name {name:?} is not a token or is one lb owns"));
    }
    fields()
        .find(|f| !is_field_value(f.value.as_bytes()))
        .map(|f| format!("header {:?} has a value lb cannot send", f.name.as_str()))
}

fn incons(s: String) -> TableError {
    TableError::Inconsistent(s)
}

fn check_host_index(index: &ArchivedHostIndex, targets: usize) -> Result<(), String> {
    let entries = index.exact.iter().chain(index.wildcard.iter());
    if let Some(e) = entries.clone().find(|e| e.target.to_native() as usize >= targets) {
        return Err(format!("host {:?} targets {} of {targets}", e.host.as_str(), e.target));
    }
    if let Some(e) = entries.clone().find(|e| e.host.bytes().any(|b| b.is_ascii_uppercase())) {
        return Err(format!("host {:?} is not lower-case", e.host.as_str()));
    }
    if index.exact.windows(2).any(|w| w[0].host.as_bytes() >= w[1].host.as_bytes()) {
        return Err("exact hosts are not strictly sorted".into());
    }
    if index.wildcard.windows(2).any(|w| w[0].host.as_bytes() >= w[1].host.as_bytes()) {
        return Err("wildcards are not strictly sorted".into());
    }
    if let Some(e) = index.wildcard.iter().find(|e| !e.host.starts_with('.')) {
        return Err(format!("wildcard {:?} does not start with a dot", e.host.as_str()));
    }
    if let Some(any) = index.any.as_ref()
        && any.to_native() as usize >= targets
    {
        return Err(format!("catch-all targets {any} of {targets}"));
    }
    Ok(())
}
