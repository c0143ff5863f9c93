//! The audit page's whole-chain check in a real browser: started by a form, it runs in the
//! background and the page then shows the whole trail checked, intact, with who asked.

use super::{WIDE, base, console_instance, root_id, sign_in};
use crate::console::webdriver::Browser;

#[tokio::test]
async fn console_checks_the_whole_chain_in_the_background() {
    let kw = console_instance().await;
    for i in 0..5 {
        kw.create_key(&format!("chain-{i}"), &["orders:read"]).await;
    }
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &kw, &kw.root_key).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;
    browser.goto(&format!("{}/audit", base(&kw))).await;
    assert!(browser.try_find("#whole-chain").await.is_none(), "no whole-chain result before a check");
    let head: u64 = browser.find("#checkpoint-seq").await.text().await.parse().unwrap();
    assert!(head >= 6, "root and five keys made at least six events: {head}");

    browser.find("form[action='/audit/verify'] button[type=submit]").await.click().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let result = loop {
        browser.goto(&format!("{}/audit", base(&kw))).await;
        if let Some(found) = browser.try_find("#whole-chain").await {
            let text = found.text().await;
            if !text.starts_with("Checking") {
                break text;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the whole-chain check never finished");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(result.starts_with("Whole chain Intact:"), "{result}");
    let checked: u64 = result["Whole chain Intact: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(checked >= head, "every event up to the head at the start was checked: {result}");
    assert!(result.contains("(seq 1–"), "from the first event: {result}");
    let root_id = root_id(&kw).await;
    assert!(result.contains(&root_id[root_id.len() - 8..]), "by the signed-in key: {result}");
}
