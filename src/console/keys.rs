//! The keys pages and actions: the list (filters, sorting across every matching key, paging
//! forward and back, through `KeyAdmin::browse`), the
//! create form, and the actions on one key (update, rotate, disable, enable, revoke), each
//! a KeyAdmin call with the signed-in key as the caller. The key page itself is `key_page`.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    routes::Ctx,
    view::{self, Nav, csrf_field, opt_time, parse_state, short_id, state_badge, time},
    web::{self, Body, query_string},
};
use crate::domain::{
    error::Error,
    key::{KeyRecord, RateLimit},
    key_index::SortBy,
    keys::{KeyPage, NewKey, Window},
    listing::ListFilter,
    policy,
    ports::{Hsm, Store},
    secret::KeyString,
    update::KeyPatch,
};

pub use super::key_page::detail;

/// The list's filters as the query string gives them.
struct Filters<'a> {
    state: &'a str,
    prefix: &'a str,
    owner: &'a str,
    scope: &'a str,
    name: &'a str,
    sort: &'a str,
    dir: &'a str,
    page: &'a str,
}

impl<'a> Filters<'a> {
    fn of<H, S>(ctx: &'a Ctx<'_, H, S>) -> Self {
        let q = |n| ctx.req.query(n);
        Self {
            state: q("state"),
            prefix: q("prefix"),
            owner: q("owner"),
            scope: q("scope"),
            name: q("name"),
            sort: q("sort"),
            dir: q("dir"),
            page: q("page"),
        }
    }

    /// The sort and the page (1-based) asked for.
    fn window<H, S>(&self, ctx: &Ctx<'_, H, S>) -> Result<Window, Error> {
        let sort = match self.sort {
            "" | "created" => SortBy::Created,
            "name" => SortBy::Name,
            "state" => SortBy::State,
            "owner" => SortBy::Owner,
            "last_used" => SortBy::LastUsed,
            _ => return Err(Error::invalid("sort", "must be name, state, owner, created or last_used")),
        };
        let descending = match self.dir {
            "" | "asc" => false,
            "desc" => true,
            _ => return Err(Error::invalid("dir", "must be asc or desc")),
        };
        let page = match self.page {
            "" => 1,
            p => p
                .parse::<usize>()
                .ok()
                .filter(|p| (1..=1_000_000).contains(p))
                .ok_or_else(|| Error::invalid("page", "must be a page number from 1"))?,
        };
        let limit = ctx.console.settings.page_size as usize;
        Ok(Window { sort, descending, offset: (page - 1) * limit, limit })
    }

    /// The link to page `page` (1-based) with the same filters and sort.
    fn page_link(&self, page: usize) -> String {
        let page = page.to_string();
        let mut pairs = self.pairs();
        pairs.extend([("sort", self.sort), ("dir", self.dir)]);
        pairs.push(("page", page.as_str()));
        format!("/keys?{}", query_string(&pairs))
    }

    fn domain(&self) -> Result<ListFilter, Error> {
        let state = match self.state {
            "" => None,
            s => Some(
                parse_state(s)
                    .ok_or_else(|| Error::invalid("state", "must be active, disabled, revoked or rotated"))?,
            ),
        };
        ListFilter::new(state, self.prefix, self.name, self.scope)?.with_owner(self.owner)
    }

    fn pairs(&self) -> Vec<(&'static str, &'a str)> {
        vec![
            ("state", self.state),
            ("prefix", self.prefix),
            ("owner", self.owner),
            ("scope", self.scope),
            ("name", self.name),
        ]
    }

    /// The link that sorts by `column` (the other way when it is the current sort).
    fn sort_link(&self, column: &str) -> String {
        let current = self.sort == column || (self.sort.is_empty() && column == "created");
        let dir = if current && self.dir != "desc" { "desc" } else { "asc" };
        let mut pairs = self.pairs();
        pairs.push(("sort", column));
        pairs.push(("dir", dir));
        format!("/keys?{}", query_string(&pairs))
    }

    fn aria_sort(&self, column: &str) -> &'static str {
        let current = self.sort == column || (self.sort.is_empty() && column == "created");
        match (current, self.dir) {
            (false, _) => "none",
            (true, "desc") => "descending",
            (true, _) => "ascending",
        }
    }
}

pub fn list<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let filters = Filters::of(ctx);
    let bad = |e: &Error| {
        ctx.page(StatusCode::BAD_REQUEST, "Keys", Nav::Keys, list_page(ctx, &filters, Some(&e.to_string()), None))
    };
    let (filter, window) = match filters.domain().and_then(|f| Ok((f, filters.window(ctx)?))) {
        Ok(found) => found,
        Err(e) => return bad(&e),
    };
    match ctx.console.services.keys.browse(&ctx.caller, &filter, window) {
        Ok(page) => ctx.page(StatusCode::OK, "Keys", Nav::Keys, list_page(ctx, &filters, None, Some(&page))),
        Err(e @ Error::InvalidArgument { .. }) => bad(&e),
        Err(e) => ctx.fail(e, Nav::Keys),
    }
}

fn list_page<H: Hsm, S: Store>(
    ctx: &Ctx<'_, H, S>,
    f: &Filters<'_>,
    problem: Option<&str>,
    page: Option<&KeyPage>,
) -> Markup {
    let keys = page.map_or(&[][..], |p| p.keys.as_slice());
    let (total, offset) = page.map_or((0, 0), |p| (p.total, p.offset));
    let size = ctx.console.settings.page_size as usize;
    let number = offset / size + 1;
    let pages = total.div_ceil(size).max(1);
    let now = SystemTime::now();
    let rules = ctx.console.settings.rotation;
    let header = |column: &str, label: &str| {
        html! {
            th scope="col" aria-sort=(f.aria_sort(column)) { a href=(f.sort_link(column)) { (label) } }
        }
    };
    html! {
        div.heading {
            h1 { "Keys" }
            a.button href="/keys/new" { "Create key" }
        }
        form.filters method="get" action="/keys" role="search" aria-label="Filter keys" {
            label { "Name contains" input type="search" name="name" value=(f.name); }
            label { "State"
                select name="state" {
                    option value="" selected[f.state.is_empty()] { "any" }
                    @for s in ["active", "disabled", "revoked", "rotated"] {
                        option value=(s) selected[f.state == s] { (s) }
                    }
                }
            }
            label { "Prefix" input type="text" name="prefix" value=(f.prefix) size="8"; }
            label { "Owner (team)" input type="text" name="owner" value=(f.owner) size="10"; }
            label { "Grants scope" input type="text" name="scope" value=(f.scope) size="14"; }
            button type="submit" { "Filter" }
            a href="/keys" { "Clear" }
        }
        @if let Some(problem) = problem { p.alert role="alert" { (problem) } }
        p.muted #list-summary role="status" {
            @if total == 0 { "No keys match." }
            @else if keys.is_empty() { (total) " keys match; this page is past the last (" (pages) ")." }
            @else { "Keys " (offset + 1) "–" (offset + keys.len()) " of " (total) ", page " (number) " of " (pages) "." }
        }
        div.scroll {
            table.keys {
                caption.visually-hidden { "Keys matching the filters" }
                thead { tr {
                    (header("name", "Name"))
                    th scope="col" { "Key id" }
                    (header("state", "State"))
                    (header("owner", "Owner"))
                    th scope="col" { "Scopes" }
                    (header("created", "Created"))
                    (header("last_used", "Last used"))
                } }
                tbody {
                    @for k in keys {
                        @let notice = policy::rotation_notice(k, now, &rules);
                        tr {
                            td { a href={ "/keys/" (k.id) } { (k.name) } }
                            td { code title=(k.id) { "…" (short_id(&k.id.to_string())) } }
                            td {
                                (state_badge(k))
                                @if notice.due && k.state == crate::domain::key::KeyState::Active { " " span.badge.due { "rotation due" } }
                                @if notice.pending { " " span.badge.pending { "rotation pending" } }
                            }
                            td { (k.owner.as_deref().unwrap_or("—")) }
                            td.scopes { (k.scopes.join(" ")) }
                            td { (time(k.created_at)) }
                            td { (opt_time(k.usage.last_used_at)) }
                        }
                    }
                    @if keys.is_empty() { tr { td colspan="7" { "No keys match." } } }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if number > 1 {
                a href=(f.page_link(1)) { "First page" }
                a rel="prev" href=(f.page_link((number - 1).min(pages))) { "Previous page" }
            }
            @if number < pages { a rel="next" href=(f.page_link(number + 1)) { "Next page" } }
        }
    }
}

pub fn new_form<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    ctx.page(StatusCode::OK, "Create key", Nav::Keys, create_form(ctx, None))
}

fn create_form<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, problem: Option<&str>) -> Markup {
    let v = |name| ctx.req.field(name);
    html! {
        h1 { "Create a key" }
        @if let Some(problem) = problem { p.alert role="alert" { (problem) } }
        form.stack method="post" action="/keys" data-confirm="Create this key?" {
            (csrf_field(&ctx.session.csrf))
            label for="name" { "Name" }
            input #name type="text" name="name" required value=(v("name"));
            label for="scopes" { "Scopes " span.muted { "(separated by spaces or commas)" } }
            input #scopes type="text" name="scopes" value=(v("scopes")) placeholder="orders:read orders:write";
            label for="owner" { "Owner (team) " span.muted { "(optional; a team admin must name one of its teams)" } }
            input #owner type="text" name="owner" value=(v("owner"));
            label for="prefix" { "Prefix " span.muted { "(optional)" } }
            input #prefix type="text" name="prefix" value=(v("prefix")) placeholder="kw";
            label for="expires_in" { "Expires in " span.muted { "(optional, e.g. 90d)" } }
            input #expires_in type="text" name="expires_in" value=(v("expires_in"));
            label for="allowed_cidrs" { "Allowed networks " span.muted { "(optional CIDRs)" } }
            input #allowed_cidrs type="text" name="allowed_cidrs" value=(v("allowed_cidrs"));
            label for="metadata" { "Metadata " span.muted { "(optional, one key=value a line)" } }
            textarea #metadata name="metadata" rows="3" { (v("metadata")) }
            button type="submit" { "Create key" }
        }
    }
}

/// Words separated by spaces or commas.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

fn metadata(text: &str) -> Result<BTreeMap<String, String>, Error> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Error::invalid("metadata", "write one key=value a line"))
        })
        .collect()
}

fn duration(field: &'static str, text: &str) -> Result<Option<Duration>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(text).map(Some).map_err(|e| Error::invalid(field, format!("{text:?}: {e}")))
}

pub async fn create<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let new = match new_key(ctx) {
        Ok(new) => new,
        Err(e) => {
            return ctx.page(StatusCode::BAD_REQUEST, "Create key", Nav::Keys, create_form(ctx, Some(&e.to_string())));
        }
    };
    match ctx.console.services.keys.create(&ctx.caller, new, &ctx.rctx).await {
        Ok(created) => {
            tracing::info!(key_id = %created.record.id, actor = %ctx.caller.key_id, "key created (console)");
            ctx.page(
                StatusCode::OK,
                "Key created",
                Nav::Keys,
                shown_once("Key created", &created.key, &created.record, None),
            )
        }
        Err(e @ (Error::InvalidArgument { .. } | Error::PermissionDenied(_))) => {
            ctx.page(status_for(&e), "Create key", Nav::Keys, create_form(ctx, Some(&e.to_string())))
        }
        Err(e) => ctx.fail(e, Nav::Keys),
    }
}

fn status_for(e: &Error) -> StatusCode {
    super::routes::status_of(e)
}

fn new_key<H, S>(ctx: &Ctx<'_, H, S>) -> Result<NewKey, Error> {
    let f = |name| ctx.req.field(name);
    let expires_at = duration("expires_in", f("expires_in"))?.map(|d| SystemTime::now() + d);
    Ok(NewKey {
        name: f("name").trim().to_owned(),
        prefix: f("prefix").trim().to_owned(),
        scopes: words(f("scopes")),
        owner: f("owner").trim().to_owned(),
        expires_at,
        allowed_cidrs: words(f("allowed_cidrs")),
        metadata: metadata(f("metadata"))?,
        ..Default::default()
    })
}

/// The page that shows a new key, once (a signing key: its signing secret, base64, instead:
/// it is never presented as a bearer key).
fn shown_once(title: &str, key: &KeyString, record: &KeyRecord, signing: Option<&KeyString>) -> Markup {
    let (label, shown) = match signing {
        Some(secret) => ("The new signing secret (base64)", secret),
        None => ("The new key", key),
    };
    html! {
        h1 { (title) }
        section.once {
            p.warning role="alert" {
                strong { "Copy this now. " }
                "keyward keeps only a digest of the key: it will not be shown again."
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

/// The actions on one key, from the key page's forms.
pub async fn act<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>, id: &str, action: &str) -> Response<Body> {
    let keys = &ctx.console.services.keys;
    let f = |name| ctx.req.field(name);
    let done = match action {
        "update" => match patch(ctx) {
            Ok(patch) => keys.update(&ctx.caller, id, patch, &ctx.rctx).await.map(|_| ()),
            Err(e) => Err(e),
        },
        "disable" => keys.disable(&ctx.caller, id, f("reason").trim(), &ctx.rctx).await.map(|_| ()),
        "enable" => keys.enable(&ctx.caller, id, &ctx.rctx).await.map(|_| ()),
        "revoke" => keys.revoke(&ctx.caller, id, f("reason").trim(), &ctx.rctx).await.map(|_| ()),
        "rotate" => {
            let rotated = match duration("grace_period", f("grace")) {
                Ok(grace) => keys.rotate(&ctx.caller, id, grace, &ctx.rctx).await,
                Err(e) => Err(e),
            };
            return match rotated {
                Ok(r) => {
                    tracing::info!(key_id = %r.previous.id, new_key_id = %r.record.id, actor = %ctx.caller.key_id, "key rotated (console)");
                    let signing = r
                        .signing_secret
                        .as_ref()
                        .map(|s| KeyString::new(base64::engine::general_purpose::STANDARD.encode(s.expose())));
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

/// The update form's fields: name, scopes, allowed networks, owner and rate limit, all set
/// (a field left as it was changes nothing).
fn patch<H, S>(ctx: &Ctx<'_, H, S>) -> Result<KeyPatch, Error> {
    let f = |name| ctx.req.field(name);
    let rate_limit = match (f("rate_limit").trim(), f("rate_window").trim()) {
        ("", "") => None,
        (limit, window) => Some(RateLimit {
            limit: limit.parse().map_err(|_| Error::invalid("rate_limit", "must be a whole number"))?,
            window: duration("rate_limit", window)?
                .ok_or_else(|| Error::invalid("rate_limit", "needs a window, e.g. 1m"))?,
        }),
    };
    let mask = ["name", "scopes", "allowed_cidrs", "owner", "rate_limit"];
    Ok(KeyPatch {
        mask: mask.iter().map(|s| s.to_string()).collect(),
        name: f("name").trim().to_owned(),
        scopes: words(f("scopes")),
        allowed_cidrs: words(f("allowed_cidrs")),
        owner: f("owner").trim().to_owned(),
        rate_limit,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_text_becomes_lists_maps_and_durations() {
        assert_eq!(words(" a:read, b:write  c "), ["a:read", "b:write", "c"]);
        assert!(words("  ").is_empty());
        let m = metadata("team = billing\n\nenv=prod\n").unwrap();
        assert_eq!(m.get("team").map(String::as_str), Some("billing"));
        assert_eq!(m.len(), 2);
        assert!(matches!(metadata("no equals"), Err(Error::InvalidArgument { field: "metadata", .. })));
        assert_eq!(duration("x", "1h").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(duration("x", " ").unwrap(), None);
        assert!(matches!(duration("grace_period", "soon"), Err(Error::InvalidArgument { field: "grace_period", .. })));
    }
}
