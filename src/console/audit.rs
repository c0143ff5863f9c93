//! The audit page: the event stream newest first with filters and paging (QueryEvents), the
//! chain's head (the latest checkpoint) and its verification (VerifyChain): over the latest
//! events on every load; over the whole trail in the background on request (`chain_check`),
//! the page showing its progress and last result.

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    routes::Ctx,
    view::{Nav, csrf_field, short_id, time},
    web::{self, Body, query_string},
};
use crate::domain::{
    audit::{Actor, AuditAction, AuditQuery, ChainReport, RecordedEvent},
    error::Error,
    key::KeyId,
    ports::{Hsm, Store},
};

/// Events the chain check covers on every load of the page (the whole trail on request).
const RECENT_CHECK: u64 = 1000;

struct Filters<'a> {
    action: &'a str,
    key: &'a str,
    actor: &'a str,
    code: &'a str,
}

impl<'a> Filters<'a> {
    fn domain(&self) -> Result<AuditQuery, Error> {
        let id = |field: &'static str, text: &str| -> Result<Option<KeyId>, Error> {
            match text {
                "" => Ok(None),
                t => t.parse().map(Some).map_err(|_| Error::invalid(field, "must be a key id (a UUID)")),
            }
        };
        let action = match self.action {
            "" => None,
            a => Some(AuditAction::parse(a).ok_or_else(|| Error::invalid("action", "is not an audit action"))?),
        };
        Ok(AuditQuery {
            key: id("key", self.key)?,
            actor: id("actor", self.actor)?.map(Actor::Key),
            action,
            code: (!self.code.is_empty()).then(|| self.code.to_owned()),
            newest_first: true,
            ..Default::default()
        })
    }

    fn pairs(&self) -> Vec<(&'static str, &'a str)> {
        vec![("action", self.action), ("key", self.key), ("actor", self.actor), ("code", self.code)]
    }
}

pub async fn page<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let q = |n| ctx.req.query(n);
    let f = Filters { action: q("action"), key: q("key"), actor: q("actor"), code: q("code") };
    let reader = &ctx.console.services.audit;
    let (events, next, problem) = match f.domain() {
        Ok(query) => {
            match reader.query_events(&ctx.caller, &query, ctx.console.settings.page_size as i32, q("after")) {
                Ok((events, next)) => (events, next, None),
                Err(e @ Error::InvalidArgument { .. }) => (Vec::new(), None, Some(e.to_string())),
                Err(e) => return ctx.fail(e, Nav::Audit),
            }
        }
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    let head = match reader.checkpoint(&ctx.caller) {
        Ok(head) => head,
        Err(e) => return ctx.fail(e, Nav::Audit),
    };
    let from = match &head {
        Some(h) if h.seq > RECENT_CHECK => h.seq - RECENT_CHECK + 1,
        _ => 0,
    };
    let report = match reader.verify_chain(&ctx.caller, from, 0).await {
        Ok(r) => r,
        Err(e) => return ctx.fail(e, Nav::Audit),
    };
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let content = html! {
        h1 { "Audit" }
        (chain(ctx, head.as_ref(), &report))
        h2 { "Events" }
        form.filters method="get" action="/audit" role="search" aria-label="Filter events" {
            label { "Action"
                select name="action" {
                    option value="" selected[f.action.is_empty()] { "any" }
                    @for a in AuditAction::ALL { option value=(a.as_str()) selected[f.action == a.as_str()] { (a.as_str()) } }
                }
            }
            label { "Key id" input type="text" name="key" value=(f.key) size="36"; }
            label { "Actor key id" input type="text" name="actor" value=(f.actor) size="36"; }
            label { "Code" input type="text" name="code" value=(f.code) size="16"; }
            button type="submit" { "Filter" }
            a href="/audit" { "Clear" }
        }
        @if let Some(problem) = &problem { p.alert role="alert" { (problem) } }
        (events_table(&events))
        nav.pager aria-label="Pages" {
            @if !q("after").is_empty() { a href={ "/audit?" (query_string(&f.pairs())) } { "Newest" } }
            @if let Some(next) = &next {
                a rel="next" href={ "/audit?" (query_string(&[f.pairs(), vec![("after", next.as_str())]].concat())) } { "Older events" }
            }
        }
    };
    ctx.page(status, "Audit", Nav::Audit, content)
}

/// Starts the whole-chain check in the background (unless one runs) and goes back to the
/// audit page, which shows its progress.
pub fn start_whole_check<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let reader = &ctx.console.services.audit;
    let head = match reader.checkpoint(&ctx.caller) {
        Ok(head) => head.map_or(0, |h| h.seq),
        Err(e) => return ctx.fail(e, Nav::Audit),
    };
    ctx.console.chain_check.start(reader.clone(), ctx.caller.clone(), head);
    web::redirect("/audit")
}

fn report_text(report: &ChainReport, span: &str) -> Markup {
    html! {
        "Intact: " (report.checked) " events of " (span) " checked (seq " (report.first) "–" (report.last) ")"
        @if report.unsealed > 0 { ", " (report.unsealed) " from before the chain (not checkable)" } "."
    }
}

fn chain<H, S>(ctx: &Ctx<'_, H, S>, head: Option<&RecordedEvent>, report: &ChainReport) -> Markup {
    let (running, last) = ctx.console.chain_check.snapshot();
    html! {
        section.card.chain aria-labelledby="h-chain" {
            h2 #h-chain { "Chain" }
            @match &report.broken {
                None => p #chain-status .ok role="status" { (report_text(report, "the latest events")) },
                Some((seq, why)) => p #chain-status .alert role="alert" { "Broken at event " (seq) ": " (why) },
            }
            @if let Some(h) = head {
                p { "Latest checkpoint: event " strong #checkpoint-seq { (h.seq) } " at " (time(h.event.at))
                    @if let Some(mac) = &h.mac { ", MAC " code { (hex(&mac[..8])) "…" } } "." }
            }
            @if let Some(p) = &running {
                p #whole-chain role="status" data-refresh="2" {
                    "Checking the whole chain: events up to " (p.checked_to) " of " (p.head) " checked so far (started "
                    (time(p.started_at)) " by key " code { (short_id(&p.by.to_string())) } "). "
                    a href="/audit" { "Refresh" }
                }
            } @else if let Some(o) = &last {
                @let when = html! { " (checked " (time(o.started_at)) " in " (format!("{:.1}", o.took.as_secs_f64())) " s, by key " code { (short_id(&o.by.to_string())) } ")" };
                @match &o.result {
                    Ok(r) if r.broken.is_none() => p #whole-chain .ok role="status" { "Whole chain " (report_text(r, "the whole trail")) (when) },
                    Ok(r) => p #whole-chain .alert role="alert" {
                        @if let Some((seq, why)) = &r.broken { "Whole chain broken at event " (seq) ": " (why) (when) }
                    },
                    Err(why) => p #whole-chain .alert role="alert" { "The whole-chain check could not finish: " (why) (when) },
                }
            }
            @if running.is_none() {
                form.inline method="post" action="/audit/verify" {
                    (csrf_field(&ctx.session.csrf))
                    button type="submit" { "Verify the whole chain" }
                    " " span.muted { "(in the background: every event is read and the HSM checks each MAC)" }
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn events_table(events: &[RecordedEvent]) -> Markup {
    html! {
        div.scroll {
            table.events {
                thead { tr {
                    th scope="col" { "Seq" } th scope="col" { "Time" } th scope="col" { "Action" }
                    th scope="col" { "Actor" } th scope="col" { "Key" } th scope="col" { "Client" } th scope="col" { "Details" }
                } }
                tbody {
                    @for e in events {
                        tr {
                            td { (e.seq) }
                            td { (time(e.event.at)) }
                            td.action { (e.event.action.as_str()) }
                            td { @match &e.event.actor {
                                Actor::Key(id) => a.actor href={ "/keys/" (id) } title=(id) { code { (id) } },
                                Actor::System(name) => span { "system:" (name) },
                            } }
                            td { @if let Some(t) = e.event.target { a href={ "/keys/" (t) } title=(t) { code { (short_id(&t.to_string())) } } } }
                            td { (e.event.client_addr.as_deref().unwrap_or("")) }
                            td {
                                @if let Some(code) = &e.event.code { code { (code) } " " }
                                @if let Some(reason) = &e.event.reason { (reason) }
                                @for c in &e.event.changes { div.change { (c.field) ": " (c.before) " → " (c.after) } }
                            }
                        }
                    }
                    @if events.is_empty() { tr { td colspan="7" { "No events match." } } }
                }
            }
        }
    }
}
