//! The keys list: filters, sorting across every matching key and paging forward and back
//! (`KeyAdmin::browse`, with the signed-in key as the caller). The key page itself is
//! `key_page`; the create form is `key_forms`, the actions on one key `key_actions`.

use std::time::SystemTime;

use http::{Response, StatusCode};
use maud::{Markup, html};

use super::{
    routes::Ctx,
    view::{Nav, opt_time, parse_state, short_id, state_badge, time},
    web::{Body, query_string},
};
use crate::domain::{
    error::Error,
    key_index::SortBy,
    keys::{KeyPage, Window},
    listing::ListFilter,
    policy,
    ports::{Hsm, Store},
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
