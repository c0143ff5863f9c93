//! The HTML every page shares (maud): the layout with its navigation and sign-out form, the
//! sign-in page, error boxes, state badges, times. No inline script or style: the CSP allows
//! only the console's own stylesheet and script.

use std::time::SystemTime;

use http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::web::{CSS_PATH, JS_PATH};
use crate::domain::key::{KeyRecord, KeyState};

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Keys,
    Audit,
    Master,
    None,
}

/// The signed-in key, as the layout shows it.
pub struct User {
    pub key_id: String,
    pub csrf: String,
}

pub fn layout(title: &str, nav: Nav, user: Option<&User>, content: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            @if nav == this { a href=(href) aria-current="page" { (label) } } @else { a href=(href) { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward console" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "keyward" }
                    @if let Some(user) = user {
                        nav aria-label="Main" {
                            (link("/keys", "Keys", Nav::Keys))
                            (link("/audit", "Audit", Nav::Audit))
                            (link("/master", "Master key", Nav::Master))
                        }
                        form.signout method="post" action="/logout" {
                            (csrf_field(&user.csrf))
                            span.who title="The key you signed in with" { "Signed in as " code { (short_id(&user.key_id)) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (content) }
            }
        }
    }
}

pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

pub fn login(message: Option<&str>) -> Markup {
    let content = html! {
        section.login {
            h1 { "Sign in" }
            p { "Sign in with a keyward key that holds " code { "keyward:keys:read" } " (for all keys, or a team's). \
                 Everything you do here is done, and audited, as that key." }
            @if let Some(message) = message {
                p.alert role="alert" { (message) }
            }
            form method="post" action="/login" {
                label for="key" { "Admin key" }
                input #key type="password" name="key" autocomplete="off" required spellcheck="false";
                button type="submit" { "Sign in" }
            }
        }
    };
    layout("Sign in", Nav::None, None, content)
}

pub fn error_box(status: StatusCode, message: &str) -> Markup {
    html! {
        section.problem {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.alert role="alert" { (message) }
            p { a href="/keys" { "Back to the keys" } }
        }
    }
}

/// A note in place of a section the caller may not read.
pub fn needs(permission: &str) -> Markup {
    html! { p.note { "Needs the " code { (permission) } " permission." } }
}

pub fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::Disabled => "disabled",
        KeyState::Revoked => "revoked",
        KeyState::Rotated => "rotated",
    }
}

pub fn parse_state(text: &str) -> Option<KeyState> {
    [KeyState::Active, KeyState::Disabled, KeyState::Revoked, KeyState::Rotated]
        .into_iter()
        .find(|s| state_name(*s) == text)
}

pub fn state_badge(record: &KeyRecord) -> Markup {
    let name = state_name(record.state);
    html! { span class={ "badge " (name) } { (name) } }
}

pub fn time(t: SystemTime) -> Markup {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    html! { time datetime=(text) { (text.replace('T', " ")) } }
}

pub fn opt_time(t: Option<SystemTime>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// A key id's last (random) block, for narrow places (the full id is in the title).
pub fn short_id(id: &str) -> String {
    id.rsplit('-').next().unwrap_or(id).to_owned()
}
