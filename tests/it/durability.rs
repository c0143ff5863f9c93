//! What was acknowledged survives: a clean stop (SIGTERM) and a crash (SIGKILL).

use keyward::proto::{self, KeyState, VerifyCode};

use crate::common::Instance;

#[tokio::test]
async fn sigterm_drains_exits_zero_and_keeps_every_key_and_revocation() {
    let mut kw = Instance::started().await;
    let (kept, _) = kw.create_key("kept", &["a:b"]).await;
    let (gone, gone_id) = kw.create_key("gone", &[]).await;
    kw.root_keys().await.revoke_key(proto::RevokeKeyRequest { key_id: gone_id, reason: "test".into() }).await.unwrap();

    let status = kw.stop().await;
    assert!(status.success(), "exit status {status}; log:\n{}", kw.logs());
    kw.start().await;
    assert_eq!(kw.code(&kept, &["a:b"]).await, VerifyCode::Valid);
    assert_eq!(kw.code(&gone, &[]).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn sigkill_right_after_acknowledgements_loses_nothing() {
    let mut kw = Instance::started().await;
    for round in 0..3 {
        // Concurrent writers, so acknowledgements ride on shared (group) flushes.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let admin = kw.root_keys().await;
            tasks.push(tokio::spawn(async move {
                let mut admin = admin;
                let mut acked = Vec::new();
                for i in 0..10 {
                    let created = admin
                        .create_key(proto::CreateKeyRequest {
                            name: format!("r{round}-w{w}-{i}"),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let id = created.info.unwrap().key_id;
                    let revoke = i % 2 == 0;
                    if revoke {
                        admin
                            .revoke_key(proto::RevokeKeyRequest { key_id: id.clone(), reason: String::new() })
                            .await
                            .unwrap();
                    }
                    acked.push((created.key, id, revoke));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        kw.kill();
        kw.start().await;
        let mut admin = kw.root_keys().await;
        for (key, id, revoked) in &acked {
            let info = admin
                .get_key(proto::GetKeyRequest { key_id: id.clone() })
                .await
                .expect("acknowledged key survives")
                .into_inner();
            let expected = if *revoked { KeyState::Revoked } else { KeyState::Active };
            assert_eq!(info.state(), expected, "round {round}, key {id}");
            let code = if *revoked { VerifyCode::Revoked } else { VerifyCode::Valid };
            assert_eq!(kw.code(key, &[]).await, code);
        }
    }
}
