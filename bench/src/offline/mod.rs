//! The benches that open a stopped instance's data directory themselves (sled allows one
//! process): the audit trail at scale, what the usage log costs, and what the anomaly
//! detector costs.

pub mod anomaly;
pub mod audit;
pub mod usage;
