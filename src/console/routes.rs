//! The router: static assets, sign-in and sign-out, and for everything else the signed-in
//! caller (its session, its key checked again through the Authenticator), the CSRF checks on
//! every POST, and the page or action asked for.

use std::{net::SocketAddr, time::Instant};

use http::{Method, Response, StatusCode, header};
use hyper::body::Incoming;
use maud::Markup;

use super::{
    Console, audit, key_actions, key_forms, keys, master,
    session::{Full, Session, same_token},
    view,
    web::{self, Body, Req},
};
use crate::domain::{
    access::{Caller, RequestContext},
    auth::ConsoleSession,
    error::Error,
    listing::ListFilter,
    ports::{Hsm, Store},
    secret::KeyString,
};

/// A signed-in request: the console, the request, the session and the caller it stands for.
pub struct Ctx<'a, H, S> {
    pub console: &'a Console<H, S>,
    pub req: &'a Req,
    pub session: Session,
    pub caller: Caller,
    pub rctx: RequestContext,
}

impl<H: Hsm, S: Store> Ctx<'_, H, S> {
    /// A page in the console's layout.
    pub fn page(&self, status: StatusCode, title: &str, nav: view::Nav, content: Markup) -> Response<Body> {
        web::html(status, view::layout(title, nav, Some(&self.user()), content))
    }

    pub fn user(&self) -> view::User {
        view::User { key_id: self.caller.key_id.to_string(), csrf: self.session.csrf.clone() }
    }

    /// The page for a refused or failed call: the domain's error, as the gRPC API would say it.
    pub fn fail(&self, error: Error, nav: view::Nav) -> Response<Body> {
        if matches!(error, Error::Unauthenticated(_)) {
            self.console.sessions.close(&self.session.id);
            return web::redirect("/login");
        }
        let status = status_of(&error);
        self.page(status, "Refused", nav, view::error_box(status, &error.to_string()))
    }
}

/// The HTTP status a domain error is shown with.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::AlreadyExists(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::ResourceExhausted(_) | Error::Blocked(_) => StatusCode::TOO_MANY_REQUESTS,
    }
}

pub async fn respond<H: Hsm, S: Store>(
    console: &Console<H, S>,
    request: http::Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let started = Instant::now();
    if request.method() == Method::GET
        && let Some(asset) = web::asset(request.uri().path())
    {
        return web::finish(asset, console.tls, started);
    }
    let req = match Req::read(request, peer).await {
        Ok(req) => req,
        Err(status) => return web::finish(web::text(status, "the request could not be read\n"), console.tls, started),
    };
    let response = match tokio::time::timeout(console.settings.request_timeout, route(console, &req)).await {
        Ok(response) => response,
        Err(_) => web::text(StatusCode::SERVICE_UNAVAILABLE, "the page took too long; try again\n"),
    };
    tracing::debug!(
        method = %req.method,
        path = %req.path,
        status = response.status().as_u16(),
        elapsed_us = req.started.elapsed().as_micros() as u64,
        "console request"
    );
    web::finish(response, console.tls, started)
}

async fn route<H: Hsm, S: Store>(console: &Console<H, S>, req: &Req) -> Response<Body> {
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/login") => web::html(StatusCode::OK, view::login(None)),
        (&Method::POST, "/login") => sign_in(console, req).await,
        (&Method::GET, "/healthz") => web::text(StatusCode::OK, "ok\n"),
        _ => {
            let ctx = match signed_in(console, req).await {
                Ok(ctx) => ctx,
                Err(response) => return response,
            };
            if req.method == Method::POST && !csrf_ok(&ctx) {
                tracing::info!(path = %req.path, actor = %ctx.caller.key_id, "console form refused: CSRF check failed");
                return ctx.page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    view::Nav::None,
                    view::error_box(
                        StatusCode::FORBIDDEN,
                        "this form did not come from this console session (CSRF check failed); reload the page and try again",
                    ),
                );
            }
            signed_in_route(&ctx).await
        }
    }
}

async fn signed_in_route<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    let req = ctx.req;
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (&req.method, segments.as_slice()) {
        (&Method::POST, ["logout"]) => sign_out(ctx).await,
        (&Method::GET, [""]) => web::redirect("/keys"),
        (&Method::GET, ["keys"]) => keys::list(ctx),
        (&Method::GET, ["keys", "new"]) => key_forms::new_form(ctx),
        (&Method::POST, ["keys"]) => key_forms::create(ctx).await,
        (&Method::GET, ["keys", id]) => keys::detail(ctx, id),
        (&Method::POST, ["keys", id, action]) => key_actions::act(ctx, id, action).await,
        (&Method::GET, ["audit"]) => audit::page(ctx).await,
        (&Method::POST, ["audit", "verify"]) => audit::start_whole_check(ctx),
        (&Method::GET, ["master"]) => master::page(ctx),
        _ => ctx.page(
            StatusCode::NOT_FOUND,
            "Not found",
            view::Nav::None,
            view::error_box(StatusCode::NOT_FOUND, "no such page"),
        ),
    }
}

fn request_context(req: &Req) -> RequestContext {
    RequestContext { client_addr: req.peer }
}

/// The signed-in caller, or the response that sends the browser to sign in.
async fn signed_in<'a, H: Hsm, S: Store>(
    console: &'a Console<H, S>,
    req: &'a Req,
) -> Result<Ctx<'a, H, S>, Response<Body>> {
    let to_login = || {
        let mut response = web::redirect("/login");
        response.headers_mut().insert(header::SET_COOKIE, web::session_cookie(None, console.tls));
        response
    };
    let Some(session) = req.session_cookie().and_then(|id| console.sessions.get(id)) else {
        return Err(to_login());
    };
    let rctx = request_context(req);
    match console.services.auth.authenticate(Some(session.key.expose()), &rctx).await {
        Ok(caller) => Ok(Ctx { console, req, session, caller, rctx }),
        Err(Error::Unauthenticated(_)) => {
            // The key was revoked, disabled or expired since sign-in: so is the session.
            console.sessions.close(&session.id);
            Err(to_login())
        }
        Err(e) => Err(web::html(status_of(&e), view::login(Some(&e.to_string())))),
    }
}

/// Every POST carries the session's CSRF token and, as far as the browser says, comes from
/// this origin.
fn csrf_ok<H, S>(ctx: &Ctx<'_, H, S>) -> bool {
    ctx.req.same_origin() && same_token(ctx.req.field("csrf"), &ctx.session.csrf)
}

/// Signs in with a keyward key: checked like a bearer key, and it must hold some form of
/// `keyward:keys:read` (checked, and a refusal counted, by ListKeys itself). A refused sign-in
/// is counted as a refused call (`auth.failed`, grouped per source); a session begun is a
/// `console.sign_in` event.
async fn sign_in<H: Hsm, S: Store>(console: &Console<H, S>, req: &Req) -> Response<Body> {
    if !req.same_origin() {
        return web::html(StatusCode::FORBIDDEN, view::login(Some("this sign-in did not come from this console")));
    }
    let key = req.field("key").trim();
    if key.is_empty() {
        return web::html(StatusCode::BAD_REQUEST, view::login(Some("enter a keyward key")));
    }
    let rctx = request_context(req);
    let caller = match console.services.auth.authenticate(Some(key), &rctx).await {
        Ok(caller) => caller,
        Err(Error::Unauthenticated(_)) => {
            return web::html(StatusCode::UNAUTHORIZED, view::login(Some("that key was not accepted")));
        }
        Err(e) => return web::html(status_of(&e), view::login(Some(&e.to_string()))),
    };
    if let Err(e) = console.services.keys.list(&caller, &ListFilter::default(), 1, "") {
        let why = match e {
            Error::PermissionDenied(_) => {
                "this key may not use the console: it needs a `keyward:keys:read` permission (for all keys or a team's)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        tracing::info!(key_id = %caller.key_id, "console sign-in refused: no keyward:keys:read permission");
        return web::html(StatusCode::FORBIDDEN, view::login(Some(&why)));
    }
    let session = match console.sessions.open(KeyString::new(key.to_owned()), caller.key_id) {
        Ok(session) => session,
        Err(Full::TooMany) => {
            return web::html(
                StatusCode::SERVICE_UNAVAILABLE,
                view::login(Some("too many console sessions are open; try again later")),
            );
        }
    };
    if let Err(e) = console.services.auth.record_console_session(&caller, ConsoleSession::SignedIn, &rctx).await {
        // No session that the audit trail does not know of.
        console.sessions.close(&session.id);
        tracing::warn!(key_id = %caller.key_id, error = %e, "console sign-in refused: its audit event was not written");
        return web::html(status_of(&e), view::login(Some(&e.to_string())));
    }
    tracing::info!(key_id = %caller.key_id, "console sign-in");
    let mut response = web::redirect("/keys");
    response.headers_mut().insert(header::SET_COOKIE, web::session_cookie(Some(&session.id), console.tls));
    response
}

/// Ends the session, then records it (a sign-out the trail could not record still signs out).
async fn sign_out<H: Hsm, S: Store>(ctx: &Ctx<'_, H, S>) -> Response<Body> {
    ctx.console.sessions.close(&ctx.session.id);
    let recorded =
        ctx.console.services.auth.record_console_session(&ctx.caller, ConsoleSession::SignedOut, &ctx.rctx).await;
    match recorded {
        Ok(()) => tracing::info!(key_id = %ctx.caller.key_id, "console sign-out"),
        Err(e) => {
            tracing::warn!(key_id = %ctx.caller.key_id, error = %e, "console sign-out: its audit event was not written")
        }
    }
    let mut response = web::redirect("/login");
    response.headers_mut().insert(header::SET_COOKIE, web::session_cookie(None, ctx.console.tls));
    response
}
