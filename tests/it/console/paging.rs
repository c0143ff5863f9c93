//! The keys list across pages in a real browser: sorting orders every matching key (not just the
//! page shown), paging goes forward and back with the position shown, and the master key page
//! counts every key from the key index.

use keyward::proto;

use super::{WIDE, base, console_instance, sign_in, verify_from};
use crate::console::webdriver::Browser;

/// The names in the list's rows, in order.
async fn names(browser: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for row in browser.find_all("table.keys tbody tr td:first-child").await {
        out.push(row.text().await);
    }
    out
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("k{n:03}")).collect()
}

#[tokio::test]
async fn console_sorts_every_matching_key_and_pages_forward_and_back() {
    let kw = console_instance().await;
    let mut root = kw.root_keys().await;
    // 120 keys owned by one team, created in an order unlike their names' (37 is prime to 120).
    let mut keys = vec![String::new(); 120];
    for i in 0..120 {
        let n = (i * 37) % 120;
        let created = root
            .create_key(proto::CreateKeyRequest {
                name: format!("k{n:03}"),
                owner: "paging".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        keys[n] = created.key;
    }

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    sign_in(&browser, &kw, &kw.root_key).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;
    browser.goto(&format!("{}/keys?owner=paging&sort=name", base(&kw))).await;
    assert_eq!(browser.find("#list-summary").await.text().await, "Keys 1–50 of 120, page 1 of 3.");
    assert_eq!(names(&browser).await, expected(0..50), "the first page holds the first 50 names of all 120");
    assert!(browser.try_find("a[rel=prev]").await.is_none(), "no previous page before the first");

    browser.find("a[rel=next]").await.click().await;
    browser.wait_for_url(|u| u.contains("page=2")).await;
    assert_eq!(names(&browser).await, expected(50..100));
    browser.find("a[rel=next]").await.click().await;
    browser.wait_for_url(|u| u.contains("page=3")).await;
    assert_eq!(browser.find("#list-summary").await.text().await, "Keys 101–120 of 120, page 3 of 3.");
    assert_eq!(names(&browser).await, expected(100..120));
    assert!(browser.try_find("a[rel=next]").await.is_none(), "no next page after the last");
    browser.find("a[rel=prev]").await.click().await;
    browser.wait_for_url(|u| u.contains("page=2")).await;
    assert_eq!(names(&browser).await, expected(50..100), "back to the second page");

    // The Name header sorts the other way, across every key again, from the first page.
    browser.find("th a[href*='sort=name']").await.click().await;
    browser.wait_for_url(|u| u.contains("dir=desc")).await;
    let header = browser.find("th[aria-sort=descending]").await.text().await;
    assert_eq!(header, "Name");
    assert_eq!(names(&browser).await, expected(70..120).into_iter().rev().collect::<Vec<_>>());

    // Sorted by last use, the key just used comes first once its use is recorded.
    assert_eq!(verify_from(&kw, &keys[77], "203.0.113.9").await, proto::VerifyCode::Valid);
    let by_use = format!("{}/keys?owner=paging&sort=last_used&dir=desc", base(&kw));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        browser.goto(&by_use).await;
        if names(&browser).await.first().map(String::as_str) == Some("k077") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the used key never sorted first by last use");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Bad list parameters name the parameter, with the filters kept.
    browser.goto(&format!("{}/keys?owner=paging&sort=colour", base(&kw))).await;
    let alert = browser.find("p.alert").await.text().await;
    assert!(alert.contains("sort") && alert.contains("last_used"), "{alert}");
    assert_eq!(browser.find("input[name=owner]").await.property("value").await, "paging");
    browser.goto(&format!("{}/keys?owner=paging&page=0", base(&kw))).await;
    let alert = browser.find("p.alert").await.text().await;
    assert!(alert.contains("page number"), "{alert}");

    // The master key page counts every key (120, the root key) under version 1, from the index.
    browser.goto(&format!("{}/master", base(&kw))).await;
    let using = browser.find("table.versions tbody tr td:nth-child(4)").await.text().await;
    assert_eq!(using, "121");
}
