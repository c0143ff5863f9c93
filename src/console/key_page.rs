//! One key's page: its policies, scopes, owner, metadata, rotation links, last use, its usage
//! over time (KeyUsage per hour or day) and top client addresses; with `keyward:audit:read`,
//! its audit events; its recent anomalies; and the forms of the actions on it.

use std::time::SystemTime;

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    audit::events_table,
    chart::{self, Bucket, Span},
    key_actions::update_form,
    routes::Ctx,
    view::{Nav, csrf_field, needs, opt_time, state_badge, time},
    web::Body,
};
use crate::domain::{
    access::Permission,
    audit::{AuditQuery, RecordedEvent},
    error::Error,
    key::{KeyRecord, KeyState},
    policy,
    ports::{Hsm, Store},
    scope,
    usage_log::KeyUsage,
};

/// Client addresses shown, the busiest first.
const TOP_CLIENTS: usize = 10;
/// Audit events shown on a key's page.
const KEY_EVENTS: i32 = 20;

/// The key's usage from the usage log, for whoever may read the key.
struct Usage {
    span: Span,
    buckets: Vec<Bucket>,
    total: KeyUsage,
}

pub fn detail<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, id: &str) -> Response<Body> {
    detail_with(ctx, id, StatusCode::OK, None)
}

/// The key's page; with `refused`, the update form as it was sent, the domain's error beside it.
pub fn detail_with<H: Hsm, S: Store>(
    ctx: &Ctx<'_, H, S>,
    id: &str,
    status: StatusCode,
    refused: Option<&Error>,
) -> Response<Body> {
    let services = &ctx.console.services;
    let record = match services.keys.get(&ctx.caller, id) {
        Ok(r) => r,
        Err(e) => return ctx.fail(e, Nav::Keys),
    };
    let span = Span::parse(ctx.req.query("range"));
    let ranges = span.ranges(SystemTime::now());
    let since = ranges.first().map(|r| r.0);
    let read_usage = || -> Result<Usage, Error> {
        let mut buckets = Vec::with_capacity(ranges.len());
        for (start, end) in &ranges {
            let usage = services.audit.key_usage(&ctx.caller, record.id, Some(*start), Some(*end))?;
            buckets.push(Bucket::of(*start, &usage));
        }
        let total = services.audit.key_usage(&ctx.caller, record.id, since, None)?;
        Ok(Usage { span, buckets, total })
    };
    let usage = match read_usage() {
        Ok(u) => u,
        Err(e) => return ctx.fail(e, Nav::Keys),
    };
    let events = if scope::any_grants(&ctx.caller.scopes, Permission::AuditRead.scope()) {
        let query = AuditQuery { key: Some(record.id), newest_first: true, ..Default::default() };
        match services.audit.query_events(&ctx.caller, &query, KEY_EVENTS, "") {
            Ok((events, _)) => Some(events),
            Err(e) => return ctx.fail(e, Nav::Keys),
        }
    } else {
        None
    };
    let title = format!("Key {}", record.name);
    ctx.page(status, &title, Nav::Keys, page(ctx, &record, &usage, events.as_deref(), refused))
}

fn page<H: Hsm, S: Store>(
    ctx: &Ctx<'_, H, S>,
    k: &KeyRecord,
    usage: &Usage,
    events: Option<&[RecordedEvent]>,
    refused: Option<&Error>,
) -> Markup {
    let notice = policy::rotation_notice(k, SystemTime::now(), &ctx.console.settings.rotation);
    let link = |id: Option<crate::domain::key::KeyId>| {
        html! { @if let Some(id) = id { a href={ "/keys/" (id) } { code { (id) } } } @else { span.muted { "—" } } }
    };
    html! {
        div.heading {
            h1 { (k.name) " " (state_badge(k)) }
            a href="/keys" { "All keys" }
        }
        @if notice.due && k.state == KeyState::Active { p.note.due { "Rotation is due: the key reaches its maximum age at " (opt_time(k.rotate_by())) "." } }
        @if notice.pending { p.note.pending { "Rotated: this key verifies until " (opt_time(k.rotation_deadline)) "." } }
        div.cards {
            section.card aria-labelledby="h-key" {
                h2 #h-key { "Key" }
                dl {
                    dt { "Key id" } dd { code #key-id { (k.id) } }
                    dt { "Prefix" } dd { code { (k.prefix) } }
                    dt { "Kind" } dd { (if k.signing.is_some() { "signing" } else { "bearer" }) }
                    dt { "Owner" } dd { (k.owner.as_deref().unwrap_or("—")) }
                    dt { "Created" } dd { (time(k.created_at)) }
                    dt { "Created by" } dd { (link(k.created_by)) }
                    dt { "Last used" } dd { (opt_time(k.usage.last_used_at)) @if let Some(ip) = k.usage.last_used_ip { " from " code { (ip) } } }
                    dt { "Uses" } dd { (k.usage.valid_count) " valid, " (k.usage.rejected_count) " refused" }
                    dt { "Rotated from" } dd { (link(k.rotated_from)) }
                    dt { "Rotated to" } dd { (link(k.rotated_to)) }
                    @if let Some(reason) = &k.revoke_reason { dt { "Revoked" } dd { (opt_time(k.revoked_at)) ": " (reason) } }
                    @if let Some(reason) = &k.disable_reason { dt { "Disabled" } dd { (opt_time(k.disabled_at)) ": " (reason) } }
                }
            }
            section.card aria-labelledby="h-policy" {
                h2 #h-policy { "Scopes and policies" }
                dl {
                    dt { "Scopes" } dd.scopes { @for s in &k.scopes { code { (s) } " " } @if k.scopes.is_empty() { span.muted { "none" } } }
                    dt { "Expires" } dd { (opt_time(k.expires_at)) }
                    dt { "Not before" } dd { (opt_time(k.not_before)) }
                    dt { "Allowed networks" } dd { @if k.allowed_cidrs.is_empty() { "anywhere" } @else { @for c in &k.allowed_cidrs { code { (c) } " " } } }
                    dt { "Rate limit" } dd { @if let Some(r) = &k.rate_limit { (r) } @else { "none" } }
                    dt { "Quota" } dd { @if let Some(q) = &k.quota { (q.remaining) " left" @if let Some(r) = &q.refill { ", refilled " (r) } } @else { "none" } }
                    dt { "Maximum age" } dd { @if let Some(a) = k.max_age { (crate::domain::key::duration_text(a)) ", rotate by " (opt_time(k.rotate_by())) } @else { "none" } }
                    dt { "On anomalies" } dd { (k.anomaly_action) }
                }
                @if !k.metadata.is_empty() {
                    h3 { "Metadata" }
                    dl { @for (key, value) in &k.metadata { dt { (key) } dd { (value) } } }
                }
            }
        }
        @if !k.anomalies.is_empty() {
            section aria-labelledby="h-anomalies" {
                h2 #h-anomalies { "Recent anomalies" }
                ul { @for a in k.anomalies.iter().rev() { li { (time(a.at)) " " strong { (a.kind) } ": " (a.evidence) } } }
            }
        }
        section aria-labelledby="h-usage" {
            h2 #h-usage { "Usage" }
            nav.tabs aria-label="Chart span" {
                @for span in [Span::Day, Span::Month] {
                    @let label = if span == Span::Day { "Last 24 hours" } else { "Last 30 days" };
                    @if span == usage.span { a aria-current="true" href={ "/keys/" (k.id) "?range=" (span.param()) } { (label) } }
                    @else { a href={ "/keys/" (k.id) "?range=" (span.param()) } { (label) } }
                }
            }
            (chart::render(usage.span, &usage.buckets))
            (clients(&usage.total))
        }
        (actions(ctx, k, refused))
        section aria-labelledby="h-events" {
            h2 #h-events { "Audit events" }
            @match events {
                None => (needs("keyward:audit:read")),
                Some(events) => (events_table(events)),
            }
        }
    }
}

fn clients(usage: &KeyUsage) -> Markup {
    let mut top: Vec<_> = usage.by_client_ip.iter().collect();
    top.sort_by_key(|(_, (all, _))| std::cmp::Reverse(*all));
    html! {
        h3 { "Top client addresses" }
        @if top.is_empty() { p.muted { "No verifications in this span." } } @else {
            table.clients {
                thead { tr { th scope="col" { "Client address" } th scope="col" { "Verifications" } th scope="col" { "Valid" } } }
                tbody {
                    @for (ip, (all, valid)) in top.into_iter().take(TOP_CLIENTS) {
                        tr {
                            td { @if let Some(ip) = ip { code { (ip) } } @else { span.muted { "not reported" } } }
                            td { (all) } td { (valid) }
                        }
                    }
                }
            }
        }
    }
}

fn actions<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, k: &KeyRecord, refused: Option<&Error>) -> Markup {
    let csrf = &ctx.session.csrf;
    let action = |name: &str| format!("/keys/{}/{name}", k.id);
    html! {
        section.actions aria-labelledby="h-actions" {
            h2 #h-actions { "Actions" }
            @if k.state == KeyState::Revoked { p.muted { "A revoked key cannot change." } } @else {
                div.cards {
                    (update_form(csrf, k, refused.map(|e| (ctx.req, e))))
                    @if k.state != KeyState::Rotated {
                        form.card.rotate method="post" action=(action("rotate")) data-confirm="Rotate this key? A new key is made; this one keeps working for the grace period." {
                            h3 { "Rotate" }
                            (csrf_field(csrf))
                            label for="r-grace" { "Grace period for the old key " span.muted { "(e.g. 24h; empty: the default)" } }
                            input #r-grace type="text" name="grace";
                            button type="submit" { "Rotate" }
                        }
                    }
                    @if k.state == KeyState::Active {
                        form.card.disable method="post" action=(action("disable")) data-confirm="Disable this key? It stops verifying until enabled again." {
                            h3 { "Disable" }
                            (csrf_field(csrf))
                            label for="d-reason" { "Reason" } input #d-reason type="text" name="reason";
                            button type="submit" { "Disable" }
                        }
                    }
                    @if k.state == KeyState::Disabled {
                        form.card.enable method="post" action=(action("enable")) data-confirm="Enable this key again?" {
                            h3 { "Enable" }
                            (csrf_field(csrf))
                            button type="submit" { "Enable" }
                        }
                    }
                    form.card.revoke method="post" action=(action("revoke")) data-confirm="Revoke this key for good? This cannot be undone." {
                        h3 { "Revoke" }
                        (csrf_field(csrf))
                        label for="v-reason" { "Reason" } input #v-reason type="text" name="reason" required;
                        button.danger type="submit" { "Revoke" }
                    }
                }
            }
        }
    }
}
