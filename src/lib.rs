//! keyward: a self-hosted API-key service. Keys are issued, verified and revoked over gRPC; the
//! master HMAC key lives in a PKCS#11 HSM; metadata and the audit trail live in sled.

pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod hsm;
pub mod http;
pub mod http1;
pub mod init;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Generated protobuf and gRPC code for `keyward.v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("keyward.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keyward_descriptor");

    impl VerifyCode {
        /// The code's name without its `VERIFY_CODE_` prefix: `VALID`, `RATE_LIMITED`, ….
        pub fn short_name(self) -> &'static str {
            let name = self.as_str_name();
            name.strip_prefix("VERIFY_CODE_").unwrap_or(name)
        }
    }
}
