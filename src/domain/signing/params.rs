//! The `@signature-params` line of an RFC 9421 signature base: an RFC 8941 inner list (the
//! covered components) with the parameters keyward reads, `keyid`, `alg`, `created`, `expires`
//! and `nonce`, checked against the `[signing]` rules.

use std::time::{Duration, SystemTime};

use sfv::{BareItem, ListEntry, Parser};

use super::SigningConfig;

/// The only algorithm keyward verifies.
pub const ALGORITHM: &str = "hmac-sha256";

/// The longest nonce accepted, in bytes: it bounds the replay cache's entries.
pub const MAX_NONCE_LEN: usize = 128;

const PARAMS_PREFIX: &str = "\"@signature-params\": ";

/// What keyward reads from the signature parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureParams {
    /// The `keyid` parameter, as sent (the key id, if it is one).
    pub key_id: String,
    pub created: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub nonce: Option<String>,
}

/// Why the parameters are refused (`BAD_SIGNATURE_PARAMS`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParams(pub &'static str);

/// Reads the parameters from the last line of `base`, and checks what the rules require.
pub fn parse(base: &[u8], config: &SigningConfig) -> Result<SignatureParams, BadParams> {
    let last = base.rsplit(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(last).map_err(|_| BadParams("the signature parameters are not ASCII"))?;
    let value = line
        .strip_prefix(PARAMS_PREFIX)
        .ok_or(BadParams("the signature base does not end with its \"@signature-params\" line"))?;
    let list: sfv::List = Parser::new(value).parse().map_err(|_| BadParams("the signature parameters do not parse"))?;
    let [ListEntry::InnerList(inner)] = list.as_slice() else {
        return Err(BadParams("the signature parameters are not one inner list"));
    };
    let (mut key_id, mut created, mut expires, mut nonce) = (None, None, None, None);
    for (name, value) in &inner.params {
        match name.as_str() {
            "keyid" => key_id = Some(string(value).ok_or(BadParams("keyid is not a string"))?),
            "alg" if string(value).as_deref() != Some(ALGORITHM) => return Err(BadParams("alg is not hmac-sha256")),
            "alg" => {}
            "created" => created = Some(time(value).ok_or(BadParams("created is not a time"))?),
            "expires" => expires = Some(time(value).ok_or(BadParams("expires is not a time"))?),
            "nonce" => {
                let n = string(value).filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_LEN);
                nonce = Some(n.ok_or(BadParams("nonce is not a string of 1 to 128 characters"))?);
            }
            // Other parameters (`tag`, ...) are signed over but mean nothing to keyward.
            _ => {}
        }
    }
    let key_id = key_id.ok_or(BadParams("keyid is missing"))?;
    if config.require_created && created.is_none() {
        return Err(BadParams("created is missing"));
    }
    if config.require_nonce && nonce.is_none() {
        return Err(BadParams("nonce is missing"));
    }
    Ok(SignatureParams { key_id, created, expires, nonce })
}

fn string(value: &BareItem) -> Option<String> {
    value.as_string().map(|s| s.as_str().to_owned())
}

fn time(value: &BareItem) -> Option<SystemTime> {
    let seconds = u64::try_from(i64::from(value.as_integer()?)).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

impl SignatureParams {
    /// Whether the signature is stale at `now`: `created` further than `max_skew` from now (in
    /// either direction), or `expires` passed.
    pub fn is_expired(&self, now: SystemTime, max_skew: Duration) -> bool {
        let skewed = self.created.is_some_and(|created| {
            let distance = now.duration_since(created).unwrap_or_else(|e| e.duration());
            distance > max_skew
        });
        skewed || self.expires.is_some_and(|expires| now >= expires)
    }

    /// Until when the nonce must be remembered: as long as the signature could still be
    /// accepted (`created + max_skew`, or `now + max_skew` without `created`), and no longer
    /// than `expires`.
    pub fn replay_horizon(&self, now: SystemTime, max_skew: Duration) -> SystemTime {
        let until = self.created.unwrap_or(now) + max_skew;
        self.expires.map_or(until, |expires| until.min(expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SigningConfig {
        SigningConfig::default()
    }

    fn base(params: &str) -> Vec<u8> {
        format!("\"@method\": POST\n\"@authority\": example.com\n\"@signature-params\": {params}").into_bytes()
    }

    #[test]
    fn the_parameters_keyward_reads_are_parsed() {
        let p = parse(
            &base(r#"("@method" "@authority");created=1700000000;expires=1700000300;keyid="k1";alg="hmac-sha256";nonce="n-1";tag="x""#),
            &config(),
        )
        .unwrap();
        assert_eq!(p.key_id, "k1");
        assert_eq!(p.created, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert_eq!(p.expires, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_300)));
        assert_eq!(p.nonce.as_deref(), Some("n-1"));
    }

    #[test]
    fn bad_or_missing_parameters_are_named() {
        let cases = [
            (r#"("@method");created=1;nonce="n""#, "keyid is missing"),
            (r#"("@method");keyid="k";nonce="n""#, "created is missing"),
            (r#"("@method");keyid="k";created=1"#, "nonce is missing"),
            (r#"("@method");keyid="k";created=1;nonce="n";alg="rsa-pss-sha512""#, "alg is not hmac-sha256"),
            (r#"("@method");keyid=k;created=1;nonce="n""#, "keyid is not a string"),
            (r#"("@method");keyid="k";created="1";nonce="n""#, "created is not a time"),
            (r#"("@method");keyid="k";created=-5;nonce="n""#, "created is not a time"),
            (r#"("@method");keyid="k";created=1;nonce="""#, "nonce is not a string of 1 to 128 characters"),
            (r#""@method";keyid="k""#, "the signature parameters are not one inner list"),
            (r#"("@method";keyid="k""#, "the signature parameters do not parse"),
        ];
        for (params, why) in cases {
            assert_eq!(parse(&base(params), &config()), Err(BadParams(why)), "{params}");
        }
        let long = format!(r#"("@method");keyid="k";created=1;nonce="{}""#, "n".repeat(MAX_NONCE_LEN + 1));
        assert!(parse(&base(&long), &config()).is_err());
        assert_eq!(
            parse(b"\"@method\": GET", &config()),
            Err(BadParams("the signature base does not end with its \"@signature-params\" line"))
        );
    }

    #[test]
    fn created_and_nonce_may_be_made_optional() {
        let relaxed = SigningConfig { require_created: false, require_nonce: false, ..config() };
        let p = parse(&base(r#"("@method");keyid="k""#), &relaxed).unwrap();
        assert_eq!((p.created, p.nonce), (None, None));
    }

    #[test]
    fn a_signature_is_expired_outside_the_skew_or_past_expires() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let skew = Duration::from_secs(300);
        let p = |created, expires| SignatureParams { key_id: "k".into(), created, expires, nonce: None };
        assert!(!p(Some(t(1000)), None).is_expired(t(1300), skew));
        assert!(p(Some(t(1000)), None).is_expired(t(1301), skew), "too old");
        assert!(p(Some(t(1000)), None).is_expired(t(699), skew), "from too far in the future");
        assert!(!p(Some(t(1000)), None).is_expired(t(700), skew));
        assert!(p(Some(t(1000)), Some(t(1100))).is_expired(t(1100), skew), "past expires");
        assert_eq!(p(Some(t(1000)), None).replay_horizon(t(1010), skew), t(1300));
        assert_eq!(p(Some(t(1000)), Some(t(1100))).replay_horizon(t(1010), skew), t(1100));
        assert_eq!(p(None, None).replay_horizon(t(1010), skew), t(1310));
    }
}
