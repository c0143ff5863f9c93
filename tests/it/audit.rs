//! The audit trail through the real server: queries by key, newest first, across pages; the
//! chain check over a real SoftHSM2 token finds an edited, deleted or swapped event in the
//! database by its sequence number.

use keyward::proto::{self, audit_service_client::AuditServiceClient};
use tonic::Code;

use crate::common::Instance;

async fn chain(kw: &Instance) -> proto::VerifyChainResponse {
    let mut a = AuditServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", kw.addr())).unwrap().connect().await.unwrap(),
    );
    let mut request = tonic::Request::new(proto::VerifyChainRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {}", kw.root_key).parse().unwrap());
    a.verify_chain(request).await.expect("VerifyChain").into_inner()
}

/// Stops the server, lets `tamper` change the database's audit tree, starts it again.
async fn tampered(kw: &mut Instance, tamper: impl FnOnce(&sled::Tree)) -> proto::VerifyChainResponse {
    kw.stop().await;
    {
        let db = sled::open(kw.data_dir.join("db")).unwrap();
        tamper(&db.open_tree("audit").unwrap());
        db.flush().unwrap();
    }
    kw.start().await;
    chain(kw).await
}

fn seq(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

#[tokio::test]
async fn events_are_queried_by_key_and_any_tampering_is_found_by_sequence_number() {
    let mut kw = Instance::started().await;
    let (_, id) = kw.create_key("audited", &["orders:read"]).await;
    let mut admin = kw.root_keys().await;
    for reason in ["one", "two"] {
        admin.disable_key(proto::DisableKeyRequest { key_id: id.clone(), reason: reason.into() }).await.unwrap();
        admin.enable_key(proto::EnableKeyRequest { key_id: id.clone() }).await.unwrap();
    }
    kw.create_key("other", &[]).await;

    let mut a = AuditServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", kw.addr())).unwrap().connect().await.unwrap(),
    );
    let auth = format!("Bearer {}", kw.root_key);
    let query = |token: String| {
        let mut r = tonic::Request::new(proto::QueryEventsRequest {
            key_id: id.clone(),
            newest_first: true,
            page_size: 2,
            page_token: token,
            ..Default::default()
        });
        r.metadata_mut().insert("authorization", auth.parse().unwrap());
        r
    };
    let (mut events, mut token) = (Vec::new(), String::new());
    loop {
        let page = a.query_events(query(token)).await.expect("QueryEvents").into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.enabled", "key.disabled", "key.enabled", "key.disabled", "key.created"]);
    assert!(events.iter().all(|e| e.key_id == id && e.actor.starts_with("key:")));
    assert_eq!(events[1].reason, "two");

    let mut bad = tonic::Request::new(proto::QueryEventsRequest { actor: "someone".into(), ..Default::default() });
    bad.metadata_mut().insert("authorization", auth.parse().unwrap());
    let err = a.query_events(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("actor"), "{}", err.message());

    drop((a, admin)); // Open connections would hold each stop for its drain period.
    let ok = chain(&kw).await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!((ok.first_seq, ok.last_seq, ok.checked, ok.unsealed), (1, 7, 7, 0));

    // An edited byte in event 4.
    let report = tampered(&mut kw, |t| {
        let mut v = t.get(seq(4)).unwrap().unwrap().to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        t.insert(seq(4), v).unwrap();
    })
    .await;
    assert_eq!((report.ok, report.broken_seq), (false, 4), "{report:?}");

    // Repaired by hand is not possible without the HSM: put the original back instead, then
    // delete event 3.
    let mut original = None;
    let report = tampered(&mut kw, |t| {
        let mut v = t.get(seq(4)).unwrap().unwrap().to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        t.insert(seq(4), v).unwrap();
        original = t.remove(seq(3)).unwrap();
    })
    .await;
    assert_eq!((report.ok, report.broken_seq), (false, 3), "{report:?}");
    assert!(report.problem.contains("missing"), "{}", report.problem);

    // Events 2 and 5 swapped (3 put back).
    let report = tampered(&mut kw, |t| {
        t.insert(seq(3), original.take().unwrap()).unwrap();
        let (two, five) = (t.get(seq(2)).unwrap().unwrap(), t.get(seq(5)).unwrap().unwrap());
        t.insert(seq(2), five).unwrap();
        t.insert(seq(5), two).unwrap();
    })
    .await;
    assert_eq!((report.ok, report.broken_seq), (false, 2), "{report:?}");
}

#[tokio::test]
async fn the_audit_cli_verifies_exports_and_checkpoints_the_chain() {
    let mut kw = Instance::started().await;
    let (_, id) = kw.create_key("exported", &[]).await;
    kw.root_keys()
        .await
        .revoke_key(proto::RevokeKeyRequest { key_id: id.clone(), reason: "done".into() })
        .await
        .unwrap();
    let key_file = kw.data_dir.join("root.key");
    let cli = |kw: &Instance, args: &[&str]| {
        let addr = kw.addr().to_string();
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--target", &addr, "--key-file", key_file.to_str().unwrap()]);
        let out = kw.keyward(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, printed, err) = cli(&kw, &["verify"]);
    assert!(ok && printed.contains("chain ok: events 1..=3, 3 MACs checked"), "{printed}{err}");
    let (ok, exported, err) = cli(&kw, &["export"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(lines[2]["action"], "key.revoked");
    assert_eq!(lines[2]["key_id"], id.as_str());
    assert!(lines.iter().all(|l| l["mac"].as_str().unwrap().len() == 64), "every event carries its MAC");
    let (ok, queried, _) = cli(&kw, &["query", "--key-id", &id]);
    let actions: Vec<String> =
        queried.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].to_string()).collect();
    assert!(ok && actions == ["\"key.revoked\"", "\"key.created\""], "{queried}");
    let (ok, checkpoint, _) = cli(&kw, &["checkpoint"]);
    let checkpoint: serde_json::Value = serde_json::from_str(checkpoint.trim()).unwrap();
    assert!(ok && checkpoint["seq"] == 3 && checkpoint["mac"] == lines[2]["mac"], "{checkpoint}");

    let report = tampered(&mut kw, |t| {
        let mut v = t.get(seq(2)).unwrap().unwrap().to_vec();
        let at = v.len() / 3;
        v[at] ^= 0x20;
        t.insert(seq(2), v).unwrap();
    })
    .await;
    assert!(!report.ok);
    let (ok, _, err) = cli(&kw, &["verify"]);
    assert!(!ok && err.contains("chain broken at event 2"), "{err}");
}

/// The stream's next event, within 10 s.
async fn next(s: &mut tonic::Streaming<proto::AuditEvent>) -> proto::AuditEvent {
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), s.message()).await;
    message.expect("an event within 10 s").expect("the stream").expect("not ended")
}

#[tokio::test]
async fn a_tail_sends_history_from_a_sequence_number_then_new_events_as_they_commit() {
    let kw = Instance::started().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", kw.addr())).unwrap().connect().await.unwrap();
    let mut a = AuditServiceClient::new(channel);
    let tail = |from_seq| {
        let mut r = tonic::Request::new(proto::TailEventsRequest { from_seq });
        r.metadata_mut().insert("authorization", format!("Bearer {}", kw.root_key).parse().unwrap());
        r
    };
    let mut new_only = a.tail_events(tail(0)).await.expect("TailEvents").into_inner();
    let mut from_start = a.tail_events(tail(1)).await.expect("TailEvents").into_inner();
    let first = next(&mut from_start).await;
    assert_eq!((first.seq, first.action.as_str()), (1, "key.created"), "history first: the root key");
    let (_, id) = kw.create_key("tailed", &[]).await;
    let seen = next(&mut new_only).await;
    assert_eq!((seen.seq, seen.action.as_str(), seen.key_id.as_str()), (2, "key.created", id.as_str()));
    assert_eq!(next(&mut from_start).await.seq, 2);
    let mut nobody = tonic::Request::new(proto::TailEventsRequest { from_seq: 0 });
    nobody.metadata_mut().insert("authorization", "Bearer kw_nope".parse().unwrap());
    assert_eq!(a.tail_events(nobody).await.unwrap_err().code(), Code::Unauthenticated);
}
