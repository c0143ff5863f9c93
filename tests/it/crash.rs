//! Crash cycles: start the server, run concurrent writers (create, update, rotate, revoke), SIGKILL
//! it at a random moment, restart, and check that every acknowledged mutation is there with its
//! audit event and the chain verifies. 0 lost is the only pass.
//!
//! Each cycle checks the keys it touched; the last cycle checks every key again, and every cycle
//! verifies the whole chain. `KEYWARD_CRASH_CYCLES` sets the number of cycles (default 5).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use keyward::proto::{self, KeyState};

use crate::common::{Instance, KeyClient};

/// A small PRNG (xorshift64*), seeded per cycle and writer; the seed is printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a writer was told happened to one key, and what may have happened without a reply.
#[derive(Clone, Debug, Default)]
struct Expected {
    /// The key string, for VerifyKey after the restart.
    key: String,
    /// Names acknowledged in order; the last is what the key must carry, unless `maybe_name`.
    name: String,
    maybe_name: Option<String>,
    revoked: bool,
    maybe_revoked: bool,
    /// The successor's id, once RotateKey was acknowledged.
    rotated_to: Option<String>,
    maybe_rotated: bool,
    /// Acknowledged mutations, each of which must have its audit event.
    acked_events: Vec<&'static str>,
    /// The last cycle that changed (or tried to change) the key: each cycle checks those keys,
    /// the last cycle every key.
    touched: usize,
}

type Ledger = Arc<Mutex<HashMap<String, Expected>>>;

/// Creates keys and mutates them until the connection breaks; records every acknowledgement.
async fn writer(mut admin: KeyClient, ledger: Ledger, mut rng: Rng, tag: String, cycle: usize) {
    let mut mine: Vec<String> = Vec::new();
    for i in 0.. {
        let live: Vec<String> = {
            let l = ledger.lock().unwrap();
            mine.iter().filter(|id| !l[*id].revoked && l[*id].rotated_to.is_none()).cloned().collect()
        };
        let op = if live.is_empty() { 0 } else { rng.below(4) };
        if op == 0 {
            let name = format!("{tag}-{i}");
            let Ok(created) =
                admin.create_key(proto::CreateKeyRequest { name: name.clone(), ..Default::default() }).await
            else {
                return; // An unacknowledged create leaves nothing to check.
            };
            let created = created.into_inner();
            let id = created.info.unwrap().key_id;
            let expected = Expected {
                key: created.key,
                name,
                acked_events: vec!["key.created"],
                touched: cycle,
                ..Default::default()
            };
            ledger.lock().unwrap().insert(id.clone(), expected);
            mine.push(id);
            continue;
        }
        let id = live[rng.below(live.len() as u64) as usize].clone();
        ledger.lock().unwrap().get_mut(&id).unwrap().touched = cycle;
        match op {
            1 => {
                let name = format!("{tag}-{i}-renamed");
                ledger.lock().unwrap().get_mut(&id).unwrap().maybe_name = Some(name.clone());
                let request = proto::UpdateKeyRequest {
                    key_id: id.clone(),
                    name: name.clone(),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                    ..Default::default()
                };
                if admin.update_key(request).await.is_err() {
                    return;
                }
                let mut l = ledger.lock().unwrap();
                let e = l.get_mut(&id).unwrap();
                (e.name, e.maybe_name) = (name, None);
                e.acked_events.push("key.updated");
            }
            2 => {
                ledger.lock().unwrap().get_mut(&id).unwrap().maybe_rotated = true;
                let request = proto::RotateKeyRequest { key_id: id.clone(), grace_period: None };
                let Ok(rotated) = admin.rotate_key(request).await else { return };
                let rotated = rotated.into_inner();
                let successor = rotated.info.unwrap().key_id;
                let mut l = ledger.lock().unwrap();
                let e = l.get_mut(&id).unwrap();
                (e.rotated_to, e.maybe_rotated) = (Some(successor.clone()), false);
                e.acked_events.push("key.rotated");
                let name = e.name.clone();
                l.insert(
                    successor.clone(),
                    Expected {
                        key: rotated.key,
                        name,
                        acked_events: vec!["key.created"],
                        touched: cycle,
                        ..Default::default()
                    },
                );
                mine.push(successor);
            }
            _ => {
                ledger.lock().unwrap().get_mut(&id).unwrap().maybe_revoked = true;
                let request = proto::RevokeKeyRequest { key_id: id.clone(), reason: "crash test".into() };
                if admin.revoke_key(request).await.is_err() {
                    return;
                }
                let mut l = ledger.lock().unwrap();
                let e = l.get_mut(&id).unwrap();
                (e.revoked, e.maybe_revoked) = (true, false);
                e.acked_events.push("key.revoked");
            }
        }
    }
}

/// Checks every acknowledged mutation against the restarted server.
async fn check(kw: &Instance, ledger: &HashMap<String, Expected>, cycle: usize, all: bool, seed: u64) {
    let mut admin = kw.root_keys().await;
    let mut audit = kw.audit(Some(&kw.root_key)).await;
    let mut verifier = kw.root_verifier().await;
    let context = |id: &str| format!("cycle {cycle} (seed {seed:#x}), key {id}");
    for (id, e) in ledger.iter().filter(|(_, e)| all || e.touched == cycle) {
        let info = admin
            .get_key(proto::GetKeyRequest { key_id: id.clone() })
            .await
            .unwrap_or_else(|s| panic!("{}: acknowledged key lost: {s:?}", context(id)))
            .into_inner();
        let named = info.name == e.name || e.maybe_name.as_ref() == Some(&info.name);
        assert!(named, "{}: name {:?}, acknowledged {:?}", context(id), info.name, e.name);
        let state = info.state();
        if e.revoked {
            assert_eq!(state, KeyState::Revoked, "{}: an acknowledged revocation", context(id));
        } else if let Some(to) = &e.rotated_to {
            assert_eq!(state, KeyState::Rotated, "{}", context(id));
            assert_eq!(&info.rotated_to, to, "{}", context(id));
        } else {
            let allowed = [
                Some(KeyState::Active),
                e.maybe_revoked.then_some(KeyState::Revoked),
                e.maybe_rotated.then_some(KeyState::Rotated),
            ];
            assert!(allowed.contains(&Some(state)), "{}: state {state:?}, expected active", context(id));
        }
        let verified = verifier
            .verify_key(proto::VerifyKeyRequest { key: e.key.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        if e.revoked {
            assert_eq!(verified.code(), proto::VerifyCode::Revoked, "{}: revoked means revoked", context(id));
        }
        let events = audit
            .query_events(proto::QueryEventsRequest { key_id: id.clone(), page_size: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        for acked in &e.acked_events {
            assert!(actions.contains(acked), "{}: {acked} acknowledged, audit has {actions:?}", context(id));
        }
    }
    let chain = audit.verify_chain(proto::VerifyChainRequest::default()).await.unwrap().into_inner();
    assert!(chain.ok, "cycle {cycle} (seed {seed:#x}): {chain:?}");
}

#[tokio::test]
async fn sigkill_at_random_moments_under_writers_loses_no_acknowledged_mutation() {
    let cycles: usize = std::env::var("KEYWARD_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let base = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut kw = Instance::started().await;
    let ledger: Ledger = Arc::default();
    let mut acknowledged = 0;
    for cycle in 0..cycles {
        let seed = base.wrapping_add((cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let mut rng = Rng(seed);
        let mut writers = Vec::new();
        for w in 0..4 {
            let admin = kw.root_keys().await;
            let rng = Rng(rng.next() | 1);
            writers.push(tokio::spawn(writer(admin, ledger.clone(), rng, format!("c{cycle}w{w}"), cycle)));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(450))).await;
        kw.kill();
        for w in writers {
            w.await.unwrap();
        }
        kw.start().await;
        let snapshot = ledger.lock().unwrap().clone();
        check(&kw, &snapshot, cycle, cycle + 1 == cycles, seed).await;
        // Settle what was in flight: the next cycle starts from what the server holds now.
        let mut admin = kw.root_keys().await;
        let mut now = HashMap::new();
        for id in snapshot.iter().filter(|(_, e)| e.touched == cycle).map(|(id, _)| id) {
            now.insert(
                id.clone(),
                admin.get_key(proto::GetKeyRequest { key_id: id.clone() }).await.unwrap().into_inner(),
            );
        }
        let mut l = ledger.lock().unwrap();
        for (id, e) in l.iter_mut() {
            let Some(info) = now.get(id) else { continue };
            e.name = info.name.clone();
            e.maybe_name = None;
            e.revoked = info.state() == KeyState::Revoked;
            e.maybe_revoked = false;
            if info.state() == KeyState::Rotated {
                e.rotated_to = Some(info.rotated_to.clone());
            }
            e.maybe_rotated = false;
        }
        acknowledged = l.values().map(|e| e.acked_events.len()).sum();
    }
    eprintln!("{cycles} kill cycles, {acknowledged} acknowledged mutations, 0 lost");
}
