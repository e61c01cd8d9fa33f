//! Validated, zero-copy view of a table: bytes in, [`Router`] out.
//!
//! `open_parts` is the only way from bytes to a [`Router`]. It takes the root's bytes in an
//! aligned buffer the router owns and runs rkyv's structural check (bytecheck: every relative
//! pointer, length, enum tag and UTF-8 string) on it, then on each chunk it names that the
//! previous generation does not hold (each chunk is checked on its own and says which indices
//! it refers to), then checks those indices against the vectors' lengths, then compiles the
//! regular expressions. After that, lookups read the archive in place without checks of their
//! own. Bytes come from shared memory, which we treat as untrusted: any failure is an error
//! value, never a panic.

#![allow(
    unsafe_code,
    reason = "access_unchecked of an archive validated in `open`; volatile key zeroing"
)]

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use regex_automata::meta;
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::string::ArchivedString;
use rkyv::vec::ArchivedVec;
use rkyv::{Portable, rancor, util::AlignedVec};

use crate::build::bundle_root;
use crate::format::{
    ArchivedAction, ArchivedActionKind, ArchivedBackendTarget, ArchivedChunkRef, ArchivedChunks,
    ArchivedHeaderEdits, ArchivedHostIndex, ArchivedPathMatch, ArchivedPathRewrite, ArchivedRoot,
    ArchivedRouteMatch, ArchivedService, ArchivedValueMatch, ArchivedVirtualHost,
};
use crate::paged::{PAGE_ITEMS, Paged};
use crate::wire::{is_editable, is_field_value, is_host_name, is_token};

/// A table that passed validation, ready for lookups: its root and its chunks, each validated
/// once — a chunk a later generation names again (same place, identity, length and checksum)
/// is shared with it, not copied or checked again.
pub struct Router {
    // INVARIANT: `root` holds an archive that `rkyv::access::<ArchivedRoot>` accepted and that
    // `check_root` accepted; every chunk passed `Chunk::check`, and `cross_check` accepted them
    // together with the root. Nothing is mutated after `open_parts` (keys are wiped on drop).
    root: AlignedVec<16>,
    vhosts: Vec<Arc<Chunk<ArchivedVirtualHost>>>,
    matches: Vec<Arc<Chunk<ArchivedRouteMatch>>>,
    actions: Vec<Arc<Chunk<ArchivedAction>>>,
    services: Vec<Arc<Chunk<ArchivedService>>>,
    regexes: Vec<Arc<Chunk<ArchivedString>>>,
    /// The compiled regexes, by chunk of `regexes` (shared with the generations that share
    /// the chunk: cloning a compiled regex costs allocations, sharing it an increment).
    compiled: Vec<Arc<[meta::Regex]>>,
    intake: Intake,
}

/// What opening a generation took from the previous one and what it read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    /// Chunks shared with the previous generation.
    pub kept: usize,
    /// Chunks read and checked.
    pub read: usize,
    /// Bytes read and checked (root and chunks).
    pub bytes: usize,
}

/// One validated chunk of a paged vector: an archived `Vec<T>`.
struct Chunk<T> {
    id: u64,
    checksum: u32,
    // INVARIANT: passed `rkyv::access::<ArchivedVec<T>>` and `Item::facts`; never mutated.
    bytes: AlignedVec<16>,
    facts: Facts,
    _items: PhantomData<fn() -> T>,
}

/// What a chunk refers to outside itself, checked against each generation's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    /// Largest index referred to, per vector (`VHOSTS`..`REGEXES`), plus one (0: none).
    ends: [u64; 5],
    /// Weighted-round-robin slots: the largest end and the number held.
    wrr_end: u64,
    wrr_count: u64,
}

const VHOSTS: usize = 0;
const MATCHES: usize = 1;
const ACTIONS: usize = 2;
const SERVICES: usize = 3;
const REGEXES: usize = 4;
const NAMES: [&str; 5] = ["virtual host", "match", "action", "Service", "regex"];

impl Facts {
    fn refer(&mut self, vector: usize, index: u32) {
        self.ends[vector] = self.ends[vector].max(u64::from(index) + 1);
    }
}

/// An archived item of a paged vector: what its chunk must satisfy on its own.
trait Item: Portable + Sized
where
    ArchivedVec<Self>: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Checks `items` (whose first has index `base` in its vector) and says what they refer to.
    fn facts(items: &[Self], base: u32) -> Result<Facts, String>;
}

impl<T: Item> Chunk<T>
where
    ArchivedVec<T>: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    fn items(&self) -> &ArchivedVec<T> {
        // SAFETY: `bytes` passed `rkyv::access::<ArchivedVec<T>>` in `check` and is immutable
        // since (INVARIANT on the field).
        unsafe { rkyv::access_unchecked::<ArchivedVec<T>>(&self.bytes) }
    }

    /// Validates a chunk read for `chunk`, which must hold `count` items starting at `base`.
    fn check(
        chunk: &ArchivedChunkRef,
        bytes: AlignedVec<16>,
        base: u32,
        count: usize,
    ) -> Result<Chunk<T>, String> {
        let checksum = crc32fast::hash(&bytes);
        if checksum != chunk.checksum.to_native() || bytes.len() != chunk.len.to_native() as usize {
            return Err(format!(
                "checksum {checksum:#010x} of {} bytes where {:#010x} of {} were announced",
                bytes.len(),
                chunk.checksum,
                chunk.len
            ));
        }
        let items =
            rkyv::access::<ArchivedVec<T>, rancor::Error>(&bytes).map_err(|e| e.to_string())?;
        if items.len() != count {
            return Err(format!("{} items where {count} belong", items.len()));
        }
        let facts = T::facts(items.as_slice(), base)?;
        Ok(Chunk { id: chunk.id.to_native(), checksum, bytes, facts, _items: PhantomData })
    }
}

/// Loads one paged vector's chunks: those the previous generation had at the same place are
/// shared, the others fetched and checked.
fn load<T: Item>(
    vector: usize,
    list: &ArchivedChunks,
    previous: Option<&[Arc<Chunk<T>>]>,
    fetch: &mut dyn FnMut(&ArchivedChunkRef) -> Result<AlignedVec<16>, TableError>,
    intake: &mut Intake,
) -> Result<Vec<Arc<Chunk<T>>>, TableError>
where
    ArchivedVec<T>: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let len = list.len.to_native() as usize;
    if list.chunks.len() != len.div_ceil(PAGE_ITEMS) {
        return Err(TableError::Inconsistent(format!(
            "{} {}s in {} chunks",
            len,
            NAMES[vector],
            list.chunks.len()
        )));
    }
    let mut out = Vec::with_capacity(list.chunks.len());
    for (k, chunk) in list.chunks.iter().enumerate() {
        let same = previous.and_then(|p| p.get(k)).filter(|p| {
            p.id == chunk.id.to_native()
                && p.checksum == chunk.checksum.to_native()
                && p.bytes.len() == chunk.len.to_native() as usize
        });
        if let Some(same) = same {
            intake.kept += 1;
            out.push(Arc::clone(same));
            continue;
        }
        let bytes = fetch(chunk)?;
        intake.read += 1;
        intake.bytes += bytes.len();
        let base = k * PAGE_ITEMS;
        let count = (len - base).min(PAGE_ITEMS);
        let checked = Chunk::check(chunk, bytes, base as u32, count).map_err(|why| {
            TableError::Inconsistent(format!(
                "{} chunk {k} (id {}): {why}",
                NAMES[vector], chunk.id
            ))
        })?;
        out.push(Arc::new(checked));
    }
    Ok(out)
}

/// The item at `index` of a paged vector.
fn item<T: Item>(chunks: &[Arc<Chunk<T>>], index: u32) -> Option<&T>
where
    ArchivedVec<T>: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let index = index as usize;
    chunks.get(index / PAGE_ITEMS)?.items().get(index % PAGE_ITEMS)
}

/// Every item of a paged vector, in order.
fn all<T: Item>(chunks: &[Arc<Chunk<T>>]) -> impl Iterator<Item = &T>
where
    ArchivedVec<T>: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    chunks.iter().flat_map(|c| c.items().iter())
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
    /// A chunk could not be read where the root says it is.
    #[error("chunk {id} at {offset}+{len}: {reason}")]
    Chunk {
        /// Its identity.
        id: u64,
        /// Where.
        offset: u64,
        /// How long.
        len: u32,
        /// What went wrong.
        reason: String,
    },
}

/// Size limit for one compiled regex, so a hostile pattern cannot take the reader's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Router {
    /// Validates a self-contained table ([`encode`](crate::encode)) completely and builds a
    /// router. `generation` is the generation the segment header announced; the table must
    /// carry the same.
    pub fn open(bytes: &[u8], generation: Option<u64>) -> Result<Router, TableError> {
        Router::open_reusing(bytes, generation, None)
    }

    /// [`open`](Self::open), sharing the chunks and compiled regexes of `previous` that the
    /// table names again.
    pub fn open_reusing(
        bytes: &[u8],
        generation: Option<u64>,
        previous: Option<&Router>,
    ) -> Result<Router, TableError> {
        let range = bundle_root(bytes)
            .ok_or_else(|| TableError::Structure(format!("{} bytes hold no root", bytes.len())))?;
        let mut fetch = |chunk: &ArchivedChunkRef| {
            let (offset, len) = (chunk.offset.to_native(), chunk.len.to_native());
            let part = usize::try_from(offset)
                .ok()
                .and_then(|at| bytes.get(at..at.checked_add(len as usize)?))
                .ok_or_else(|| TableError::Chunk {
                    id: chunk.id.to_native(),
                    offset,
                    len,
                    reason: format!("beyond the {} bytes of the table", bytes.len()),
                })?;
            Ok(aligned(part))
        };
        Router::open_parts(aligned(&bytes[range]), generation, previous, &mut fetch)
    }

    /// Validates a root and the chunks it names and builds a router: chunks `previous` holds at
    /// the same place with the same identity, length and checksum are shared with it; the
    /// others come from `fetch`. Compiled regexes of patterns `previous` had are reused too
    /// (compiling is most of the cost of opening a regex-heavy table, ~50 µs a pattern).
    pub fn open_parts(
        root: AlignedVec<16>,
        generation: Option<u64>,
        previous: Option<&Router>,
        fetch: &mut dyn FnMut(&ArchivedChunkRef) -> Result<AlignedVec<16>, TableError>,
    ) -> Result<Router, TableError> {
        let t = rkyv::access::<ArchivedRoot, rancor::Error>(&root)
            .map_err(|e| TableError::Structure(e.to_string()))?;
        if let Some(expected) = generation {
            let found = t.generation.to_native();
            if found != expected {
                return Err(TableError::Generation { expected, found });
            }
        }
        check_root(t)?;
        let mut intake = Intake { kept: 0, read: 0, bytes: root.len() };
        let p = previous;
        let vhosts = load(VHOSTS, &t.vhosts, p.map(|p| &p.vhosts[..]), fetch, &mut intake)?;
        let matches = load(MATCHES, &t.matches, p.map(|p| &p.matches[..]), fetch, &mut intake)?;
        let actions = load(ACTIONS, &t.actions, p.map(|p| &p.actions[..]), fetch, &mut intake)?;
        let services = load(SERVICES, &t.services, p.map(|p| &p.services[..]), fetch, &mut intake)?;
        let regexes = load(REGEXES, &t.regexes, p.map(|p| &p.regexes[..]), fetch, &mut intake)?;
        let counts = [&t.vhosts, &t.matches, &t.actions, &t.services, &t.regexes]
            .map(|c| u64::from(c.len.to_native()));
        let facts = (vhosts.iter().map(|c| c.facts))
            .chain(matches.iter().map(|c| c.facts))
            .chain(actions.iter().map(|c| c.facts))
            .chain(services.iter().map(|c| c.facts))
            .chain(regexes.iter().map(|c| c.facts));
        cross_check(facts, counts, u64::from(t.wrr_slots.to_native()))?;
        let compiled = compile_regexes(&regexes, p)?;
        Ok(Router { root, vhosts, matches, actions, services, regexes, compiled, intake })
    }

    /// The archived root: ports, listeners, certificates and the counts of the paged vectors.
    pub fn table(&self) -> &ArchivedRoot {
        // SAFETY: `root` passed `rkyv::access::<ArchivedRoot>` in `open_parts` and is immutable
        // since (INVARIANT on the field), so the root is valid for this borrow.
        unsafe { rkyv::access_unchecked::<ArchivedRoot>(&self.root) }
    }

    /// Virtual host `index`.
    pub fn vhost(&self, index: u32) -> Option<&ArchivedVirtualHost> {
        item(&self.vhosts, index)
    }

    /// Match `index`.
    pub fn route_match(&self, index: u32) -> Option<&ArchivedRouteMatch> {
        item(&self.matches, index)
    }

    /// Every virtual host, in order.
    pub fn vhosts(&self) -> impl Iterator<Item = &ArchivedVirtualHost> {
        all(&self.vhosts)
    }

    /// Every match, in order.
    pub fn matches(&self) -> impl Iterator<Item = &ArchivedRouteMatch> {
        all(&self.matches)
    }

    /// Every action, in order (index = [`ActionId`](crate::ActionId)).
    pub fn actions(&self) -> impl Iterator<Item = &ArchivedAction> {
        all(&self.actions)
    }

    /// Every Service, in order (index = [`ServiceId`](crate::ServiceId)).
    pub fn services(&self) -> impl Iterator<Item = &ArchivedService> {
        all(&self.services)
    }

    /// Regex `index`'s pattern.
    pub fn regex_pattern(&self, index: u32) -> Option<&str> {
        item(&self.regexes, index).map(|s| s.as_str())
    }

    /// The action `id` names.
    pub fn action(&self, id: crate::ActionId) -> Option<&ArchivedAction> {
        item(&self.actions, id.0)
    }

    /// The Service `id` names.
    pub fn service(&self, id: crate::ServiceId) -> Option<&ArchivedService> {
        item(&self.services, id.0)
    }

    /// The table as native values (a copy; for dumps and tools, never the request path).
    pub fn to_native(&self) -> Result<crate::Table, crate::EncodeError> {
        fn native<'a, A, N>(
            items: impl Iterator<Item = &'a A>,
        ) -> Result<Paged<N>, crate::EncodeError>
        where
            A: rkyv::Deserialize<N, rancor::Strategy<rkyv::de::Pool, rancor::Error>> + 'a,
        {
            items
                .map(|a| {
                    rkyv::deserialize::<N, rancor::Error>(a)
                        .map_err(|e| crate::EncodeError::new(e.to_string()))
                })
                .collect()
        }
        let root = rkyv::deserialize::<crate::format::Root, rancor::Error>(self.table())
            .map_err(|e| crate::EncodeError::new(e.to_string()))?;
        Ok(crate::Table {
            generation: root.generation,
            ports: root.ports,
            listeners: root.listeners,
            vhosts: native(self.vhosts())?,
            matches: native(self.matches())?,
            actions: native(self.actions())?,
            services: native(self.services())?,
            regexes: native(all(&self.regexes))?,
            certificates: root.certificates,
            wrr_slots: root.wrr_slots,
        })
    }

    /// The generation number.
    pub fn generation(&self) -> u64 {
        self.table().generation.to_native()
    }

    /// Size of the table in bytes (root and chunks).
    pub fn size(&self) -> usize {
        let chunks = (self.vhosts.iter().map(|c| c.bytes.len()))
            .chain(self.matches.iter().map(|c| c.bytes.len()))
            .chain(self.actions.iter().map(|c| c.bytes.len()))
            .chain(self.services.iter().map(|c| c.bytes.len()))
            .chain(self.regexes.iter().map(|c| c.bytes.len()));
        self.root.len() + chunks.sum::<usize>()
    }

    /// What opening this generation shared with the previous one and what it read.
    pub fn intake(&self) -> Intake {
        self.intake
    }

    pub(crate) fn regex(&self, index: u32) -> Option<&meta::Regex> {
        let index = index as usize;
        self.compiled.get(index / PAGE_ITEMS)?.get(index % PAGE_ITEMS)
    }

    pub(crate) fn regex_count(&self) -> usize {
        self.table().regexes.len.to_native() as usize
    }

    /// Zeroes the private keys in the root's bytes.
    fn wipe_keys(&mut self) {
        let base = self.root.as_ptr() as usize;
        let ranges: Vec<(usize, usize)> = self
            .table()
            .certificates
            .iter()
            .map(|c| (c.key.as_ptr() as usize - base, c.key.len()))
            .collect();
        let bytes = self.root.as_mut_slice();
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
    /// cleanses a key when it is freed). Keys live in the root only.
    fn drop(&mut self) {
        self.wipe_keys();
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("generation", &self.generation())
            .field("bytes", &self.size())
            .field("regexes", &self.regex_count())
            .field("intake", &self.intake)
            .finish()
    }
}

fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut owned = AlignedVec::<16>::with_capacity(bytes.len());
    owned.extend_from_slice(bytes);
    owned
}

/// Compiles the regexes, chunk by chunk: a chunk shared with `previous` shares its compiled
/// regexes too; in another, a pattern `previous` had is taken from it.
fn compile_regexes(
    chunks: &[Arc<Chunk<ArchivedString>>],
    previous: Option<&Router>,
) -> Result<Vec<Arc<[meta::Regex]>>, TableError> {
    let mut known: Option<HashMap<&str, &meta::Regex>> = None;
    let mut out = Vec::with_capacity(chunks.len());
    for (k, chunk) in chunks.iter().enumerate() {
        if let Some(p) = previous
            && p.regexes.get(k).is_some_and(|same| Arc::ptr_eq(same, chunk))
            && let Some(compiled) = p.compiled.get(k)
        {
            out.push(Arc::clone(compiled));
            continue;
        }
        let known = known.get_or_insert_with(|| {
            let Some(p) = previous else { return HashMap::new() };
            let patterns = all(&p.regexes).map(|s| s.as_str());
            patterns.zip(p.compiled.iter().flat_map(|c| c.iter())).collect()
        });
        let base = k * PAGE_ITEMS;
        let compiled = chunk
            .items()
            .iter()
            .enumerate()
            .map(|(i, pattern)| match known.get(pattern.as_str()) {
                Some(re) => Ok((*re).clone()),
                None => compile_regex(pattern.as_str())
                    .map_err(|reason| TableError::Regex { index: base + i, reason }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(compiled.into());
    }
    Ok(out)
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

/// What the root must satisfy: its host indices, listeners and certificates.
fn check_root(t: &ArchivedRoot) -> Result<(), TableError> {
    let bad = |what: String| Err(TableError::Inconsistent(what));
    let (listeners, vhosts) = (t.listeners.len(), t.vhosts.len.to_native() as usize);
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
    Ok(())
}

/// What the chunks refer to, against the vectors' lengths; the weighted state against
/// `wrr_slots`.
fn cross_check(
    facts: impl Iterator<Item = Facts>,
    counts: [u64; 5],
    wrr_slots: u64,
) -> Result<(), TableError> {
    let (mut wrr_total, mut wrr_end) = (0u64, 0u64);
    for f in facts {
        for (vector, (&end, &count)) in f.ends.iter().zip(&counts).enumerate() {
            if end > count {
                return Err(incons(format!(
                    "{} {} referred to, of {count}",
                    NAMES[vector],
                    end - 1
                )));
            }
        }
        wrr_total += f.wrr_count;
        wrr_end = wrr_end.max(f.wrr_end);
    }
    if wrr_end > wrr_slots {
        return Err(incons(format!("weighted state up to {wrr_end} beyond wrr_slots")));
    }
    if wrr_total != wrr_slots {
        return Err(incons(format!("wrr_slots {wrr_slots} but actions hold {wrr_total}")));
    }
    Ok(())
}

impl Item for ArchivedVirtualHost {
    fn facts(items: &[Self], base: u32) -> Result<Facts, String> {
        let mut f = Facts::default();
        for (i, vhost) in items.iter().enumerate() {
            let i = base + i as u32;
            if let Some(fallback) = vhost.fallback.as_ref() {
                // Chains may point anywhere (a patched table appends virtual hosts); a lookup
                // follows at most `MAX_FALLBACKS` of them, so a loop cannot hang it.
                let fallback = fallback.to_native();
                if fallback == i {
                    return Err(format!("vhost {i} falls back to itself"));
                }
                f.refer(VHOSTS, fallback);
            }
            for m in vhost.matches.iter() {
                f.refer(MATCHES, m.to_native());
            }
        }
        Ok(f)
    }
}

impl Item for ArchivedRouteMatch {
    fn facts(items: &[Self], _: u32) -> Result<Facts, String> {
        let mut f = Facts::default();
        for m in items {
            f.refer(ACTIONS, m.action.to_native());
            if let ArchivedPathMatch::Regex(r) = &m.path {
                f.refer(REGEXES, r.to_native());
            }
            let values = m.headers.iter().map(|h| &h.value).chain(m.query.iter().map(|q| &q.value));
            for v in values {
                if let ArchivedValueMatch::Regex(r) = v {
                    f.refer(REGEXES, r.to_native());
                }
            }
        }
        Ok(f)
    }
}

impl Item for ArchivedAction {
    fn facts(items: &[Self], base: u32) -> Result<Facts, String> {
        let mut f = Facts::default();
        for (i, action) in items.iter().enumerate() {
            let i = base + i as u32;
            check_action(action).map_err(|problem| format!("action {i}: {problem}"))?;
            for m in action.mirrors.iter() {
                f.refer(SERVICES, m.service.to_native());
            }
            if let ArchivedActionKind::Forward { backends, wrr_offset } = &action.kind {
                let end = u64::from(wrr_offset.to_native()) + backends.len() as u64;
                f.wrr_end = f.wrr_end.max(end);
                f.wrr_count += backends.len() as u64;
                for b in backends.iter() {
                    if let ArchivedBackendTarget::Service(s) = &b.target {
                        f.refer(SERVICES, s.to_native());
                    }
                }
            }
        }
        Ok(f)
    }
}

impl Item for ArchivedService {
    fn facts(_: &[Self], _: u32) -> Result<Facts, String> {
        Ok(Facts::default())
    }
}

impl Item for ArchivedString {
    /// Regex patterns: whether they compile is checked when they are compiled.
    fn facts(_: &[Self], _: u32) -> Result<Facts, String> {
        Ok(Facts::default())
    }
}

/// What one action must satisfy for lb to write it into heads: its own fields only.
fn check_action(action: &ArchivedAction) -> Result<(), String> {
    let backend_edits = match &action.kind {
        ArchivedActionKind::Forward { backends, .. } => {
            backends.iter().map(|b| &b.request_headers).collect()
        }
        _ => Vec::new(),
    };
    let rule_edits = [&action.request_headers, &action.response_headers];
    for edits in rule_edits.into_iter().chain(backend_edits) {
        if let Some(problem) = edits_problem(edits) {
            return Err(problem);
        }
    }
    if let ArchivedActionKind::Redirect { status, scheme, host, path, .. } = &action.kind {
        let status = status.to_native();
        let scheme_ok = scheme.as_ref().is_none_or(|s| matches!(s.as_str(), "http" | "https"));
        let host_ok = host.as_ref().is_none_or(|h| is_host_name(h));
        let path_ok = path_ok(path);
        if !(300..400).contains(&status) || !scheme_ok || !host_ok || !path_ok {
            return Err("redirect cannot be written into a Location".into());
        }
    }
    if let Some(h) = action
        .client_cert_headers
        .iter()
        .find(|h| !is_token(h.name.as_bytes()) || !is_editable(&h.name))
    {
        return Err(format!("client-certificate field {:?} cannot be written", h.name.as_str()));
    }
    let rewrite = &action.rewrite;
    if !rewrite.host.as_ref().is_none_or(|h| is_host_name(h)) || !path_ok(&rewrite.path) {
        return Err("rewrite cannot be written into a request head".into());
    }
    if action.mirrors.iter().any(|m| m.per_million.to_native() > 1_000_000) {
        return Err("mirror share above 1,000,000 per million".into());
    }
    if let Some(cors) = action.cors.as_ref() {
        let tokens = cors.methods.iter().chain(cors.headers.iter()).chain(cors.expose.iter());
        let origins_ok =
            cors.origins.iter().all(|o| is_field_value(o.as_bytes()) && !o.contains(','));
        if !origins_ok || !tokens.into_iter().all(|t| is_token(t.as_bytes())) {
            return Err("CORS policy cannot be written into a head".into());
        }
    }
    if action.retry.codes.iter().any(|c| !(100..600).contains(&c.to_native())) {
        return Err("retry status out of range".into());
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
