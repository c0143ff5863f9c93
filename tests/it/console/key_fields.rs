//! The create and update forms' fields in a real browser: a quota set in the console is spent by
//! VerifyKey; a signing key's secret is shown once, works with VerifySignature, and is not on
//! the page again; an invalid field is named and marked, never a 500; the update form saves
//! only the fields changed (a change made over gRPC meanwhile stays); sign-in and sign-out are
//! audit events of the signed-in key.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use keyward::proto;

use super::{
    WIDE, base, console_instance, csrf_of, root_id, session_cookie, sign_in, submit_confirmed, verify_from,
    webdriver::{Browser, request},
};

async fn create_form(browser: &Browser, kw: &crate::common::Instance, name: &str) {
    browser.goto(&format!("{}/keys/new", base(kw))).await;
    browser.find("#name").await.type_text(name).await;
}

async fn shown_once(browser: &Browser) -> (String, String) {
    browser.wait_for_text("Copy this now").await;
    let shown = browser.find("#new-key").await.property("value").await.as_str().unwrap().to_owned();
    let id = browser.find("#new-key-link").await.text().await;
    (shown, id)
}

#[tokio::test]
async fn console_create_fields_reach_the_key_and_updates_change_only_what_changed() {
    let kw = console_instance().await;
    let root_id = root_id(&kw).await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &kw, &kw.root_key).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;

    // Sign-in is an audit event of the signed-in key, from the browser's address.
    browser.goto(&format!("{}/audit?action=console.sign_in", base(&kw))).await;
    let rows = browser.find_all("table.events tbody tr").await;
    assert_eq!(rows.len(), 1, "one sign-in: {}", browser.text().await);
    let row = rows[0].text().await;
    assert!(row.contains("console.sign_in") && row.contains(&root_id) && row.contains("127.0.0.1"), "{row}");

    // A quota of 2: two verifications, then QUOTA_EXCEEDED.
    create_form(&browser, &kw, "quota-two").await;
    browser.find("#remaining").await.type_text("2").await;
    submit_confirmed(&browser, "form[action='/keys']", "Create this key?").await;
    let (key, key_id) = shown_once(&browser).await;
    assert!(key.starts_with("kw_"));
    assert_eq!(verify_from(&kw, &key, "").await, proto::VerifyCode::Valid);
    assert_eq!(verify_from(&kw, &key, "").await, proto::VerifyCode::Valid);
    assert_eq!(verify_from(&kw, &key, "").await, proto::VerifyCode::QuotaExceeded, "the third is over the quota");

    // An invalid field is named and marked; what was typed stays; nothing is created.
    create_form(&browser, &kw, "half-a-rate-limit").await;
    browser.find("#rate_limit").await.type_text("10").await;
    submit_confirmed(&browser, "form[action='/keys']", "Create this key?").await;
    let page = browser.wait_for_text("invalid rate_limit.window").await;
    assert!(page.contains("give the window"), "{page}");
    assert_eq!(browser.find("#rate_window").await.property("ariaInvalid").await, "true");
    assert_eq!(browser.find("#name").await.property("value").await, "half-a-rate-limit");
    browser.find("#rate_window").await.type_text("1m").await;
    browser.execute("document.getElementById('expires_at').value = '2020-01-01T00:00'").await;
    submit_confirmed(&browser, "form[action='/keys']", "Create this key?").await;
    let page = browser.wait_for_text("invalid expires_at").await;
    assert!(page.contains("must be in the future"), "the domain's own check: {page}");
    // As a status: 400, for a field the form reads and for one the domain checks.
    for bad in ["remaining=-1", "refill_amount=5", "allowed_cidrs=10.0.0.1/8", "kind=hmac", "not_before=soon"] {
        let form = format!("csrf={}&name=bad-form&{bad}", csrf_of(&browser).await);
        let (status, _, body) = request(
            kw.console_addr(),
            "POST",
            "/keys",
            &[
                ("cookie", &session_cookie(&browser).await),
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &base(&kw)),
            ],
            Some(form),
        )
        .await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{bad}: {body}");
        let field = bad.split('=').next().unwrap().replace("refill_amount", "refill.interval");
        assert!(body.contains(&format!("invalid {field}")), "{bad}: the field is named: {body}");
    }
    let listed = kw
        .root_keys()
        .await
        .list_keys(proto::ListKeysRequest { name_contains: "half-a-rate".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.is_empty(), "no key was made from an invalid form");

    // A signing key: its secret, shown once, signs requests that verify.
    create_form(&browser, &kw, "signer").await;
    browser.find("#kind-signing").await.click().await;
    submit_confirmed(&browser, "form[action='/keys']", "Create this key?").await;
    let page = browser.wait_for_text("signing secret").await;
    assert!(page.contains("will not be shown again"), "{page}");
    let (secret, signer_id) = shown_once(&browser).await;
    assert!(!secret.starts_with("kw_"), "a signing key hands out no bearer key");
    let secret = STANDARD.decode(&secret).expect("the signing secret in base64");
    assert_eq!(secret.len(), 32);
    let signed = crate::signing::sign(&signer_id, &secret, crate::signing::now(), "console-nonce-1");
    let verified =
        kw.root_verifier().await.verify_signature(signed.request(&[], "")).await.expect("VerifySignature").into_inner();
    assert_eq!(verified.code(), proto::VerifyCode::Valid);
    // Not shown again: not on the key's page, nor on its creation page reloaded.
    let secret_text = STANDARD.encode(&secret);
    browser.refresh().await;
    browser.wait_for_url(|_| true).await;
    let again = browser.text().await;
    assert!(again.contains("already sent") && again.contains(&signer_id), "the reload names the key it made: {again}");
    assert!(!browser.text().await.contains(&secret_text), "reloading does not show the secret again");
    let shown_again = browser.execute("var e = document.getElementById('new-key'); return e ? e.value : ''").await;
    assert_ne!(shown_again.as_str().unwrap(), secret_text);
    let signers = kw
        .root_keys()
        .await
        .list_keys(proto::ListKeysRequest { name_contains: "signer".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(signers.len(), 1, "reloading made no second key");
    browser.goto(&format!("{}/keys/{signer_id}", base(&kw))).await;
    let page = browser.text().await;
    assert!(page.contains("signing") && !page.contains(&secret_text), "{page}");

    // Update: load the quota key's form; meanwhile its name changes over gRPC; save a new quota
    // and refill. The form's stale name is not written back.
    browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    let mut root = kw.root_keys().await;
    root.update_key(proto::UpdateKeyRequest {
        key_id: key_id.clone(),
        name: "renamed-over-grpc".into(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        ..Default::default()
    })
    .await
    .expect("UpdateKey");
    browser.execute("document.getElementById('u-remaining').value = ''").await;
    browser.find("#u-remaining").await.type_text("5").await;
    browser.find("#u-refill").await.type_text("5").await;
    browser.find("#u-refill-every").await.type_text("1d").await;
    submit_confirmed(&browser, "form.update", "Save these changes").await;
    let page = browser.wait_for_text("renamed-over-grpc").await;
    assert!(page.contains("5 left"), "{page}");
    let info = root.get_key(proto::GetKeyRequest { key_id: key_id.clone() }).await.unwrap().into_inner();
    assert_eq!(info.name, "renamed-over-grpc", "the unchanged name field was not written");
    assert_eq!(info.remaining, Some(5));
    assert_eq!(verify_from(&kw, &key, "").await, proto::VerifyCode::Valid, "the new quota is spent");
    let events = kw
        .audit(Some(&kw.root_key))
        .await
        .query_events(proto::QueryEventsRequest {
            key_id: key_id.clone(),
            action: "key.updated".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let from_console = events.last().expect("the console's update");
    let fields: Vec<&str> = from_console.changes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"remaining") && !fields.contains(&"name"), "{fields:?}");

    // Saving the form untouched changes nothing.
    browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    submit_confirmed(&browser, "form.update", "Save these changes").await;
    browser.wait_for_text("renamed-over-grpc").await;
    let again = kw
        .audit(Some(&kw.root_key))
        .await
        .query_events(proto::QueryEventsRequest { key_id, action: "key.updated".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(again.len(), events.len(), "no update event for an untouched form");

    // A refused update comes back as sent, the field named and marked; corrected, it is saved.
    browser.find("#u-rate").await.type_text("5").await;
    browser.find("#u-window").await.type_text("soon").await;
    submit_confirmed(&browser, "form.update", "Save these changes").await;
    let page = browser.wait_for_text("invalid rate_limit.window").await;
    assert!(page.contains("renamed-over-grpc"), "the key's page, with the form: {page}");
    assert_eq!(browser.find("#u-rate").await.property("value").await, "5", "what was typed stays");
    assert_eq!(browser.find("#u-window").await.property("ariaInvalid").await, "true");
    browser.execute("document.getElementById('u-window').value = ''").await;
    browser.find("#u-window").await.type_text("1m").await;
    submit_confirmed(&browser, "form.update", "Save these changes").await;
    let page = browser.wait_for_text("5 per 60s").await;
    assert!(page.contains("4 left"), "the quota (5, one spent) was not part of the change: {page}");

    // Sign-out is an audit event too.
    browser.find("form.signout button").await.click().await;
    browser.wait_for_url(|u| u.ends_with("/login")).await;
    let signed_out = kw
        .audit(Some(&kw.root_key))
        .await
        .query_events(proto::QueryEventsRequest { action: "console.sign_out".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(signed_out.len(), 1);
    assert_eq!(signed_out[0].actor, format!("key:{root_id}"));
}
