//! The master key page: its versions, the re-digest migration's progress and the HSM's
//! health, with the key counts (GetMasterStatus, counted from the in-memory key index).

use http::{Response, StatusCode};
use maud::html;

use super::{
    routes::Ctx,
    view::{Nav, opt_time, time},
    web::Body,
};
use crate::domain::{
    ports::{Hsm, Store},
    signing::WrapKeyVersion,
};

pub fn page<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let status = match ctx.console.services.master.master_status(&ctx.caller, true) {
        Ok(s) => s,
        Err(e) => return ctx.fail(e, Nav::Master),
    };
    let healthy = ctx.console.services.auth.is_healthy();
    let state = &status.state;
    let content = html! {
        h1 { "Master key" }
        div.cards {
            section.card aria-labelledby="h-hsm" {
                h2 #h-hsm { "HSM" }
                @if healthy {
                    p #hsm-health .ok role="status" { "Healthy: the HSM answers and holds the master key." }
                } @else {
                    p #hsm-health .alert role="alert" { "Unreachable: calls that need the HSM answer UNAVAILABLE until it is back." }
                }
            }
            section.card aria-labelledby="h-migration" {
                h2 #h-migration { "Migration" }
                @match &state.migration {
                    None => p #migration { "No re-digest under way: every key's digest is made under the current version or moves on its next use." },
                    Some(m) => p #migration {
                        "Re-digesting to version " (m.to) " since " (time(m.started_at)) ": " strong { (m.wrapped) } " keys done"
                        " of about " (m.wrapped + status.keys_pending) "."
                    },
                }
                p #pending { (status.keys_pending) " live keys not yet under the current version; "
                    (status.keys_not_plain) " not yet plain under it." }
            }
        }
        h2 { "Versions" }
        div.scroll {
            table.versions {
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "Created" } th scope="col" { "State" }
                    th scope="col" { "Keys using it" } th scope="col" { "Signing secrets" }
                } }
                tbody {
                    @for v in state.versions.iter().rev() {
                        tr {
                            td { (v.version) }
                            td { (time(v.created_at)) }
                            td {
                                @if v.version == state.current { span.badge.active { "current" } }
                                @else if v.retired_at.is_some() { span.badge.revoked { "retired " } (opt_time(v.retired_at)) }
                                @else { span.badge { "live" } }
                            }
                            td { (status.keys_using.get(&v.version).copied().unwrap_or(0)) }
                            td { (status.secrets_using.get(&WrapKeyVersion(v.version.0)).copied().unwrap_or(0)) }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, "Master key", Nav::Master, content)
}
