//! Table builder: native [`Table`] → archived bytes. config-sync is the only caller; tests and
//! benches use it to make tables.

use rkyv::{rancor, util::AlignedVec};

use crate::format::Table;

/// Serialises `table` into the bytes a segment slot carries.
pub fn encode(table: &Table) -> Result<AlignedVec<16>, EncodeError> {
    rkyv::to_bytes::<rancor::Error>(table).map_err(|e| EncodeError(e.to_string()))
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
