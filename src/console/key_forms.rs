//! The create form (every field of CreateKey: kind, scopes, owner, prefix, validity, maximum
//! age, networks, rate limit, quota, anomaly action, metadata), its handler, and the page that
//! shows a new key, or a signing key's secret, once. The actions on an existing key are
//! `key_actions`.

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    form_fields::{self as ff, inputs_of},
    routes::{Ctx, status_of},
    session::{self, Sent},
    view::{Nav, csrf_field},
    web::Body,
};
use crate::domain::{
    error::Error,
    key::{KeyId, KeyRecord},
    keys::NewKey,
    ports::{Hsm, Store},
    secret::KeyString,
};

pub fn new_form<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    ctx.page(StatusCode::OK, "Create key", Nav::Keys, create_form(ctx, None))
}

/// The create form, filled with what was sent; `problem`: the error to show, its field marked.
fn create_form<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, problem: Option<&Error>) -> Markup {
    let v = |name| ctx.req.field(name);
    let bad_inputs = match problem {
        Some(Error::InvalidArgument { field, .. }) => inputs_of(field),
        _ => &[],
    };
    let bad = |id: &str| bad_inputs.contains(&id).then_some("true");
    let described = |id: &str| bad_inputs.contains(&id).then_some("create-problem");
    // One input named `name` (its id too), filled with what was sent, marked when refused.
    let field = |name: &str, kind: &str, placeholder: Option<&str>, min: Option<&str>| {
        let step = matches!(kind, "number" | "datetime-local").then_some("1");
        html! {
            input id=(name) type=(kind) name=(name) required[name == "name"] value=(ctx.req.field(name)) placeholder=[placeholder]
                min=[min] step=[step] aria-invalid=[bad(name)] aria-describedby=[described(name)];
        }
    };
    let signing = v("kind") == "signing";
    let action = v("anomaly_action");
    html! {
        h1 { "Create a key" }
        form.stack method="post" action="/keys" data-confirm="Create this key?" aria-describedby=[problem.map(|_| "create-problem")] {
            @if let Some(problem) = problem { p.alert #create-problem role="alert" { (problem) } }
            (csrf_field(&ctx.session.csrf))
            input type="hidden" name="form_id" value=(session::form_id());
            label for="name" { "Name" }
            (field("name", "text", None, None))
            fieldset.choices {
                legend { "Kind" }
                label.choice for="kind-bearer" {
                    input #kind-bearer type="radio" name="kind" value="bearer" checked[!signing];
                    span { "Bearer " span.muted { "— the key string is the credential (VerifyKey)" } }
                }
                label.choice for="kind-signing" {
                    input #kind-signing type="radio" name="kind" value="signing" checked[signing];
                    span { "Signing " span.muted { "— requests are signed with a secret shown once (VerifySignature)" } }
                }
            }
            label for="scopes" { "Scopes " span.muted { "(separated by spaces or commas)" } }
            (field("scopes", "text", Some("orders:read orders:write"), None))
            label for="owner" { "Owner (team) " span.muted { "(optional; a team admin must name one of its teams)" } }
            (field("owner", "text", None, None))
            label for="prefix" { "Prefix " span.muted { "(optional)" } }
            (field("prefix", "text", Some("kw"), None))
            fieldset {
                legend { "Validity " span.muted { "(optional; times in UTC)" } }
                label for="not_before" { "Not before" }
                (field("not_before", "datetime-local", None, None))
                label for="expires_in" { "Expires in " span.muted { "(e.g. 90d)" } }
                (field("expires_in", "text", None, None))
                label for="expires_at" { "or expires at" }
                (field("expires_at", "datetime-local", None, None))
                label for="max_age" { "Maximum age " span.muted { "(rotate by then, e.g. 90d; empty: the configured default; 0: none)" } }
                (field("max_age", "text", None, None))
            }
            label for="allowed_cidrs" { "Allowed networks " span.muted { "(optional CIDRs or addresses)" } }
            (field("allowed_cidrs", "text", Some("10.0.0.0/8 2001:db8::/32"), None))
            fieldset {
                legend { "Rate limit " span.muted { "(optional)" } }
                label for="rate_limit" { "Verifications" }
                (field("rate_limit", "number", None, Some("1")))
                label for="rate_window" { "per " span.muted { "(e.g. 1m)" } }
                (field("rate_window", "text", Some("1m"), None))
            }
            fieldset {
                legend { "Quota " span.muted { "(optional; verifications the key may make)" } }
                label for="remaining" { "Remaining uses" }
                (field("remaining", "number", None, Some("0")))
                label for="refill_amount" { "Refill with " span.muted { "(uses)" } }
                (field("refill_amount", "number", None, Some("1")))
                label for="refill_interval" { "every " span.muted { "(e.g. 1d)" } }
                (field("refill_interval", "text", Some("1d"), None))
            }
            label for="anomaly_action" { "On anomalies" }
            select #anomaly_action name="anomaly_action" aria-invalid=[bad("anomaly_action")] aria-describedby=[described("anomaly_action")] {
                option value="alert" selected[action != "disable"] { "alert: record them, the key keeps working" }
                option value="disable" selected[action == "disable"] { "disable: record them and disable the key" }
            }
            label for="metadata" { "Metadata " span.muted { "(optional, one key=value a line)" } }
            textarea #metadata name="metadata" rows="3" aria-invalid=[bad("metadata")] aria-describedby=[described("metadata")] { (v("metadata")) }
            button type="submit" { "Create key" }
        }
    }
}

/// Creates the key the form describes, once per form: a form sent again (a reload, a double
/// submit) makes no second key and shows no key again.
pub async fn create<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let refused = |e: &Error| ctx.page(status_of(e), "Create key", Nav::Keys, create_form(ctx, Some(e)));
    let new = match new_key(ctx) {
        Ok(new) => new,
        Err(e) => return refused(&e),
    };
    let sessions = &ctx.console.sessions;
    let form_id = ctx.req.field("form_id").trim();
    if !form_id.is_empty()
        && let Sent::Again(made) = sessions.claim_form(&ctx.session.id, form_id)
    {
        return ctx.page(StatusCode::CONFLICT, "Already sent", Nav::Keys, already_sent(made));
    }
    let created = ctx.console.services.keys.create(&ctx.caller, new, &ctx.rctx).await;
    if !form_id.is_empty() {
        sessions.form_done(&ctx.session.id, form_id, created.as_ref().ok().map(|c| c.record.id));
    }
    match created {
        Ok(created) => {
            tracing::info!(key_id = %created.record.id, actor = %ctx.caller.key_id, "key created (console)");
            let signing = created.signing_secret.as_ref().map(signing_text);
            let page = shown_once("Key created", &created.key, &created.record, signing.as_ref());
            ctx.page(StatusCode::OK, "Key created", Nav::Keys, page)
        }
        Err(e @ (Error::InvalidArgument { .. } | Error::PermissionDenied(_))) => refused(&e),
        Err(e) => ctx.fail(e, Nav::Keys),
    }
}

/// The page for a create form sent again: the key it made, not shown again.
fn already_sent(made: Option<KeyId>) -> Markup {
    html! {
        h1 { "This form was already sent" }
        p.note role="status" {
            @match made {
                Some(id) => { "It made key " a #made-key-link href={ "/keys/" (id) } { (id) } ". " }
                None => { "The key it asked for is being made. " }
            }
            "A new key, and a signing secret, is shown only once: it is not shown again. "
            a href="/keys/new" { "Create another key" } "."
        }
    }
}

/// A signing secret as it is shown and given to clients: base64.
pub fn signing_text(secret: &crate::domain::secret::Secret) -> KeyString {
    use base64::Engine as _;
    KeyString::new(base64::engine::general_purpose::STANDARD.encode(secret.expose()))
}

fn new_key<H, S>(ctx: &Ctx<'_, H, S>) -> Result<NewKey, Error> {
    let f = |name| ctx.req.field(name);
    let expires_at = match (ff::duration("expires_in", f("expires_in"))?, ff::utc_time("expires_at", f("expires_at"))?)
    {
        (Some(_), Some(_)) => return Err(Error::invalid("expires_at", "give expires in or expires at, not both")),
        (Some(d), None) => Some(std::time::SystemTime::now() + d),
        (None, at) => at,
    };
    Ok(NewKey {
        name: f("name").trim().to_owned(),
        prefix: f("prefix").trim().to_owned(),
        scopes: ff::words(f("scopes")),
        owner: f("owner").trim().to_owned(),
        expires_at,
        not_before: ff::utc_time("not_before", f("not_before"))?,
        allowed_cidrs: ff::words(f("allowed_cidrs")),
        metadata: ff::metadata(f("metadata"))?,
        rate_limit: ff::rate_limit(f("rate_limit"), f("rate_window"))?,
        remaining: ff::count("remaining", f("remaining"))?,
        refill: ff::refill(f("refill_amount"), f("refill_interval"))?,
        max_age: ff::duration("max_age", f("max_age"))?,
        anomaly_action: ff::anomaly_action(f("anomaly_action"))?,
        kind: ff::kind(f("kind"))?,
    })
}

/// The page that shows a new key, once (a signing key: its signing secret, base64, instead:
/// it is never presented as a bearer key).
pub fn shown_once(title: &str, key: &KeyString, record: &KeyRecord, signing: Option<&KeyString>) -> Markup {
    let (label, shown) = match signing {
        Some(secret) => ("The new signing secret (base64)", secret),
        None => ("The new key", key),
    };
    html! {
        h1 { (title) }
        section.once {
            p.warning role="alert" {
                strong { "Copy this now. " }
                @if signing.is_some() {
                    "keyward keeps the signing secret only wrapped inside the HSM: it will not be shown again. "
                    "Clients sign requests with it and send the key id."
                } @else {
                    "keyward keeps only a digest of the key: it will not be shown again."
                }
            }
            label for="new-key" { (label) }
            div.copyrow {
                input #new-key type="text" readonly value=(shown.expose()) spellcheck="false" autocomplete="off";
                button type="button" data-copy="new-key" { "Copy" }
            }
            p { "Key " a #new-key-link href={ "/keys/" (record.id) } { (record.id) } ", " (record.name) "." }
        }
    }
}
