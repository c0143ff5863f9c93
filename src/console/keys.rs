//! The keys list (filters, paging, sorting within the page), a ListKeys call with the
//! signed-in key as the caller. The key page itself is `key_page`; the create form is
//! `key_forms`, the actions on one key `key_actions`.

use std::time::SystemTime;

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    routes::Ctx,
    view::{Nav, opt_time, parse_state, short_id, state_badge, state_name, time},
    web::{Body, query_string},
};
use crate::domain::{
    error::Error,
    key::KeyRecord,
    listing::ListFilter,
    policy,
    ports::{Hsm, Store},
};

pub use super::key_page::detail;

/// ListKeys calls one page may make to fill itself with a narrow filter (each reads at most
/// `listing::MAX_SCAN` records).
const MAX_LIST_CALLS: usize = 3;

/// The list's filters as the query string gives them.
struct Filters<'a> {
    state: &'a str,
    prefix: &'a str,
    owner: &'a str,
    scope: &'a str,
    name: &'a str,
    sort: &'a str,
    dir: &'a str,
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
        }
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
        let dir = if self.sort == column && self.dir != "desc" { "desc" } else { "asc" };
        let mut pairs = self.pairs();
        pairs.push(("sort", column));
        pairs.push(("dir", dir));
        format!("/keys?{}", query_string(&pairs))
    }

    fn aria_sort(&self, column: &str) -> &'static str {
        match (self.sort == column, self.dir) {
            (false, _) => "none",
            (true, "desc") => "descending",
            (true, _) => "ascending",
        }
    }
}

pub fn list<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let filters = Filters::of(ctx);
    let filter = match filters.domain() {
        Ok(f) => f,
        Err(e) => {
            return ctx.page(
                StatusCode::BAD_REQUEST,
                "Keys",
                Nav::Keys,
                list_page(ctx, &filters, Some(&e.to_string()), &[], None),
            );
        }
    };
    let size = ctx.console.settings.page_size as usize;
    let mut token = ctx.req.query("after").to_owned();
    let mut keys = Vec::new();
    let mut next = None;
    for _ in 0..MAX_LIST_CALLS {
        let want = (size - keys.len()) as i32;
        match ctx.console.services.keys.list(&ctx.caller, &filter, want, &token) {
            Ok((page, more)) => {
                keys.extend(page);
                next = more;
            }
            Err(e) => return ctx.fail(e, Nav::Keys),
        }
        match &next {
            Some(t) if keys.len() < size => token = t.clone(),
            _ => break,
        }
    }
    sort(&mut keys, filters.sort, filters.dir == "desc");
    ctx.page(StatusCode::OK, "Keys", Nav::Keys, list_page(ctx, &filters, None, &keys, next.as_deref()))
}

fn sort(keys: &mut [KeyRecord], column: &str, desc: bool) {
    match column {
        "name" => keys.sort_by_cached_key(|k| k.name.to_lowercase()),
        "state" => keys.sort_by_key(|k| state_name(k.state)),
        "owner" => keys.sort_by(|a, b| a.owner.cmp(&b.owner)),
        "last_used" => keys.sort_by_key(|k| k.usage.last_used_at),
        _ => keys.sort_by_key(|k| k.created_at),
    }
    if desc {
        keys.reverse();
    }
}

fn list_page<H: Hsm, S: Store>(
    ctx: &Ctx<'_, H, S>,
    f: &Filters<'_>,
    problem: Option<&str>,
    keys: &[KeyRecord],
    next: Option<&str>,
) -> Markup {
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
        p.muted { "Keys are listed oldest first, " (ctx.console.settings.page_size) " per page; sorting applies to the page shown." }
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
            @if !ctx.req.query("after").is_empty() { a href={ "/keys?" (query_string(&f.pairs())) } { "First page" } }
            @if let Some(next) = next {
                a rel="next" href={ "/keys?" (query_string(&[f.pairs(), vec![("after", next)]].concat())) } { "Next page" }
            }
        }
    }
}
