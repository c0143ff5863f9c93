//! The core of keyward: keys, their string format, verification rules and the use cases.
//! Nothing here imports tonic, sled or cryptoki: the outside world comes in through `ports`.

pub mod audit;
pub mod audit_log;
pub mod auth_failures;
pub mod clock;
pub mod error;
pub mod key;
pub mod key_format;
pub mod leak;
pub mod listing;
pub mod master;
pub mod ownership;
pub mod policy;
pub mod ports;
pub mod quota;
pub mod rotation;
pub mod scope;
pub mod secret;
pub mod service;
pub mod sweep;
pub mod brute_force;
pub mod update;
pub mod usage;
pub mod usage_log;
pub mod validate;
pub mod verify;

mod auth_cache;
#[cfg(test)]
mod properties;
mod ratelimit;
