//! The operations on a pooled session: random bytes, HMAC-SHA256 digests (`C_Sign`), their
//! wrapping under a newer master key, and `C_Verify` of a digest or an audit MAC, where a
//! mismatch is an answer (`false`), not an error.

use cryptoki::{error::Error as CkError, mechanism::Mechanism, object::ObjectHandle, session::Session};

use super::{
    objects::{audit_handle, key_handle},
    pool::Connection,
};
use crate::{
    domain::{
        key::{DIGEST_LEN, Digest, MasterKeyVersion, WRAP_CONTEXT},
        ports::{AUDIT_MAC_LEN, HsmError},
        secret::{SECRET_LEN, Secret},
    },
    hsm::rv,
};

/// A new secret from `C_GenerateRandom`.
pub(super) fn random_secret(session: &Session) -> Result<Secret, CkError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    session.generate_random_slice(bytes.as_mut())?;
    Ok(Secret::from_bytes(*bytes))
}

/// HMAC-SHA256 of `data` under master key `version`.
pub(super) fn hmac(
    session: &Session,
    conn: &Connection,
    version: MasterKeyVersion,
    data: &[u8],
) -> Result<Vec<u8>, CkError> {
    session.sign(&Mechanism::Sha256Hmac, key_handle(conn, version)?, data)
}

/// What a wrapping HMAC signs: `WRAP_CONTEXT ‖ inner`.
pub(super) fn wrap_input(inner: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut input = zeroize::Zeroizing::new(Vec::with_capacity(WRAP_CONTEXT.len() + inner.len()));
    input.extend_from_slice(WRAP_CONTEXT);
    input.extend_from_slice(inner);
    input
}

/// `C_Verify` with `key`: `Ok(false)` when the MAC does not match.
fn verify_mac(session: &Session, key: ObjectHandle, message: &[u8], mac: &[u8]) -> Result<bool, CkError> {
    match session.verify(&Mechanism::Sha256Hmac, key, message, mac) {
        Ok(()) => Ok(true),
        Err(e) if rv::is_signature_mismatch(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `C_Verify` of `digest` over `input`; for a wrapped digest, its inner MACs are recomputed
/// first (held only in zeroized buffers).
pub(super) fn check_digest(
    session: &Session,
    conn: &Connection,
    input: &[u8],
    digest: &Digest,
) -> Result<bool, CkError> {
    let message = match digest.wrapped.split_first() {
        None => zeroize::Zeroizing::new(input.to_vec()),
        Some((&innermost, outer)) => {
            let mut mac = zeroize::Zeroizing::new(hmac(session, conn, innermost, input)?);
            for &version in outer {
                mac = zeroize::Zeroizing::new(hmac(session, conn, version, &wrap_input(&mac))?);
            }
            wrap_input(&mac)
        }
    };
    verify_mac(session, key_handle(conn, digest.version)?, &message, &digest.mac)
}

/// The audit chain MAC of `message`.
pub(super) fn seal(session: &Session, conn: &Connection, message: &[u8]) -> Result<Vec<u8>, CkError> {
    session.sign(&Mechanism::Sha256Hmac, audit_handle(conn)?, message)
}

/// Whether `mac` is the audit chain MAC of `message`.
pub(super) fn check_seal(
    session: &Session,
    conn: &Connection,
    message: &[u8],
    mac: &[u8; AUDIT_MAC_LEN],
) -> Result<bool, CkError> {
    verify_mac(session, audit_handle(conn)?, message, mac)
}

/// A MAC as the fixed-size array the domain keeps.
pub(super) fn to_mac(mac: Vec<u8>) -> Result<[u8; DIGEST_LEN], HsmError> {
    <[u8; DIGEST_LEN]>::try_from(mac.as_slice())
        .map_err(|_| HsmError::Failed(format!("HMAC of unexpected length {}", mac.len())))
}
