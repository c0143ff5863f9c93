//! The actions on one key (update, rotate, disable, enable, revoke), each a KeyAdmin call with
//! the signed-in key as the caller, and the update form. The update form carries, beside each
//! field, the value it was shown with: the field mask names only the groups of fields the admin
//! changed, so a field left alone is not rewritten (a quota being spent, a change another admin
//! made meanwhile).

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    form_fields as ff,
    key_forms::{shown_once, signing_text},
    key_page,
    routes::{Ctx, status_of},
    view::{self, Nav, csrf_field, opt_time},
    web::{self, Body, Req},
};
use crate::domain::{
    anomaly::AnomalyAction,
    error::Error,
    key::KeyRecord,
    ports::{Hsm, Store},
    secret::KeyString,
    update::{Field, KeyPatch},
};

/// How a field's text is compared with the text it was shown with.
#[derive(Clone, Copy)]
enum Compare {
    Text,
    Words,
    Lines,
    Time,
}

/// The update form's groups of fields: the mask path each sets and the form fields it reads.
const GROUPS: [(Field, &[&str], Compare); 12] = [
    (Field::Name, &["name"], Compare::Text),
    (Field::Scopes, &["scopes"], Compare::Words),
    (Field::AllowedCidrs, &["allowed_cidrs"], Compare::Words),
    (Field::Owner, &["owner"], Compare::Text),
    (Field::NotBefore, &["not_before"], Compare::Time),
    (Field::ExpiresAt, &["expires_at"], Compare::Time),
    (Field::MaxAge, &["max_age"], Compare::Text),
    (Field::RateLimit, &["rate_limit", "rate_window"], Compare::Text),
    (Field::Remaining, &["remaining"], Compare::Text),
    (Field::Refill, &["refill_amount", "refill_interval"], Compare::Text),
    (Field::AnomalyAction, &["anomaly_action"], Compare::Text),
    (Field::Metadata, &["metadata"], Compare::Lines),
];

/// The hidden field that carries what `name` was shown with.
fn was(name: &str) -> String {
    format!("was_{name}")
}

fn same(compare: Compare, a: &str, b: &str) -> bool {
    match compare {
        Compare::Text => a.trim() == b.trim(),
        Compare::Words => ff::words(a) == ff::words(b),
        Compare::Lines => {
            let lines =
                |t: &str| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect::<Vec<_>>();
            lines(a) == lines(b)
        }
        Compare::Time => match (ff::utc_time("", a), ff::utc_time("", b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a.trim() == b.trim(),
        },
    }
}

/// The mask paths of the groups whose fields (as `field` reads the form) differ from what the
/// form was shown with.
fn changed<'a>(field: impl Fn(&str) -> &'a str) -> Vec<String> {
    GROUPS
        .iter()
        .filter(|(_, names, compare)| names.iter().any(|n| !same(*compare, field(n), field(&was(n)))))
        .map(|(field, _, _)| field.path().to_owned())
        .collect()
}

/// The update form's fields as a patch whose mask names the changed groups only.
fn patch(req: &Req) -> Result<KeyPatch, Error> {
    let f = |name: &str| req.field(name);
    let mask = changed(f);
    let wanted = |field: Field| mask.iter().any(|p| p == field.path());
    // Only the changed groups are read: an untouched field cannot refuse the update.
    let mut p = KeyPatch { mask: mask.clone(), ..Default::default() };
    if wanted(Field::Name) {
        p.name = f("name").trim().to_owned();
    }
    if wanted(Field::Scopes) {
        p.scopes = ff::words(f("scopes"));
    }
    if wanted(Field::AllowedCidrs) {
        p.allowed_cidrs = ff::words(f("allowed_cidrs"));
    }
    if wanted(Field::Owner) {
        p.owner = f("owner").trim().to_owned();
    }
    if wanted(Field::NotBefore) {
        p.not_before = ff::utc_time("not_before", f("not_before"))?;
    }
    if wanted(Field::ExpiresAt) {
        p.expires_at = ff::utc_time("expires_at", f("expires_at"))?;
    }
    if wanted(Field::MaxAge) {
        p.max_age = ff::duration("max_age", f("max_age"))?;
    }
    if wanted(Field::RateLimit) {
        p.rate_limit = ff::rate_limit(f("rate_limit"), f("rate_window"))?;
    }
    if wanted(Field::Remaining) {
        p.remaining = ff::count("remaining", f("remaining"))?;
    }
    if wanted(Field::Refill) {
        p.refill = ff::refill(f("refill_amount"), f("refill_interval"))?;
    }
    if wanted(Field::AnomalyAction) {
        p.anomaly_action = ff::anomaly_action(f("anomaly_action"))?;
    }
    if wanted(Field::Metadata) {
        p.metadata = ff::metadata(f("metadata"))?;
    }
    Ok(p)
}

/// The actions on one key, from the key page's forms.
pub async fn act<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, id: &str, action: &str) -> Response<Body> {
    let keys = &ctx.console.services.keys;
    let f = |name| ctx.req.field(name);
    let done = match action {
        "update" => match patch(ctx.req) {
            // Nothing changed: nothing to write.
            Ok(patch) if patch.mask.is_empty() => Ok(()),
            Ok(patch) => keys.update(&ctx.caller, id, patch, &ctx.rctx).await.map(|_| ()),
            Err(e) => Err(e),
        },
        "disable" => keys.disable(&ctx.caller, id, f("reason").trim(), &ctx.rctx).await.map(|_| ()),
        "enable" => keys.enable(&ctx.caller, id, &ctx.rctx).await.map(|_| ()),
        "revoke" => keys.revoke(&ctx.caller, id, f("reason").trim(), &ctx.rctx).await.map(|_| ()),
        "rotate" => {
            let rotated = match ff::duration("grace_period", f("grace")) {
                Ok(grace) => keys.rotate(&ctx.caller, id, grace, &ctx.rctx).await,
                Err(e) => Err(e),
            };
            return match rotated {
                Ok(r) => {
                    tracing::info!(key_id = %r.previous.id, new_key_id = %r.record.id, actor = %ctx.caller.key_id, "key rotated (console)");
                    let signing = r.signing_secret.as_ref().map(signing_text);
                    let page = rotated_page(&r.key, &r.record, &r.previous, signing.as_ref());
                    ctx.page(StatusCode::OK, "Key rotated", Nav::Keys, page)
                }
                Err(e) => ctx.fail(e, Nav::Keys),
            };
        }
        _ => {
            return ctx.page(
                StatusCode::NOT_FOUND,
                "Not found",
                Nav::Keys,
                view::error_box(StatusCode::NOT_FOUND, "no such action"),
            );
        }
    };
    match done {
        Ok(()) => {
            tracing::info!(key_id = %id, action, actor = %ctx.caller.key_id, "key changed (console)");
            web::redirect(&format!("/keys/{id}"))
        }
        // The update form again, as sent, with the error beside it.
        Err(e @ Error::InvalidArgument { .. }) if action == "update" => {
            key_page::detail_with(ctx, id, status_of(&e), Some(&e))
        }
        Err(e) => ctx.fail(e, Nav::Keys),
    }
}

fn rotated_page(key: &KeyString, record: &KeyRecord, previous: &KeyRecord, signing: Option<&KeyString>) -> Markup {
    html! {
        (shown_once("Key rotated", key, record, signing))
        p {
            "The old key " a href={ "/keys/" (previous.id) } { (previous.id) } " keeps verifying until "
            (opt_time(previous.rotation_deadline)) "."
        }
    }
}

/// The update form, filled with the key's current values; with `refused`, with the values as
/// they were sent (and still compared with the values first shown), the error beside them.
pub fn update_form(csrf: &str, k: &KeyRecord, refused: Option<(&Req, &Error)>) -> Markup {
    let cidrs = k.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
    let rate = k.rate_limit;
    let refill = k.quota.and_then(|q| q.refill);
    let current = |name: &str| -> String {
        match name {
            "name" => k.name.clone(),
            "scopes" => k.scopes.join(" "),
            "allowed_cidrs" => cidrs.clone(),
            "owner" => k.owner.clone().unwrap_or_default(),
            "not_before" => ff::time_value(k.not_before),
            "expires_at" => ff::time_value(k.expires_at),
            "max_age" => ff::duration_value(k.max_age),
            "rate_limit" => rate.map(|r| r.limit.to_string()).unwrap_or_default(),
            "rate_window" => ff::duration_value(rate.map(|r| r.window)),
            "remaining" => k.quota.map(|q| q.remaining.to_string()).unwrap_or_default(),
            "refill_amount" => refill.map(|r| r.amount.to_string()).unwrap_or_default(),
            "refill_interval" => ff::duration_value(refill.map(|r| r.interval)),
            "anomaly_action" => k.anomaly_action.to_string(),
            "metadata" => ff::metadata_text(&k.metadata),
            _ => String::new(),
        }
    };
    // What a field shows, and the value it was first shown with.
    let value = |name: &str| refused.map_or_else(|| current(name), |(req, _)| req.field(name).to_owned());
    let shown = |name: &str| refused.map_or_else(|| current(name), |(req, _)| req.field(&was(name)).to_owned());
    let bad_inputs = match refused {
        Some((_, Error::InvalidArgument { field, .. })) => ff::inputs_of(field),
        _ => &[],
    };
    let input = |id: &str, name: &str, kind: &str| {
        let bad = bad_inputs.contains(&name);
        html! {
            input id=(id) type=(kind) name=(name) value=(value(name)) required[name == "name"]
                step=[(kind == "datetime-local").then_some("1")] min=[(kind == "number").then_some("0")]
                aria-invalid=[bad.then_some("true")] aria-describedby=[bad.then_some("update-problem")];
            input type="hidden" name=(was(name)) value=(shown(name));
        }
    };
    let anomaly = value("anomaly_action");
    html! {
        form.card.update method="post" action={ "/keys/" (k.id) "/update" } data-confirm="Save these changes to the key?" {
            h3 { "Update" }
            p.muted { "Only the fields you change are saved." }
            @if let Some((_, e)) = refused { p.alert #update-problem role="alert" { (e) } }
            (csrf_field(csrf))
            label for="u-name" { "Name" } (input("u-name", "name", "text"))
            label for="u-scopes" { "Scopes" } (input("u-scopes", "scopes", "text"))
            label for="u-cidrs" { "Allowed networks" } (input("u-cidrs", "allowed_cidrs", "text"))
            label for="u-owner" { "Owner (team)" } (input("u-owner", "owner", "text"))
            fieldset {
                legend { "Validity (UTC; empty: none)" }
                label for="u-not-before" { "Not before" } (input("u-not-before", "not_before", "datetime-local"))
                label for="u-expires" { "Expires at" } (input("u-expires", "expires_at", "datetime-local"))
                label for="u-max-age" { "Maximum age " span.muted { "(e.g. 90d)" } } (input("u-max-age", "max_age", "text"))
            }
            fieldset {
                legend { "Rate limit (empty: none)" }
                label for="u-rate" { "Verifications" } (input("u-rate", "rate_limit", "number"))
                label for="u-window" { "per" } (input("u-window", "rate_window", "text"))
            }
            fieldset {
                legend { "Quota (empty: unlimited)" }
                label for="u-remaining" { "Remaining uses" } (input("u-remaining", "remaining", "number"))
                label for="u-refill" { "Refill with" } (input("u-refill", "refill_amount", "number"))
                label for="u-refill-every" { "every" } (input("u-refill-every", "refill_interval", "text"))
            }
            label for="u-anomaly" { "On anomalies" }
            select #u-anomaly name="anomaly_action" {
                @for a in [AnomalyAction::Alert, AnomalyAction::Disable] {
                    option value=(a.to_string()) selected[a.to_string() == anomaly] { (a.to_string()) }
                }
            }
            input type="hidden" name=(was("anomaly_action")) value=(shown("anomaly_action"));
            label for="u-metadata" { "Metadata " span.muted { "(one key=value a line)" } }
            textarea #u-metadata name="metadata" rows="3" { (value("metadata")) }
            input type="hidden" name=(was("metadata")) value=(shown("metadata"));
            button type="submit" { "Save" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(pairs: &[(&'static str, &'static str)]) -> Vec<String> {
        changed(|name: &str| pairs.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| *v))
    }

    #[test]
    fn the_mask_names_only_the_groups_whose_fields_changed() {
        let unchanged = [
            ("name", "svc"),
            ("was_name", "svc"),
            ("scopes", "a:read,  b:write"),
            ("was_scopes", "a:read b:write"),
            ("expires_at", "2026-12-31T23:59"),
            ("was_expires_at", "2026-12-31T23:59:00"),
            ("metadata", "team=x\r\n"),
            ("was_metadata", "team=x"),
            ("remaining", "5"),
            ("was_remaining", "5"),
        ];
        assert!(mask_of(&unchanged).is_empty(), "{:?}", mask_of(&unchanged));
        let changed = [
            ("remaining", "2"),
            ("was_remaining", "5"),
            ("refill_interval", "1d"),
            ("name", "svc"),
            ("was_name", "svc"),
        ];
        assert_eq!(mask_of(&changed), ["remaining", "refill"]);
        let cleared = [("expires_at", ""), ("was_expires_at", "2026-12-31T23:59:00")];
        assert_eq!(mask_of(&cleared), ["expires_at"]);
    }
}
