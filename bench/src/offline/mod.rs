//! The benches that open a stopped instance's data directory themselves (sled allows one
//! process): the audit trail at scale, and what the usage log costs.

pub mod audit;
pub mod usage;
