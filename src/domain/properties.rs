//! Property tests (proptest) over generated input: the key format round-trips, is canonical and
//! catches a changed character; the verification policy never answers `Valid` for a key that
//! fails any of its checks, and asking for fewer scopes never hurts.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use proptest::prelude::*;

use super::{
    key::{Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion},
    key_format,
    policy::{self, RotationRules, VerifyCode},
    scope,
    secret::Secret,
};

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

proptest! {
    #[test]
    fn a_rendered_key_parses_back_to_its_id_and_secret(
        prefix in "[a-z][a-z0-9]{0,15}",
        id in any::<[u8; 16]>(),
        secret in any::<[u8; 32]>(),
    ) {
        let key = key_format::render(&prefix, KeyId::from_bytes(id), &Secret::from_bytes(secret));
        let parsed = key_format::parse(key.expose()).expect("a rendered key parses");
        prop_assert_eq!(parsed.key_id, KeyId::from_bytes(id));
        prop_assert_eq!(parsed.secret.expose(), &secret);
    }

    #[test]
    fn a_changed_character_never_passes_for_the_original_key(
        id in any::<[u8; 16]>(),
        secret in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        to in 0..BASE62.len(),
    ) {
        let key = key_format::render("kw", KeyId::from_bytes(id), &Secret::from_bytes(secret));
        let mut bytes = key.expose().as_bytes().to_vec();
        let at = 3 + at.index(bytes.len() - 3); // a body character, after "kw_"
        prop_assume!(bytes[at] != BASE62[to]);
        bytes[at] = BASE62[to];
        let changed = String::from_utf8(bytes).unwrap();
        if let Some(parsed) = key_format::parse(&changed) {
            prop_assert!(parsed.key_id != KeyId::from_bytes(id) || parsed.secret.expose() != &secret);
        }
    }

    #[test]
    fn parsing_any_text_never_panics_and_whatever_parses_is_canonical(
        text in prop_oneof![
            (any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(id, secret)| {
                key_format::render("kw", KeyId::from_bytes(id), &Secret::from_bytes(secret)).expose().to_owned()
            }),
            "[a-z][a-z0-9]{0,3}_[0-9A-Za-z]{68,72}",
            "\\PC{0,90}",
        ],
    ) {
        if let Some(parsed) = key_format::parse(&text) {
            let prefix = text.rsplit_once('_').unwrap().0;
            let rendered = key_format::render(prefix, parsed.key_id, &parsed.secret);
            prop_assert_eq!(rendered.expose(), text.as_str());
        }
    }
}

const SCOPES: [&str; 6] = ["orders:read", "orders:write", "orders:*", "billing:read", "*", "keyward:verify"];
const NETS: [&str; 3] = ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"];
const IPS: [&str; 4] = ["10.1.2.3", "192.168.1.7", "172.16.0.1", "2001:db8::1"];
const RULES: RotationRules = RotationRules { warning: Duration::from_secs(100), grace: Duration::from_secs(50) };

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

prop_compose! {
    fn records()(
        state in prop::sample::select(vec![KeyState::Active, KeyState::Disabled, KeyState::Revoked, KeyState::Rotated]),
        scopes in prop::sample::subsequence(SCOPES.to_vec(), 0..=SCOPES.len()),
        nets in prop::sample::subsequence(NETS.to_vec(), 0..=NETS.len()),
        not_before in prop::option::of(0u64..1000),
        expires_at in prop::option::of(0u64..1000),
        deadline in prop::option::of(0u64..1000),
        max_age in prop::option::of(1u64..1000),
    ) -> KeyRecord {
        let digest = Digest::plain(MasterKeyVersion(1), [0; 32]);
        let scopes = scopes.into_iter().map(String::from).collect();
        let mut r = KeyRecord::new(KeyId::from_bytes([7; 16]), "k".into(), "kw".into(), scopes, at(0), digest);
        r.state = state;
        r.allowed_cidrs = nets.iter().map(|n| n.parse().unwrap()).collect();
        r.not_before = not_before.map(at);
        r.expires_at = expires_at.map(at);
        r.max_age = max_age.map(Duration::from_secs);
        if state == KeyState::Rotated {
            r.rotation_deadline = deadline.map(at);
        }
        r
    }
}

proptest! {
    #[test]
    fn valid_means_every_check_passed(
        r in records(),
        now in 0u64..1200,
        ip in prop::option::of(prop::sample::select(IPS.to_vec())),
        required in prop::sample::subsequence(SCOPES.to_vec(), 0..=3),
    ) {
        let now = at(now);
        let ip: Option<IpAddr> = ip.map(|s| s.parse().unwrap());
        let required: Vec<String> = required.into_iter().map(String::from).collect();
        let code = policy::evaluate(&r, now, ip, &required, &RULES);
        match r.state {
            KeyState::Revoked => prop_assert_eq!(code, VerifyCode::Revoked),
            KeyState::Disabled => prop_assert_eq!(code, VerifyCode::Disabled),
            _ => {}
        }
        if code == VerifyCode::Valid {
            prop_assert!(matches!(r.state, KeyState::Active | KeyState::Rotated));
            prop_assert!(r.not_before.is_none_or(|t| now >= t));
            prop_assert!(r.expires_at.is_none_or(|t| now < t));
            prop_assert!(RULES.deadline(&r).is_none_or(|t| now < t));
            prop_assert!(policy::ip_allowed(&r.allowed_cidrs, ip));
            prop_assert!(required.iter().all(|s| scope::any_grants(&r.scopes, s)));
            // Fewer requirements never turn a pass into a refusal.
            for n in 0..required.len() {
                prop_assert_eq!(policy::evaluate(&r, now, ip, &required[..n], &RULES), VerifyCode::Valid);
            }
        }
    }
}
