//! The compiled routing table: the one contract between config-sync (which builds and
//! publishes it) and lb (which validates it once and then looks requests up in it in place).
//!
//! Flow: `format` (the layout) → `build` (native table → bytes) → `shm` (shared-memory segment
//! with a generation number) → `view` (bytes → validated [`Router`]) → `lookup` (request →
//! rule) → `select` (weighted backend choice).
//!
//! Why a crate of its own: both processes must agree on every byte, and neither may pull the
//! other's runtime (config-sync is tokio and kube, lb is compio). So this crate has no async
//! runtime, no I/O beyond the segment file, and nothing Kubernetes-specific.

pub mod build;
pub mod fixtures;
pub mod format;
pub mod lookup;
pub mod paged;
pub mod select;
pub mod shm;
pub mod view;
pub mod wire;

pub use build::{EncodeError, decode, encode};
pub use format::{FORMAT_VERSION, Table};
pub use lookup::{ActionId, Headers, Request, Route, Scratch, ServiceId};
pub use paged::{PAGE_ITEMS, Paged};
pub use rkyv::util::AlignedVec;
pub use view::{Intake, Router, TableError};

#[cfg(test)]
mod tests;
