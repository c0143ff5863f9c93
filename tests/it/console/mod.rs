//! The web console in a real headless browser (Debian's chromium, driven by chromedriver over
//! WebDriver): sign in, create a key and verify the key shown, find it in the list, rotate it,
//! revoke it, read the audit events and the chain status, sign out; a team admin sees only its
//! team's keys; a form without the CSRF token and a cross-site POST are refused; a key without
//! `keyward:keys:read` cannot sign in. `key_fields`: the create and update forms' fields;
//! `keyboard`: the console by keyboard alone. With KEYWARD_CONSOLE_SCREENSHOTS=1 the main pages are
//! saved to docs/console/*.png (committed; CI does not rewrite them).

mod chain;
mod key_fields;
mod keyboard;
mod paging;
mod webdriver;

use std::{net::SocketAddr, path::PathBuf};

use keyward::proto;
use webdriver::{Browser, request};

use crate::common::Instance;

const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);

/// A started dev instance serving the console.
async fn console_instance() -> Instance {
    let mut kw = Instance::init();
    kw.console = true;
    kw.start().await;
    kw
}

/// The root key's id (the first key, made by `init`).
async fn root_id(kw: &Instance) -> String {
    let keys = kw.root_keys().await.list_keys(proto::ListKeysRequest::default()).await.unwrap().into_inner().keys;
    keys[0].key_id.clone()
}

fn base(kw: &Instance) -> String {
    format!("http://{}", kw.console_addr())
}

/// Where screenshots go, when asked for.
fn screenshot_dir() -> Option<PathBuf> {
    (std::env::var("KEYWARD_CONSOLE_SCREENSHOTS").as_deref() == Ok("1")).then(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

async fn shot(browser: &Browser, name: &str, width: u32) {
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(width, &dir.join(format!("{name}.png"))).await;
        browser.resize(width, WIDE.1).await;
    }
}

async fn sign_in(browser: &Browser, kw: &Instance, key: &str) {
    browser.goto(&format!("{}/login", base(kw))).await;
    browser.find("#key").await.type_text(key).await;
    browser.find("section.login button[type=submit]").await.click().await;
}

/// Sends the form `form` (CSS) after answering its confirmation, and waits for the next page.
async fn submit_confirmed(browser: &Browser, form: &str, expected_question: &str) {
    let before = browser.execute("return performance.timeOrigin").await;
    browser.find(&format!("{form} button[type=submit]")).await.click().await;
    let question = browser.accept_dialog().await;
    assert!(question.contains(expected_question), "the confirmation asks {question:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while browser.execute("return performance.timeOrigin").await == before {
        assert!(std::time::Instant::now() < deadline, "the form was not sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    browser.wait_for_url(|_| true).await;
}

async fn verify_from(kw: &Instance, key: &str, client_ip: &str) -> proto::VerifyCode {
    kw.root_verifier()
        .await
        .verify_key(proto::VerifyKeyRequest { key: key.into(), client_ip: client_ip.into(), ..Default::default() })
        .await
        .expect("VerifyKey")
        .into_inner()
        .code()
}

#[tokio::test]
async fn console_signs_in_creates_rotates_revokes_audits_and_signs_out() {
    let kw = console_instance().await;
    let root_id = root_id(&kw).await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;

    // Signed out, every page leads to the sign-in page.
    browser.goto(&format!("{}/keys", base(&kw))).await;
    assert!(browser.url().await.ends_with("/login"), "{}", browser.url().await);
    shot(&browser, "login", WIDE.0).await;

    sign_in(&browser, &kw, &kw.root_key).await;
    let url = browser.wait_for_url(|u| u.ends_with("/keys")).await;
    assert!(url.ends_with("/keys"));
    let text = browser.text().await;
    assert!(text.contains("Signed in as"), "{text}");
    let cookie =
        browser.cookies().await.into_iter().find(|c| c["name"] == "keyward_console").expect("the session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["value"].as_str().unwrap().len(), 64, "a 256-bit session id");

    // Create a key: it is shown once, and it verifies.
    browser.find("a.button[href='/keys/new']").await.click().await;
    browser.wait_for_url(|u| u.ends_with("/keys/new")).await;
    shot(&browser, "create-form", WIDE.0).await;
    browser.find("#name").await.type_text("console-e2e").await;
    browser.find("#scopes").await.type_text("orders:read orders:write").await;
    browser.find("#metadata").await.type_text("team=billing").await;
    submit_confirmed(&browser, "form[action='/keys']", "Create this key?").await;
    let page = browser.wait_for_text("Copy this now").await;
    assert!(page.contains("will not be shown again"), "{page}");
    let key = browser.find("#new-key").await.property("value").await.as_str().unwrap().to_owned();
    assert!(key.starts_with("kw_"), "a key is shown");
    browser.find("button[data-copy='new-key']").await.click().await;
    let copied = browser.find("button[data-copy='new-key']").await.text().await;
    assert!(copied == "Copied" || copied.starts_with("Select"), "the copy button answers: {copied}");
    shot(&browser, "key-created", WIDE.0).await;
    assert_eq!(verify_from(&kw, &key, "203.0.113.7").await, proto::VerifyCode::Valid);
    assert_eq!(verify_from(&kw, &key, "203.0.113.7").await, proto::VerifyCode::Valid);
    assert_eq!(verify_from(&kw, &key, "198.51.100.20").await, proto::VerifyCode::Valid);
    let key_id = browser.find("#new-key-link").await.text().await;

    // It is in the list, found by name.
    browser.goto(&format!("{}/keys?name=console-e2e", base(&kw))).await;
    let list = browser.text().await;
    assert!(list.contains("console-e2e") && list.contains("active"), "{list}");
    let rows = browser.find_all("table.keys tbody tr").await;
    assert_eq!(rows.len(), 1, "one key matches the name");
    browser.goto(&format!("{}/keys", base(&kw))).await;
    shot(&browser, "keys", WIDE.0).await;

    // Its page: policies, usage by client address (once the usage log has written it).
    browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    let detail = browser.text().await;
    assert!(detail.contains("orders:read") && detail.contains("billing"), "{detail}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !browser.text().await.contains("203.0.113.7") {
        assert!(std::time::Instant::now() < deadline, "the usage never reached the key's page");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    }
    assert!(browser.try_find("figure.chart svg rect.valid").await.is_some(), "the usage chart is drawn");

    // Rotate with a grace period: a new key, shown once; the old one verifies meanwhile.
    browser.find("#r-grace").await.type_text("1h").await;
    submit_confirmed(&browser, "form.rotate", "Rotate this key?").await;
    browser.wait_for_text("Key rotated").await;
    let new_key = browser.find("#new-key").await.property("value").await.as_str().unwrap().to_owned();
    let new_id = browser.find("#new-key-link").await.text().await;
    assert_ne!(new_key, key);
    assert_eq!(verify_from(&kw, &new_key, "").await, proto::VerifyCode::Valid);
    assert_eq!(verify_from(&kw, &key, "").await, proto::VerifyCode::Valid, "the old key verifies in its grace period");
    browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    let old = browser.text().await;
    assert!(old.contains("rotated") && old.contains(&new_id), "the old key links to its successor: {old}");
    shot(&browser, "key-detail", WIDE.0).await;

    // Revoke the new key with a reason.
    browser.goto(&format!("{}/keys/{new_id}", base(&kw))).await;
    browser.find("#v-reason").await.type_text("console test").await;
    submit_confirmed(&browser, "form.revoke", "Revoke this key for good?").await;
    let revoked = browser.wait_for_text("revoked").await;
    assert!(revoked.contains("console test"), "{revoked}");
    assert_eq!(verify_from(&kw, &new_key, "").await, proto::VerifyCode::Revoked);

    // The audit page: the events, done as the signed-in key, and the chain intact.
    browser.goto(&format!("{}/audit", base(&kw))).await;
    let audit = browser.text().await;
    for action in ["console.sign_in", "key.created", "key.rotated", "key.revoked"] {
        assert!(audit.contains(action), "{action} is listed: {audit}");
    }
    assert!(audit.contains(&root_id), "the actor is the signed-in key");
    let chain = browser.find("#chain-status").await.text().await;
    assert!(chain.starts_with("Intact"), "{chain}");
    browser.goto(&format!("{}/audit?action=key.revoked", base(&kw))).await;
    let filtered = browser.find_all("table.events tbody tr").await;
    assert_eq!(filtered.len(), 1, "one revocation");
    assert!(filtered[0].text().await.contains("console test"));
    browser.goto(&format!("{}/audit", base(&kw))).await;
    shot(&browser, "audit", WIDE.0).await;

    // The master key page.
    browser.goto(&format!("{}/master?count=1", base(&kw))).await;
    let master = browser.text().await;
    assert!(master.contains("current"), "{master}");
    assert!(browser.find("#hsm-health").await.text().await.starts_with("Healthy"));
    shot(&browser, "master", WIDE.0).await;

    // At 390 px the pages still work: the list, and the navigation.
    browser.resize(NARROW.0, NARROW.1).await;
    browser.goto(&format!("{}/keys/{key_id}", base(&kw))).await;
    let width = browser.execute("return document.documentElement.scrollWidth").await.as_u64().unwrap();
    assert!(width <= u64::from(NARROW.0), "no sideways scrolling at 390 px: the page is {width} px wide");
    shot(&browser, "key-detail-390", NARROW.0).await;
    browser.resize(WIDE.0, WIDE.1).await;

    // Sign out: the session is gone.
    browser.find("form.signout button").await.click().await;
    browser.wait_for_url(|u| u.ends_with("/login")).await;
    browser.goto(&format!("{}/keys", base(&kw))).await;
    assert!(browser.url().await.ends_with("/login"), "signed out");
    let session = cookie["value"].as_str().unwrap();
    let (status, headers, _) =
        request(kw.console_addr(), "GET", "/keys", &[("cookie", &format!("keyward_console={session}"))], None).await;
    assert_eq!(status, http::StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/login", "the old session id no longer works");
}

#[tokio::test]
async fn console_team_admin_sees_only_its_teams_keys() {
    let kw = console_instance().await;
    let mut root = kw.root_keys().await;
    let create = |name: &str, scopes: &[&str], owner: &str| proto::CreateKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        owner: owner.into(),
        ..Default::default()
    };
    let admin =
        root.create_key(create("team-a admin", &["keyward:keys:*@team-a"], "team-a")).await.unwrap().into_inner();
    let a = root.create_key(create("a worker", &["orders:read"], "team-a")).await.unwrap().into_inner();
    let b = root.create_key(create("b worker", &["orders:read"], "team-b")).await.unwrap().into_inner();
    let (a_id, b_id) = (a.info.unwrap().key_id, b.info.unwrap().key_id);

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &kw, &admin.key).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;
    let list = browser.text().await;
    assert!(list.contains("a worker"), "{list}");
    assert!(!list.contains("b worker"), "team-b's key is not listed: {list}");
    browser.goto(&format!("{}/keys/{a_id}", base(&kw))).await;
    assert!(browser.text().await.contains("a worker"));
    assert!(browser.try_find("figure.chart svg").await.is_some(), "a team admin sees its own key's usage chart");
    assert!(
        browser.text().await.contains("Needs the keyward:audit:read permission"),
        "its audit events need audit:read"
    );

    // Another team's key is not found, as over gRPC.
    browser.goto(&format!("{}/keys/{b_id}", base(&kw))).await;
    let page = browser.text().await;
    assert!(page.contains("404") && page.contains("not found"), "{page}");
    assert!(!page.contains("b worker"));
    // Nor can its forms act on it.
    let (status, _, _) = request(
        kw.console_addr(),
        "POST",
        &format!("/keys/{b_id}/revoke"),
        &[("cookie", &session_cookie(&browser).await), ("content-type", "application/x-www-form-urlencoded")],
        Some(format!("csrf={}&reason=x", csrf_of(&browser).await)),
    )
    .await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let info = root.get_key(proto::GetKeyRequest { key_id: b_id.clone() }).await.unwrap().into_inner();
    assert_eq!(info.state(), proto::KeyState::Active, "team-b's key is untouched");
}

async fn session_cookie(browser: &Browser) -> String {
    let cookie = browser.cookies().await.into_iter().find(|c| c["name"] == "keyward_console").expect("signed in");
    format!("keyward_console={}", cookie["value"].as_str().unwrap())
}

async fn csrf_of(browser: &Browser) -> String {
    browser.find("form.signout input[name=csrf]").await.property("value").await.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn console_refuses_forged_forms_cross_site_posts_and_non_admin_keys() {
    let kw = console_instance().await;
    let (worker, worker_id) = kw.create_key("worker", &["orders:read"]).await;
    let addr: SocketAddr = kw.console_addr();
    let browser = Browser::start(WIDE.0, WIDE.1).await;

    // A key without keyward:keys:read cannot sign in.
    sign_in(&browser, &kw, &worker).await;
    let refused = browser.wait_for_text("may not use the console").await;
    assert!(refused.contains("keyward:keys:read"), "{refused}");
    assert!(browser.cookies().await.iter().all(|c| c["name"] != "keyward_console"), "no session");
    // Nor can a wrong key.
    sign_in(&browser, &kw, "kw_not_a_key").await;
    browser.wait_for_text("that key was not accepted").await;

    // Signed in as root: the revoke form without its CSRF token is refused.
    sign_in(&browser, &kw, &kw.root_key).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;
    browser.goto(&format!("{}/keys/{worker_id}", base(&kw))).await;
    browser.execute("document.querySelector('form.revoke input[name=csrf]').remove()").await;
    browser.find("#v-reason").await.type_text("forged").await;
    submit_confirmed(&browser, "form.revoke", "Revoke").await;
    let page = browser.wait_for_text("CSRF").await;
    assert!(page.contains("403"), "{page}");
    assert_eq!(kw.code(&worker, &[]).await, proto::VerifyCode::Valid, "the key was not revoked");

    // A POST with the session cookie and the right token, but from another site, is refused.
    let form = format!("csrf={}&reason=cross-site", csrf_of(&browser).await);
    let cookie = session_cookie(&browser).await;
    let path = format!("/keys/{worker_id}/revoke");
    let form_type = ("content-type", "application/x-www-form-urlencoded");
    for origin in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
        let (status, _, _) =
            request(addr, "POST", &path, &[("cookie", &cookie), form_type, origin], Some(form.clone())).await;
        assert_eq!(status, http::StatusCode::FORBIDDEN, "{origin:?}");
    }
    assert_eq!(kw.code(&worker, &[]).await, proto::VerifyCode::Valid, "still not revoked");
    // The same request from the console's own origin goes through (the checks above are what refused).
    let own = format!("http://{addr}");
    let (status, headers, _) =
        request(addr, "POST", &path, &[("cookie", &cookie), form_type, ("origin", &own)], Some(form)).await;
    assert_eq!(status, http::StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], path.trim_end_matches("/revoke"));
    assert_eq!(kw.code(&worker, &[]).await, proto::VerifyCode::Revoked);

    // Every page carries the security headers; the assets are served by keyward itself.
    let (_, headers, body) = request(addr, "GET", "/keys", &[("cookie", &cookie)], None).await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("server-timing"));
    assert!(!body.contains("<script>") && !body.contains("style=\""), "no inline script or style");
    let (status, headers, _) = request(addr, "GET", "/assets/console-2.js", &[], None).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age=31536000"));
}
