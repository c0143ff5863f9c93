//! What the PKCS#11 adapter reports about each operation: its name (a metric label and span
//! attribute from a fixed set), a tracing span, and error counts. Never an input or a digest.

use crate::{domain::ports::HsmError, metrics};

/// An HSM operation, as metrics and traces name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `C_Verify` (with the inner `C_Sign`s of a wrapped digest).
    Verify,
    /// `C_Sign` (CKM_SHA256_HMAC): a new digest.
    Sign,
    /// `C_Sign` of a digest under a newer master key.
    Wrap,
    /// `C_GenerateRandom`.
    Random,
    CreateMasterKey,
    DestroyMasterKey,
    /// Finding a master key version another cluster node made.
    FindMasterKey,
    /// A new signing secret: `C_GenerateRandom`, `C_CreateObject`, `C_WrapKey`.
    NewSigningSecret,
    /// `C_Verify` of a request signature (with `C_UnwrapKey` when not cached).
    VerifySignature,
    CreateWrapKey,
    DestroyWrapKey,
    /// Finding a wrapping key version another cluster node made.
    FindWrapKey,
    /// A signing secret moved to a newer wrapping key: `C_UnwrapKey`, `C_WrapKey`.
    Rewrap,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Verify => "verify",
            Op::Sign => "sign",
            Op::Wrap => "wrap",
            Op::Random => "random",
            Op::CreateMasterKey => "create_master_key",
            Op::FindMasterKey => "find_master_key",
            Op::DestroyMasterKey => "destroy_master_key",
            Op::NewSigningSecret => "new_signing_secret",
            Op::VerifySignature => "verify_signature",
            Op::CreateWrapKey => "create_wrap_key",
            Op::DestroyWrapKey => "destroy_wrap_key",
            Op::FindWrapKey => "find_wrap_key",
            Op::Rewrap => "rewrap",
        }
    }

    /// The span of one call, queue wait included. Debug level: the log output leaves it out at
    /// the default filter, the OpenTelemetry layer takes it.
    pub fn span(self) -> tracing::Span {
        tracing::debug_span!("hsm", otel.name = format_args!("hsm {}", self.name()), hsm.operation = self.name())
    }
}

fn kind(e: &HsmError) -> &'static str {
    match e {
        HsmError::Unavailable(_) => "unavailable",
        HsmError::Failed(_) => "failed",
        HsmError::Refused(_) => "refused",
    }
}

/// Counts a failed operation in `keyward_hsm_errors_total`.
pub fn record_error<T>(op: Op, result: &Result<T, HsmError>) {
    if let Err(e) = result {
        metrics::get().hsm_error(op.name(), kind(e));
    }
}
