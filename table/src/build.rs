//! Table builder: native [`Table`] → archived bytes. config-sync is the only caller; tests and
//! benches use it to make tables.

use rkyv::{rancor, util::AlignedVec};

use crate::format::{ArchivedTable, Table};

/// Serialises `table` into the bytes a segment slot carries.
pub fn encode(table: &Table) -> Result<AlignedVec<16>, EncodeError> {
    encode_into(table, AlignedVec::new())
}

/// [`encode`] into `buffer` (cleared first), reusing its memory: a publisher that recycles the
/// bytes of the table it replaced writes into pages already faulted in, instead of a fresh
/// allocation of the table's size for every table (2 MB at 5,000 routes).
pub fn encode_into(
    table: &Table,
    mut buffer: AlignedVec<16>,
) -> Result<AlignedVec<16>, EncodeError> {
    buffer.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(table, buffer)
        .map_err(|e| EncodeError(e.to_string()))
}

/// Writes `generation` into an encoded table in place: the same bytes [`encode`] makes of the
/// table with that generation. config-sync compares each new table with the last one encoded
/// at generation 0 and stamps the generation only into what it publishes, instead of keeping
/// and comparing the native tables (milliseconds at thousands of routes).
pub fn stamp_generation(bytes: &mut [u8], generation: u64) -> Result<(), EncodeError> {
    let size = size_of::<ArchivedTable>();
    if bytes.len() < size {
        return Err(EncodeError(format!("{} bytes are not a table", bytes.len())));
    }
    // rkyv places the root object last; the field's offset is fixed by the archived layout.
    let at = rkyv::api::root_position::<ArchivedTable>(bytes.len())
        + std::mem::offset_of!(ArchivedTable, generation);
    let len = bytes.len();
    let field = bytes
        .get_mut(at..at + 8)
        .ok_or_else(|| EncodeError(format!("{len} bytes are not a table")))?;
    // Archived integers are little-endian (rkyv's default; `encode` uses it too); the test
    // reads the stamped generation back through the archive.
    field.copy_from_slice(&generation.to_le_bytes());
    Ok(())
}

/// Decodes table bytes into a native [`Table`] (validating them first). For tools and tests;
/// lb reads tables in place through [`Router`](crate::Router) instead.
pub fn decode(bytes: &[u8]) -> Result<Table, EncodeError> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<Table, rancor::Error>(&aligned).map_err(|e| EncodeError(e.to_string()))
}

/// Serialisation failed (only on allocation failure or a table beyond rkyv's 4 GiB offsets).
#[derive(Debug, thiserror::Error)]
#[error("table encoding: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn new(why: String) -> EncodeError {
        EncodeError(why)
    }
}
