//! The store adapter: key records, audit trail and master-key state in an embedded sled
//! database, with group commit so that every acknowledged write is on disk.

pub(crate) mod codec;
mod flusher;
mod sled_store;

pub use sled_store::SledStore;
