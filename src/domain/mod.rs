//! The core of keyward: keys, their string format, verification rules and the use cases.
//! Nothing here imports tonic, sled or cryptoki: the outside world comes in through `ports`.
//!
//! The use cases are seven services (`auth`, `keys`, `verification`, `master`, `audit_reader`,
//! `cluster`, `anomaly`),
//! built together by `services`. Each owns its own state; what several need is shared
//! explicitly: `deps` (HSM, store, clock), `access` (permission checks, refused calls),
//! `proof` (a presented key checked in the HSM), `ledger` (usage and quota leases not yet
//! written), `brute_force`, and the master key state (`master::MasterView`).

pub mod access;
pub mod anomaly;
pub mod audit;
pub mod audit_log;
pub mod audit_reader;
pub mod auth;
pub mod bootstrap;
pub mod brute_force;
pub mod clock;
pub mod cluster;
pub mod deps;
pub mod error;
pub mod key;
pub mod key_format;
pub mod key_index;
pub mod keys;
pub mod ledger;
pub mod listing;
pub mod master;
pub mod ownership;
pub mod policy;
pub mod ports;
pub mod proof;
pub mod quota;
pub mod rotation;
pub mod scope;
pub mod secret;
pub mod services;
pub mod signing;
pub mod update;
pub mod usage;
pub mod usage_log;
pub mod validate;
pub mod verification;

mod auth_failures;
#[cfg(test)]
mod properties;
mod ratelimit;
#[cfg(test)]
mod testing;

pub use self::services::{Services, ServicesConfig};
