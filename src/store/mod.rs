//! The store adapter: key records, audit trail, master-key state and the usage log in an
//! embedded sled database, with group commit so that every acknowledged write is on disk.

pub(crate) mod codec;
mod confirm;
mod disk_space;
mod engine;
mod flusher;
#[doc(hidden)]
pub mod fuzzing;
mod sled_store;
mod usage_codec;
mod usage_log;
mod writer;

pub use engine::Engine;
pub use sled_store::{DEFAULT_WRITE_TIMEOUT, SealedEvent, SledStore, StoreLimits};
