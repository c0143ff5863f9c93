//! The mapping from keyward's wire answer to the typed verdict.

use super::*;

fn answer(code: proto::VerifyCode) -> proto::VerifyKeyResponse {
    proto::VerifyKeyResponse { code: code as i32, ..Default::default() }
}

#[test]
fn a_valid_answer_becomes_the_verified_key_with_its_owner() {
    let response = proto::VerifyKeyResponse {
        valid: true,
        key_id: "0190c4f0-0000-7000-8000-000000000001".into(),
        name: "billing".into(),
        scopes: vec!["orders:*".into()],
        owner: "team-a".into(),
        metadata: [("plan".to_owned(), "pro".to_owned())].into(),
        remaining: Some(41),
        ..answer(proto::VerifyCode::Valid)
    };
    let key = Verification::try_from(response).unwrap().valid().unwrap();
    assert_eq!(key.id, "0190c4f0-0000-7000-8000-000000000001");
    assert_eq!(key.owner.as_deref(), Some("team-a"));
    assert_eq!(key.metadata["plan"], "pro");
    assert_eq!(key.remaining, Some(41));
    assert_eq!(key.scopes, ["orders:*"]);
}

#[test]
fn an_empty_owner_is_none() {
    let response = proto::VerifyKeyResponse { valid: true, key_id: "id".into(), ..answer(proto::VerifyCode::Valid) };
    assert_eq!(Verification::try_from(response).unwrap().valid().unwrap().owner, None);
}

#[test]
fn every_refusal_code_has_its_reason() {
    use proto::VerifyCode as C;
    for (code, reason) in [
        (C::Invalid, DenyReason::Invalid),
        (C::Revoked, DenyReason::Revoked),
        (C::Expired, DenyReason::Expired),
        (C::Disabled, DenyReason::Disabled),
        (C::NotYetValid, DenyReason::NotYetValid),
        (C::InsufficientScope, DenyReason::InsufficientScope),
        (C::IpNotAllowed, DenyReason::IpNotAllowed),
        (C::RateLimited, DenyReason::RateLimited),
        (C::QuotaExceeded, DenyReason::QuotaExceeded),
    ] {
        assert_eq!(
            Verification::try_from(answer(code)).unwrap(),
            Verification::Denied { reason, retry_after: None },
            "{code:?}"
        );
    }
}

#[test]
fn a_rate_limited_answer_carries_its_wait() {
    let response = proto::VerifyKeyResponse {
        retry_after: Some(prost_types::Duration { seconds: 2, nanos: 500_000_000 }),
        ..answer(proto::VerifyCode::RateLimited)
    };
    assert_eq!(
        Verification::try_from(response).unwrap(),
        Verification::Denied { reason: DenyReason::RateLimited, retry_after: Some(Duration::from_millis(2_500)) }
    );
}

#[test]
fn unknown_or_inconsistent_answers_are_errors_not_verdicts() {
    let unknown = proto::VerifyKeyResponse { code: 99, ..Default::default() };
    assert!(matches!(Verification::try_from(unknown), Err(Error::UnexpectedResponse(_))));
    assert!(matches!(
        Verification::try_from(answer(proto::VerifyCode::Unspecified)),
        Err(Error::UnexpectedResponse(_))
    ));
    // VALID must name its key, and agree with `valid`.
    assert!(matches!(Verification::try_from(answer(proto::VerifyCode::Valid)), Err(Error::UnexpectedResponse(_))));
}

#[test]
fn unusable_keys_are_told_apart_from_refused_requests() {
    assert!(DenyReason::Revoked.is_unusable_key());
    assert!(DenyReason::NotYetValid.is_unusable_key());
    assert!(!DenyReason::InsufficientScope.is_unusable_key());
    assert!(!DenyReason::RateLimited.is_unusable_key());
}
