//! Table builder: native [`Table`] → archived bytes. config-sync is the only caller; tests and
//! benches use it to make tables.

use rkyv::{rancor, util::AlignedVec};

use crate::format::Table;

/// Serialises `table` into the bytes a segment slot carries.
pub fn encode(table: &Table) -> Result<AlignedVec<16>, EncodeError> {
    rkyv::to_bytes::<rancor::Error>(table).map_err(|e| EncodeError(e.to_string()))
}

/// Serialisation failed (only on allocation failure or a table beyond rkyv's 4 GiB offsets).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode table: {0}")]
pub struct EncodeError(String);
