//! `keyward-bench` with no subcommand: the load suite. Each scenario runs at each concurrency
//! between two baselines on the same server, the no-op RPC (`grpc.health.v1.Health/Check`) and
//! raw HSM verifications through keyward's own adapter, so every figure comes with its ratios.

use std::{
    net::Ipv6Addr,
    sync::{Arc, Mutex},
    time::Instant,
};

use indicatif::ProgressBar;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use keyward::{
    domain::{key::MasterKeyVersion, key_format, secret::Secret},
    hsm::Pkcs11Hsm,
    proto::{
        self, VerifyCode, audit_service_client::AuditServiceClient, key_service_client::KeyServiceClient,
        verify_service_client::VerifyServiceClient,
    },
};

use crate::{
    drive::{Limit, Outcome, Run, drive},
    error::{BenchError, Result},
    raw_hsm::hsm_run,
    target::{Target, plain_key, policy_key},
};
use report::{Baseline, Row, Stats};

pub mod chart;
pub mod report;

/// The suite's scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// VerifyKey on valid keys without policies.
    Verify,
    /// VerifyKey on valid keys with every policy set.
    VerifyPolicies,
    /// VerifyKey on garbage and on well-formed keys with a wrong secret: every answer INVALID.
    VerifyInvalid,
    /// CreateKey (durable).
    Create,
    /// RotateKey.
    Rotate,
    /// RevokeKey, each followed by a VerifyKey of that key on another connection.
    Revoke,
    /// QueryEvents: one key's newest events.
    AuditQuery,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Self::Verify,
        Self::VerifyPolicies,
        Self::VerifyInvalid,
        Self::Create,
        Self::Rotate,
        Self::Revoke,
        Self::AuditQuery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::VerifyPolicies => "verify-policies",
            Self::VerifyInvalid => "verify-invalid",
            Self::Create => "create",
            Self::Rotate => "rotate",
            Self::Revoke => "revoke",
            Self::AuditQuery => "audit-query",
        }
    }
}

#[derive(Debug)]
pub struct SuiteOptions {
    pub scenarios: Vec<Scenario>,
    /// Keys made for the verify scenarios (calls are spread over them).
    pub keys: usize,
    pub concurrency: Vec<usize>,
    pub connections: usize,
    pub limit: Limit,
}

/// The master key version the raw HSM figures use.
const HSM_VERSION: MasterKeyVersion = MasterKeyVersion(1);

/// Keys made before the scenarios, in this many calls at once.
const SETUP_CONCURRENCY: usize = 16;

/// Keys made and not yet used: (key id, key).
type Pool = Arc<Mutex<Vec<(String, String)>>>;

fn request<T>(auth: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// What the calls of one scenario need, cheap to clone into each call.
#[derive(Clone)]
struct Caller {
    channel: Channel,
    /// Another connection than `channel` (when there are two).
    other: Channel,
    auth: MetadataValue<Ascii>,
}

impl Caller {
    fn verify_request(&self, key: &str, client_ip: String, scopes: &[&str]) -> tonic::Request<proto::VerifyKeyRequest> {
        let required_scopes = scopes.iter().map(|s| s.to_string()).collect();
        request(&self.auth, proto::VerifyKeyRequest { key: key.into(), client_ip, required_scopes, cost: None })
    }

    /// VerifyKey on `channel` (or `other`); `Ok(code)` when it answered.
    async fn verify(&self, key: &str, client_ip: String, scopes: &[&str], other: bool) -> Result<VerifyCode, String> {
        let channel = if other { &self.other } else { &self.channel };
        let answer =
            VerifyServiceClient::new(channel.clone()).verify_key(self.verify_request(key, client_ip, scopes)).await;
        match answer {
            Ok(r) => Ok(VerifyCode::try_from(r.get_ref().code).unwrap_or(VerifyCode::Unspecified)),
            Err(s) => Err(crate::drive::code_name(s.code())),
        }
    }

    async fn create(&self, template: proto::CreateKeyRequest, pool: &Pool) -> Outcome {
        match KeyServiceClient::new(self.channel.clone()).create_key(request(&self.auth, template)).await {
            Ok(r) => {
                let r = r.into_inner();
                let id = r.info.map(|i| i.key_id).unwrap_or_default();
                pool.lock().unwrap_or_else(|e| e.into_inner()).push((id, r.key));
                Outcome::ok()
            }
            Err(s) => Outcome::status(&s),
        }
    }
}

/// The suite's state: connections, and the keys made for it.
struct Suite<'a> {
    target: Target,
    hsm: Option<&'a Pkcs11Hsm>,
    o: &'a SuiteOptions,
    plain: Arc<Vec<(String, String)>>,
    policies: Arc<Vec<(String, String)>>,
    /// Well-formed keys of real ids with a wrong secret.
    wrong: Arc<Vec<String>>,
    pool: Pool,
}

impl Suite<'_> {
    fn caller(&self, worker: usize) -> Caller {
        let n = self.target.channels.len();
        Caller {
            channel: self.target.channels[worker % n].clone(),
            other: self.target.channels[(worker + 1) % n].clone(),
            auth: self.target.auth.clone(),
        }
    }

    /// Makes `n` keys like `template` (not timed as a scenario).
    async fn make_keys(&self, template: &proto::CreateKeyRequest, n: usize) -> Result<Vec<(String, String)>> {
        let made: Pool = Arc::default();
        let run = self.create_run(template, &made, SETUP_CONCURRENCY, Limit::Calls(n as u64)).await?;
        if let Some((code, _)) = run.errors.iter().next() {
            return Err(BenchError::SetupFailed(code.clone()));
        }
        Ok(std::mem::take(&mut *made.lock().unwrap_or_else(|e| e.into_inner())))
    }

    async fn create_run(
        &self,
        template: &proto::CreateKeyRequest,
        pool: &Pool,
        concurrency: usize,
        limit: Limit,
    ) -> Result<Run> {
        drive(concurrency, limit, |w| {
            let (caller, template, pool) = (self.caller(w), template.clone(), pool.clone());
            move |_| {
                let (caller, template, pool) = (caller.clone(), template.clone(), pool.clone());
                async move { Some(caller.create(template, &pool).await) }
            }
        })
        .await
    }

    /// Takes `n` keys from the pool, making what is missing.
    async fn take_keys(&self, n: usize) -> Result<Vec<(String, String)>> {
        let have = self.pool.lock().unwrap_or_else(|e| e.into_inner()).len();
        if have < n {
            let made = self.make_keys(&named("bench-pool"), n - have).await?;
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).extend(made);
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let at = pool.len() - n;
        Ok(pool.split_off(at))
    }

    /// Keys a revoke run may use: `--count`, or in a timed run what 2,000 revocations a second
    /// would take (it ends early when they run out).
    fn revoke_budget(&self) -> usize {
        match self.o.limit {
            Limit::Calls(n) => n as usize,
            Limit::For(d) => (d.as_secs_f64() * 2000.0).ceil().max(100.0) as usize,
        }
    }

    async fn noop(&self, concurrency: usize) -> Result<Run> {
        drive(concurrency, self.o.limit, |w| {
            let channel = self.caller(w).channel;
            move |_| {
                let mut client = HealthClient::new(channel.clone());
                async move {
                    let answer = client.check(HealthCheckRequest { service: String::new() }).await;
                    Some(answer.map_or_else(|s| Outcome::status(&s), |_| Outcome::ok()))
                }
            }
        })
        .await
    }

    async fn scenario(&self, s: Scenario, concurrency: usize) -> Result<Run> {
        let limit = self.o.limit;
        match s {
            Scenario::Verify | Scenario::VerifyPolicies => {
                let (keys, ip, scopes): (_, &str, &'static [&'static str]) = if s == Scenario::Verify {
                    (self.plain.clone(), "", &["bench:read"])
                } else {
                    (self.policies.clone(), "10.1.2.3", &["bench:read", "other:read"])
                };
                drive(concurrency, limit, |w| {
                    let (caller, keys) = (self.caller(w), keys.clone());
                    move |i| {
                        let (caller, keys) = (caller.clone(), keys.clone());
                        async move {
                            let key = &keys[i as usize % keys.len()].1;
                            Some(match caller.verify(key, ip.into(), scopes, false).await {
                                Ok(code) => Outcome::of(code == VerifyCode::Valid, code.short_name()),
                                Err(code) => Outcome::failed(code),
                            })
                        }
                    }
                })
                .await
            }
            Scenario::VerifyInvalid => {
                drive(concurrency, limit, |w| {
                    let (caller, wrong) = (self.caller(w), self.wrong.clone());
                    move |i| {
                        let (caller, wrong) = (caller.clone(), wrong.clone());
                        async move {
                            // Half garbage, half a real id with a wrong secret; each from its own
                            // address, so the brute-force defence (per source) stays out of it.
                            let key = if i % 2 == 0 {
                                format!("kw_not-a-key-{i}")
                            } else {
                                wrong[i as usize % wrong.len()].clone()
                            };
                            let ip = Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)).to_string();
                            Some(match caller.verify(&key, ip, &[], false).await {
                                Ok(VerifyCode::Invalid) => Outcome::ok(),
                                Ok(code) => {
                                    Outcome { flagged: code == VerifyCode::Valid, ..Outcome::failed(code.short_name()) }
                                }
                                Err(code) => Outcome::failed(code),
                            })
                        }
                    }
                })
                .await
            }
            Scenario::Create => self.create_run(&named("bench-create"), &self.pool, concurrency, limit).await,
            Scenario::Rotate => {
                let seeds = self.take_keys(concurrency).await?;
                drive(concurrency, limit, |w| {
                    let (caller, current) = (self.caller(w), Arc::new(Mutex::new(seeds[w].0.clone())));
                    move |_| {
                        let (caller, current) = (caller.clone(), current.clone());
                        async move {
                            let key_id = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            let rotate = proto::RotateKeyRequest { key_id, grace_period: None };
                            let mut client = KeyServiceClient::new(caller.channel.clone());
                            Some(match client.rotate_key(request(&caller.auth, rotate)).await {
                                Ok(r) => {
                                    // The next rotation is of the new key.
                                    if let Some(info) = r.into_inner().info {
                                        *current.lock().unwrap_or_else(|e| e.into_inner()) = info.key_id;
                                    }
                                    Outcome::ok()
                                }
                                Err(s) => Outcome::status(&s),
                            })
                        }
                    }
                })
                .await
            }
            Scenario::Revoke => {
                let keys = Arc::new(self.take_keys(self.revoke_budget()).await?);
                drive(concurrency, limit, |w| {
                    let (caller, keys) = (self.caller(w), keys.clone());
                    move |i| {
                        let (caller, keys) = (caller.clone(), keys.clone());
                        async move {
                            let (id, key) = keys.get(i as usize)?;
                            let revoke = proto::RevokeKeyRequest { key_id: id.clone(), reason: "bench".into() };
                            let t = Instant::now();
                            let revoked = KeyServiceClient::new(caller.channel.clone())
                                .revoke_key(request(&caller.auth, revoke))
                                .await;
                            let took = t.elapsed();
                            if let Err(s) = revoked {
                                return Some(Outcome::status(&s));
                            }
                            Some(match caller.verify(key, String::new(), &[], true).await {
                                Ok(code) => Outcome {
                                    flagged: code == VerifyCode::Valid,
                                    took: Some(took),
                                    ..Outcome::of(code != VerifyCode::Valid, "VALID_AFTER_REVOKE")
                                },
                                Err(code) => Outcome::failed(format!("VERIFY_{code}")),
                            })
                        }
                    }
                })
                .await
            }
            Scenario::AuditQuery => {
                drive(concurrency, limit, |w| {
                    let (caller, keys) = (self.caller(w), self.plain.clone());
                    move |i| {
                        let (caller, keys) = (caller.clone(), keys.clone());
                        async move {
                            let query = proto::QueryEventsRequest {
                                key_id: keys[i as usize % keys.len()].0.clone(),
                                newest_first: true,
                                page_size: 100,
                                ..Default::default()
                            };
                            let answer = AuditServiceClient::new(caller.channel.clone())
                                .query_events(request(&caller.auth, query))
                                .await;
                            Some(answer.map_or_else(|s| Outcome::status(&s), |_| Outcome::ok()))
                        }
                    }
                })
                .await
            }
        }
    }
}

fn named(name: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest { name: name.into(), ..plain_key() }
}

/// A well-formed key for `key`'s id with another secret: its checksum is right, so only the HSM
/// can tell it is wrong.
fn wrong_secret(key: &str, n: usize) -> Option<String> {
    let parsed = key_format::parse(key)?;
    let (prefix, _) = key.rsplit_once('_')?;
    let mut secret = [0x5a; 32];
    secret[..8].copy_from_slice(&(n as u64).to_be_bytes());
    Some(key_format::render(prefix, parsed.key_id, &Secret::from_bytes(secret)).expose().to_owned())
}

fn stats(run: &Run) -> Stats {
    Stats::new(&run.figures, run.errors.clone())
}

/// Runs the suite against `target`; `hsm`, when given, is the server's token opened here for the
/// raw HSM baseline. Steps advance `progress`.
pub async fn run(
    target: &str,
    admin_key: &str,
    hsm: Option<&Pkcs11Hsm>,
    o: &SuiteOptions,
    progress: &ProgressBar,
) -> Result<(Vec<Baseline>, Vec<Row>)> {
    let target = Target::connect(target, admin_key, o.connections).await?;
    let per_level = o.scenarios.len() + if hsm.is_some() { 4 } else { 2 };
    progress.set_length((per_level * o.concurrency.len()) as u64 + 1);
    progress.set_message("making keys");
    let mut suite = Suite {
        target,
        hsm,
        o,
        plain: Arc::default(),
        policies: Arc::default(),
        wrong: Arc::default(),
        pool: Arc::default(),
    };
    let keys = o.keys.max(1);
    suite.plain = Arc::new(suite.make_keys(&named("bench-verify"), keys).await?);
    if o.scenarios.contains(&Scenario::VerifyPolicies) {
        suite.policies = Arc::new(suite.make_keys(&policy_key(), keys).await?);
    }
    suite.wrong = Arc::new(suite.plain.iter().enumerate().filter_map(|(n, (_, k))| wrong_secret(k, n)).collect());
    progress.inc(1);

    let (mut baselines, mut rows) = (Vec::new(), Vec::new());
    for &c in &o.concurrency {
        let step = |what: &str| progress.set_message(format!("{what} x{c}"));
        // The no-op RPC and the raw HSM at this concurrency, with the server idle.
        let baseline = async || {
            step("no-op");
            let noop = stats(&suite.noop(c).await?);
            progress.inc(1);
            let hsm = match suite.hsm {
                Some(h) => {
                    step("HSM verify");
                    let run = hsm_run(h, HSM_VERSION, c, o.limit).await?;
                    progress.inc(1);
                    Some(stats(&run))
                }
                None => None,
            };
            Ok::<_, BenchError>((noop, hsm))
        };
        let (noop_before, hsm_before) = baseline().await?;
        for &s in &o.scenarios {
            step(s.name());
            let run = suite.scenario(s, c).await?;
            let mut checks = std::collections::BTreeMap::new();
            match s {
                Scenario::Revoke => drop(checks.insert("valid_after_revoke".to_string(), run.flagged)),
                Scenario::VerifyInvalid => drop(checks.insert("valid_answers".to_string(), run.flagged)),
                _ => {}
            }
            rows.push(Row {
                scenario: s.name().into(),
                concurrency: c,
                stats: stats(&run),
                pct_of_noop: None,
                pct_of_hsm: None,
                checks,
            });
            progress.inc(1);
        }
        let (noop_after, hsm_after) = baseline().await?;
        baselines.push(Baseline { concurrency: c, noop_before, noop_after, hsm_before, hsm_after });
    }
    progress.finish_and_clear();
    Ok((baselines, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward::domain::key::KeyId;

    #[test]
    fn a_wrong_secret_key_is_well_formed_for_the_same_id() {
        let id = KeyId::new_v7();
        let key = key_format::render("kw", id, &Secret::from_bytes([1; 32]));
        let wrong = wrong_secret(key.expose(), 3).unwrap();
        assert_ne!(wrong, key.expose());
        let parsed = key_format::parse(&wrong).expect("well-formed");
        assert_eq!(parsed.key_id, id);
        assert_ne!(parsed.secret.expose(), &[1; 32]);
        assert_eq!(wrong_secret("garbage", 0), None);
    }
}
