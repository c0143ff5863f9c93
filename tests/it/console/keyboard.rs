//! The console by keyboard alone (WebDriver key actions: Tab, Enter, Space, typed text; no
//! click): the first Tab reaches the skip link, which moves focus to the main content; sign in,
//! reach "Create key", fill and send the create form, copy the new key. Every element that
//! takes focus on the way shows it (an outline or a box shadow), and every form control of the
//! pages visited has an accessible label.

use serde_json::Value;

use super::{
    WIDE, base, console_instance,
    webdriver::{Browser, ENTER, TAB},
};

/// The focused element: a selector-like description, and whether its focus is drawn.
async fn focused(browser: &Browser) -> (String, bool) {
    let v = browser
        .execute(
            "var e = document.activeElement; var s = getComputedStyle(e);
             var outline = s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
             return { what: e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                            (e.getAttribute('href') ? '[href=' + e.getAttribute('href') + ']' : '') +
                            (e.type ? '[type=' + e.type + ']' : ''),
                      visible: outline || s.boxShadow !== 'none' };",
        )
        .await;
    (v["what"].as_str().unwrap().to_owned(), v["visible"] == Value::Bool(true))
}

/// Presses Tab until the focused element is `target` (the start of what `focused` says), checking that
/// each element focused on the way shows its focus; returns how many were passed.
async fn tab_to(browser: &Browser, target: &str) -> usize {
    for step in 0..80 {
        browser.press(TAB).await;
        let (what, visible) = focused(browser).await;
        assert!(visible, "{what} takes focus without showing it");
        if what.starts_with(target) {
            return step;
        }
    }
    panic!("{target} was not reached with Tab");
}

/// The form controls of the page with no accessible name from a <label>, aria-label or
/// aria-labelledby.
async fn unlabelled(browser: &Browser) -> Vec<String> {
    let found = browser
        .execute(
            "return Array.from(document.querySelectorAll('input, select, textarea'))
               .filter(function (e) { return e.type !== 'hidden'; })
               .filter(function (e) {
                 var named = function (a) { return (e.getAttribute(a) || '').trim() !== ''; };
                 return !(e.labels && e.labels.length > 0) && !named('aria-label') && !named('aria-labelledby');
               })
               .map(function (e) { return e.outerHTML; });",
        )
        .await;
    found.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

async fn assert_labelled(browser: &Browser, page: &str) {
    let controls =
        browser.execute("return document.querySelectorAll('input:not([type=hidden]), select, textarea').length").await;
    assert!(controls.as_u64().unwrap() > 0, "{page} has form controls to check");
    let missing = unlabelled(browser).await;
    assert!(missing.is_empty(), "controls without a label on {page}: {missing:#?}");
}

#[tokio::test]
async fn console_works_by_keyboard_alone_with_visible_focus_and_labelled_controls() {
    let kw = console_instance().await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.goto(&format!("{}/login", base(&kw))).await;
    assert_labelled(&browser, "the sign-in page").await;

    // The first Tab reaches the skip link; following it moves focus to the main content.
    browser.press(TAB).await;
    let (what, visible) = focused(&browser).await;
    assert_eq!(what, "a[href=#main]", "the first Tab focuses the skip link");
    assert!(visible, "the skip link shows its focus");
    assert!(browser.text().await.contains("Skip to content"));
    browser.press(ENTER).await;
    assert_eq!(focused(&browser).await.0, "main#main", "the skip link moves focus to the main content");

    // Sign in: the next Tab is the key field; type the key and press Enter.
    browser.press(TAB).await;
    let (what, visible) = focused(&browser).await;
    assert_eq!(what, "input#key[type=password]");
    assert!(visible, "the key field shows its focus");
    browser.press(&kw.root_key).await;
    browser.press(ENTER).await;
    browser.wait_for_url(|u| u.ends_with("/keys")).await;
    assert_labelled(&browser, "the keys list").await;

    // Reach "Create key" and follow it.
    tab_to(&browser, "a[href=/keys/new]").await;
    browser.press(ENTER).await;
    browser.wait_for_url(|u| u.ends_with("/keys/new")).await;
    assert_labelled(&browser, "the create form").await;

    // Fill the name, choose a quota, and send the form with Space on its button.
    tab_to(&browser, "input#name[type=text]").await;
    browser.press("keyboard-made").await;
    tab_to(&browser, "input#remaining[type=number]").await;
    browser.press("3").await;
    tab_to(&browser, "button[type=submit]").await;
    let before = browser.execute("return performance.timeOrigin").await;
    browser.press(" ").await;
    let question = browser.accept_dialog().await;
    assert_eq!(question, "Create this key?");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while browser.execute("return performance.timeOrigin").await == before {
        assert!(std::time::Instant::now() < deadline, "the form was not sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let page = browser.wait_for_text("Copy this now").await;
    assert!(page.contains("keyboard-made"), "{page}");
    assert_labelled(&browser, "the new key's page").await;

    // Copy it with the keyboard: the Copy button answers.
    tab_to(&browser, "button[type=button]").await;
    browser.press(ENTER).await;
    let copied = browser.find("button[data-copy='new-key']").await.text().await;
    assert!(copied == "Copied" || copied.starts_with("Select"), "the copy button answers: {copied}");

    // The key's page: the update, rotate, disable and revoke forms are labelled too.
    tab_to(&browser, "a#new-key-link").await;
    browser.press(ENTER).await;
    browser.wait_for_text("Actions").await;
    let page = browser.text().await;
    assert!(page.contains("keyboard-made") && page.contains("3 left"), "{page}");
    assert_labelled(&browser, "the key's page").await;
    tab_to(&browser, "input#u-remaining[type=number]").await;

    browser.goto(&format!("{}/audit", base(&kw))).await;
    assert_labelled(&browser, "the audit page").await;

    // The label check does find a control without one.
    browser.execute("var probe = document.createElement('input'); probe.id = 'probe'; document.querySelector('main').append(probe)").await;
    let missing = unlabelled(&browser).await;
    assert!(missing.len() == 1 && missing[0].contains("probe"), "{missing:?}");
}
