//! HSM adapters for the `domain::ports::Hsm` port: PKCS#11 through cryptoki (any module:
//! SoftHSM2 in development, a real HSM in production), and an in-memory fake for unit tests.

#[cfg(test)]
pub mod fake;
mod observe;
mod pkcs11;
mod provision;
mod rv;

pub use pkcs11::{FirstConnect, Pkcs11Config, Pkcs11Hsm, StartError, UNWRAPPED_CACHE, wrap_key_label};
pub use provision::{create_master_key, init_dev_token};

/// The label (and `CKA_ID`) of the key that seals the audit chain.
pub const AUDIT_KEY_LABEL: &str = "keyward-audit-v1";

/// The label (and `CKA_ID`) of master key version `n` on the token.
pub fn master_key_label(version: crate::domain::key::MasterKeyVersion) -> String {
    format!("keyward-master-v{}", version.0)
}
