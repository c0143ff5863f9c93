//! VerifySignature's proof: the `@signature-params` line read (`BAD_SIGNATURE_PARAMS`), the key
//! found by `keyid`, the signature checked in the HSM under the key's wrapped secret
//! (`INVALID`), then, for a genuine signature only, its freshness (`SIGNATURE_EXPIRED`) and its
//! nonce (`REPLAYED`). Everything after (state, validity, IP, scopes, rate limit, quota, usage
//! log, brute-force counting) is VerifyKey's, in `Verifier::check`.

use std::{str::FromStr, time::SystemTime};

use super::Verifier;
use crate::domain::{
    error::{Error, Result},
    key::{KeyId, KeyRecord},
    policy::VerifyCode,
    ports::{Hsm, Store},
    signing::{params, replay::Seen},
};

/// The longest signature base accepted, in bytes.
pub const MAX_SIGNATURE_BASE: usize = 64 * 1024;

/// A VerifySignature request, before validation.
#[derive(Debug, Default)]
pub struct SignedRequest<'a> {
    /// The RFC 9421 signature base, its last line the signature parameters.
    pub signature_base: &'a [u8],
    /// The HMAC-SHA256 the client sent.
    pub signature: &'a [u8],
    pub client_ip: &'a str,
    pub required_scopes: &'a [String],
    pub cost: Option<u32>,
}

/// What presenting a key or a signature proved.
pub(super) enum Proof {
    /// The key is genuine: the policies decide.
    Proven(KeyRecord),
    /// The key is genuine but the request is refused before the policies (a stale or replayed
    /// signature).
    Refused(KeyRecord, VerifyCode),
    /// Nothing proved: the code (`INVALID`, `BAD_SIGNATURE_PARAMS`) and the id of the existing
    /// key named, if any, for the usage log.
    Unproven(VerifyCode, Option<KeyId>),
}

impl<H: Hsm, S: Store> Verifier<H, S> {
    pub(super) async fn prove_signature(&self, req: &SignedRequest<'_>, now: SystemTime) -> Result<Proof> {
        if req.signature_base.len() > MAX_SIGNATURE_BASE {
            return Err(Error::invalid("signature_base", "is longer than 65536 bytes"));
        }
        let signing = &self.config.signing;
        let Ok(params) = params::parse(req.signature_base, signing) else {
            return Ok(Proof::Unproven(VerifyCode::BadSignatureParams, None));
        };
        let Ok(id) = KeyId::from_str(&params.key_id) else {
            return Ok(Proof::Unproven(VerifyCode::Invalid, None));
        };
        let Some(record) = self.deps.store.get_key(id)? else {
            self.prover.unknown_signer(req.signature_base).await?;
            return Ok(Proof::Unproven(VerifyCode::Invalid, None));
        };
        // A bearer key, or a secret under a retired wrapping key (a revoked key's): answered as
        // an unknown key is, after the same decoy operation.
        let Some(wrapped) = record.signing.as_ref().filter(|w| self.prover.can_unwrap(w)) else {
            self.prover.unknown_signer(req.signature_base).await?;
            return Ok(Proof::Unproven(VerifyCode::Invalid, Some(id)));
        };
        let genuine =
            self.deps.hsm.verify_signature(wrapped, req.signature_base.to_vec(), req.signature.to_vec()).await?;
        if !genuine {
            return Ok(Proof::Unproven(VerifyCode::Invalid, Some(id)));
        }
        if params.is_expired(now, signing.max_skew) {
            return Ok(Proof::Refused(record, VerifyCode::SignatureExpired));
        }
        if let Some(nonce) = &params.nonce {
            match self.replays.check(id, nonce, params.replay_horizon(now, signing.max_skew), now) {
                Seen::New => {}
                Seen::Replayed => return Ok(Proof::Refused(record, VerifyCode::Replayed)),
                Seen::Full => {
                    return Err(Error::Unavailable(
                        "the replay cache is full of live nonces; raise signing.replay_cache_capacity".into(),
                    ));
                }
            }
        }
        Ok(Proof::Proven(record))
    }
}
