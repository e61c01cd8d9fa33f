//! Table builder: native [`Table`] → archived bytes. config-sync is the only caller; tests and
//! benches use it to make tables.
//!
//! A table is encoded as a [`Root`](crate::format::Root) and one chunk per page of each paged vector. An
//! [`Encoder`] remembers the chunks it made: a page whose identity did not change since (or
//! that encodes to the same length, CRC32 and keyed hash at the same place) keeps its chunk, so one changed route
//! costs the encoding of a few pages and the root, not of the whole table. Where the chunks go
//! is the [`Store`]'s business: the segment writer places them in its file; [`encode`] puts
//! them in one buffer after a small header (the self-contained form tools, tests and the fuzzer
//! use).

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};

use std::hash::BuildHasher;

use crate::format::{ArchivedRoot, ChunkRef, Chunks, ChunksResolver, Table};
use crate::paged::Paged;
use rkyv::api::high::HighSerializer;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Serialize};

/// Where an [`Encoder`] puts chunks.
pub trait Store {
    /// Stores a new chunk's bytes; returns its offset.
    fn store(&mut self, bytes: &[u8]) -> std::io::Result<u64>;
    /// The next table refers to `chunk` again (stored for an earlier one): it must stay.
    fn keep(&mut self, chunk: &ChunkRef);
}

/// Serialises a slice as an archived `Vec` without copying it into one (a page of a [`Paged`]).
struct PageRef<'a, T>(&'a [T]);

impl<T: Archive> Archive for PageRef<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<T, S> Serialize<S> for PageRef<'_, T>
where
    T: Serialize<S>,
    S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0, serializer)
    }
}

/// A [`Root`](crate::format::Root) that borrows what it does not own (the listeners' host indices are most of a
/// root: thousands of names, which a copy would allocate one by one), archived as a `Root`.
struct RootRef<'t> {
    table: &'t Table,
    chunks: [Chunks; 5],
}

/// What [`RootRef`]'s parts left to resolve.
struct RootRefResolver {
    ports: VecResolver,
    listeners: VecResolver,
    certificates: VecResolver,
    chunks: [ChunksResolver; 5],
}

impl Archive for RootRef<'_> {
    type Archived = ArchivedRoot;
    type Resolver = RootRefResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::munge::munge!(let ArchivedRoot {
            generation, ports, listeners, certificates, wrr_slots,
            vhosts, matches, actions, services, regexes,
        } = out);
        let t = self.table;
        0u64.resolve((), generation);
        ArchivedVec::resolve_from_slice(&t.ports, resolver.ports, ports);
        ArchivedVec::resolve_from_slice(&t.listeners, resolver.listeners, listeners);
        ArchivedVec::resolve_from_slice(&t.certificates, resolver.certificates, certificates);
        t.wrr_slots.resolve((), wrr_slots);
        let places = [vhosts, matches, actions, services, regexes];
        for ((chunks, resolver), out) in self.chunks.iter().zip(resolver.chunks).zip(places) {
            chunks.resolve(resolver, out);
        }
    }
}

impl<S> Serialize<S> for RootRef<'_>
where
    S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
    S::Error: rancor::Source,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        let t = self.table;
        let [v, m, a, sv, r] = &self.chunks;
        Ok(RootRefResolver {
            ports: ArchivedVec::serialize_from_slice(&t.ports, s)?,
            listeners: ArchivedVec::serialize_from_slice(&t.listeners, s)?,
            certificates: ArchivedVec::serialize_from_slice(&t.certificates, s)?,
            chunks: [
                v.serialize(s)?,
                m.serialize(s)?,
                a.serialize(s)?,
                sv.serialize(s)?,
                r.serialize(s)?,
            ],
        })
    }
}

/// A chunk an encoder made: which page it was made of, where it went, and a keyed 64-bit hash
/// of its bytes (with the length and CRC32 in `chunk`, how a renewed page that encodes to the
/// same bytes is known without keeping them: 2 MB at 5,000 routes).
#[derive(Debug)]
struct Made {
    page: u64,
    chunk: ChunkRef,
    hash: u64,
}

/// Encodes tables into chunks, remembering them between tables.
#[derive(Debug, Default)]
pub struct Encoder {
    /// Per paged vector (vhosts, matches, actions, services, regexes), per page.
    made: [Vec<Made>; 5],
    /// Keys of the hash in [`Made`], random per encoder.
    keys: std::hash::RandomState,
    /// Chunks made and kept by the last [`encode`](Self::encode).
    pub last: Reused,
}

/// What one encoding made anew and what it kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reused {
    /// Chunks kept from the previous table.
    pub kept: usize,
    /// Chunks encoded and stored.
    pub stored: usize,
    /// Bytes stored (chunks; the root is the caller's).
    pub bytes: usize,
}

impl Encoder {
    /// Encodes `table` at generation 0 (see [`stamp_generation`]): new chunks go to `store`,
    /// chunks it kept are named to it; returns the root's bytes. `epoch` must be larger than
    /// that of any earlier call with this store's chunks (the generation about to be
    /// published): chunk identities are `epoch << 24 | count`.
    pub fn encode(
        &mut self,
        table: &Table,
        epoch: u64,
        store: &mut dyn Store,
    ) -> Result<AlignedVec<16>, EncodeError> {
        self.last = Reused::default();
        let [vhosts, matches, actions, services, regexes] = &mut self.made;
        let mut state = State { epoch, count: 0, reused: &mut self.last, keys: &self.keys };
        let root = RootRef {
            table,
            chunks: [
                chunks(&table.vhosts, vhosts, &mut state, store)?,
                chunks(&table.matches, matches, &mut state, store)?,
                chunks(&table.actions, actions, &mut state, store)?,
                chunks(&table.services, services, &mut state, store)?,
                chunks(&table.regexes, regexes, &mut state, store)?,
            ],
        };
        rkyv::to_bytes::<rancor::Error>(&root).map_err(|e| EncodeError(e.to_string()))
    }

    /// Forgets every chunk: the next table is stored whole (the store lost them: a fresh
    /// segment, or a store that failed).
    pub fn forget(&mut self) {
        self.made = Default::default();
    }

    /// Bytes of every chunk of the last table.
    pub fn size(&self) -> usize {
        self.made.iter().flatten().map(|m| m.chunk.len as usize).sum()
    }
}

/// An encoding's running counts.
struct State<'s> {
    epoch: u64,
    /// Chunks made by this encoding (their identities' low bits).
    count: u64,
    reused: &'s mut Reused,
    keys: &'s std::hash::RandomState,
}

/// The chunks of one paged vector, keeping those whose page did not change.
fn chunks<T>(
    items: &Paged<T>,
    made: &mut Vec<Made>,
    State { epoch, count, reused, keys }: &mut State<'_>,
    store: &mut dyn Store,
) -> Result<Chunks, EncodeError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>>,
{
    let mut refs = Vec::with_capacity(items.pages());
    made.truncate(items.pages());
    for page in 0..items.pages() {
        let id = items.page_id(page).unwrap_or(0);
        if let Some(m) = made.get(page)
            && m.page == id
        {
            store.keep(&m.chunk);
            reused.kept += 1;
            refs.push(m.chunk);
            continue;
        }
        let bytes = rkyv::to_bytes::<rancor::Error>(&PageRef(items.page(page)))
            .map_err(|e| EncodeError(e.to_string()))?;
        let (hash, checksum) = (keys.hash_one(bytes.as_slice()), crc32fast::hash(&bytes));
        if let Some(m) = made.get_mut(page)
            && (m.hash, m.chunk.checksum, m.chunk.len as usize) == (hash, checksum, bytes.len())
        {
            m.page = id;
            store.keep(&m.chunk);
            reused.kept += 1;
            refs.push(m.chunk);
            continue;
        }
        let offset = store.store(&bytes).map_err(|e| EncodeError(e.to_string()))?;
        *count += 1;
        let chunk = ChunkRef {
            id: *epoch << 24 | *count,
            offset,
            len: u32::try_from(bytes.len()).map_err(|_| EncodeError("chunk over 4 GiB".into()))?,
            checksum,
        };
        reused.stored += 1;
        reused.bytes += bytes.len();
        refs.push(chunk);
        let m = Made { page: id, chunk, hash };
        match made.get_mut(page) {
            Some(slot) => *slot = m,
            None => made.push(m),
        }
    }
    Ok(Chunks { len: items.len() as u32, chunks: refs })
}

/// Bytes of the self-contained form: `[root offset u64 LE][root length u64 LE]`, then the
/// chunks, then the root; chunk offsets count from the start.
const BUNDLE_HEADER: usize = 16;

/// The self-contained form's store: one buffer.
struct Bundle(AlignedVec<16>);

impl Store for Bundle {
    fn store(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        let at = self.0.len().next_multiple_of(16);
        self.0.resize(at, 0);
        self.0.extend_from_slice(bytes);
        Ok(at as u64)
    }

    fn keep(&mut self, _: &ChunkRef) {}
}

/// Serialises `table` into one self-contained buffer (root and chunks; see [`Bundle`]), at the
/// table's own generation.
pub fn encode(table: &Table) -> Result<AlignedVec<16>, EncodeError> {
    let mut bundle = Bundle(AlignedVec::new());
    bundle.0.resize(BUNDLE_HEADER, 0);
    let mut root = Encoder::default().encode(table, 1, &mut bundle)?;
    stamp_generation(&mut root, table.generation)?;
    let at = bundle.store(&root).map_err(|e| EncodeError(e.to_string()))?;
    bundle.0[..8].copy_from_slice(&at.to_le_bytes());
    bundle.0[8..16].copy_from_slice(&(root.len() as u64).to_le_bytes());
    Ok(bundle.0)
}

/// The root's place in a self-contained buffer made by [`encode`].
pub(crate) fn bundle_root(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let word = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)).ok()
    };
    let (at, len) = (word(0)?, word(8)?);
    let end = at.checked_add(len)?;
    (at >= BUNDLE_HEADER && end <= bytes.len()).then_some(at..end)
}

/// Writes `generation` into an encoded root in place: the same bytes the encoder makes of the
/// root with that generation. config-sync compares each new root with the last one encoded at
/// generation 0 and stamps the generation only into what it publishes.
pub fn stamp_generation(root: &mut [u8], generation: u64) -> Result<(), EncodeError> {
    let size = size_of::<ArchivedRoot>();
    if root.len() < size {
        return Err(EncodeError(format!("{} bytes are not a table root", root.len())));
    }
    // rkyv places the root object last; the field's offset is fixed by the archived layout.
    let at = rkyv::api::root_position::<ArchivedRoot>(root.len())
        + std::mem::offset_of!(ArchivedRoot, generation);
    let len = root.len();
    let field = root
        .get_mut(at..at + 8)
        .ok_or_else(|| EncodeError(format!("{len} bytes are not a table root")))?;
    // Archived integers are little-endian (rkyv's default; `encode` uses it too); the test
    // reads the stamped generation back through the archive.
    field.copy_from_slice(&generation.to_le_bytes());
    Ok(())
}

/// Decodes a self-contained table ([`encode`]) into a native [`Table`] (validating it first).
/// For tools and tests; lb reads tables in place through [`Router`](crate::Router) instead.
pub fn decode(bytes: &[u8]) -> Result<Table, EncodeError> {
    crate::Router::open(bytes, None).map_err(|e| EncodeError(e.to_string()))?.to_native()
}

/// Serialisation failed (only on allocation failure, a table beyond rkyv's 4 GiB offsets or a
/// store that could not write).
#[derive(Debug, thiserror::Error)]
#[error("table encoding: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn new(why: String) -> EncodeError {
        EncodeError(why)
    }
}
