//! keyward-bench: load figures for keyward anyone can reproduce. The suite drives every scenario
//! against a server between two baselines (the no-op RPC and the raw HSM through keyward's own
//! adapter); the single measurements (verify, rotation, overload, hsm, and the offline audit and
//! usage benches) measure one thing each; `cluster` measures cluster mode on etcd against a single
//! node. It uses keyward as a library (the gRPC client, the HSM adapter, the store, the
//! data-directory helpers); keyward does not depend on it.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod console;
pub mod drive;
pub mod error;
pub mod etcd;
pub mod figures;
pub mod host;
pub mod null_authz;
pub mod offline;
pub mod overload;
pub mod raw_hsm;
pub mod rotation;
pub mod rss;
pub mod signing;
pub mod suite;
pub mod target;
