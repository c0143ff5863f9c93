//! Integration tests: the real `keyward` binary, a real SoftHSM2 token per test, a real sled
//! database, over gRPC on 127.0.0.1.

mod common;

mod anomaly;
mod api;
mod audit;
mod auth;
mod brute_force;
mod cluster;
mod cluster_status;
mod console;
mod crash;
mod disk_faults;
mod docs_examples;
mod durability;
mod etcd_harness;
mod ext_authz;
mod forward_auth;
mod gateways;
mod grpcurl;
mod h2load;
mod hostile;
mod hsm_faults;
mod hsm_token;
mod init;
mod leaks;
mod limits;
mod master;
mod metrics;
mod otel;
mod ownership;
mod policies;
mod rbac;
mod reflection;
mod rotation;
mod secrets;
mod shedding;
mod signing;
mod startup;
mod tls;
mod usage;
