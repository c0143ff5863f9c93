//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization (and Istio's
//! `envoyExtAuthzGrpc` provider) asks keyward about each HTTP request. The gateway authenticates
//! like any caller (a key with `keyward:verify`, or an mTLS identity); the decision is the
//! gateway core's (`crate::gateway`), translated here: OK with identity headers for the upstream,
//! or a denied HTTP response (401, 403, 429) with a small JSON body for the client.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use envoy_types::{
    ext_authz::v3::{
        CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use tonic::{Request, Response, Status};

use super::auth;
use crate::{
    domain::{
        auth::Authenticator,
        ports::{Hsm, Store},
    },
    gateway::{Allowed, Body, Decision, Denial, Gatekeeper, GatewayRequest},
    tls::Identities,
};

/// The `context_extensions` entry of a route that names the scopes its requests need.
pub const REQUIRED_SCOPES: &str = "required_scopes";

pub struct ExtAuthzApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    gatekeeper: Gatekeeper<H, S>,
    identities: Arc<Identities>,
}

impl<H, S> ExtAuthzApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, gatekeeper: Gatekeeper<H, S>, identities: Arc<Identities>) -> Self {
        Self { auth, gatekeeper, identities }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> Authorization for ExtAuthzApi<H, S> {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let check = request.into_inner();
        let empty = HashMap::new();
        let headers = check.get_client_headers().unwrap_or(&empty);
        let header = |name: &str| headers.get(name).map(String::as_str);
        let http = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let route_scopes = check
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(REQUIRED_SCOPES))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let sent = http.map_or(&[][..], |h| if h.raw_body.is_empty() { h.body.as_bytes() } else { &h.raw_body });
        let (has_body, body) = body(&header, http.map_or(-1, |h| h.size), sent);
        let request = GatewayRequest {
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            authority: http.map_or("", |h| h.host.as_str()),
            scheme: http.map_or("", |h| h.scheme.as_str()),
            header: &header,
            direct_client: check.get_client_address().and_then(|a| a.parse::<IpAddr>().ok()),
            route_scopes,
            has_body,
            body,
        };
        let decision = self.gatekeeper.decide(&caller, request).await?;
        Ok(Response::new(answer(decision)))
    }
}

/// Whether the request has a body, and what keyward sees of it: the whole body only when Envoy
/// sent all of it (`with_request_body`; `raw_body` with `pack_as_bytes`, else `body`), as long
/// as the request's `content-length` says.
fn body<'a>(header: &dyn Fn(&str) -> Option<&'a str>, size: i64, sent: &'a [u8]) -> (bool, Body<'a>) {
    let length = header("content-length").and_then(|l| l.trim().parse::<u64>().ok());
    let partial = header("x-envoy-auth-partial-body").is_some_and(|p| p.trim() == "true");
    let has_body = length.is_some_and(|l| l > 0)
        || header("transfer-encoding").is_some()
        || size > 0
        || !sent.is_empty()
        || partial;
    // A body the request has, but none of it sent: not whole.
    let whole = !partial && length.is_none_or(|l| l == sent.len() as u64) && (!has_body || !sent.is_empty());
    (has_body, if whole { Body::Whole(sent) } else { Body::Incomplete })
}

/// Envoy's answer to `decision`.
fn answer(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(allowed) => ok(allowed),
        Decision::Deny(denial) => denied(denial),
    }
}

fn denied(denial: Denial) -> CheckResponse {
    let grpc = match denial.http_status() {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        _ => tonic::Code::ResourceExhausted,
    };
    let mut response = DeniedHttpResponseBuilder::new();
    response.set_http_status(
        HttpStatusCode::try_from(i32::from(denial.http_status())).unwrap_or(HttpStatusCode::Forbidden),
    );
    response.add_header("content-type", "application/json", None, false);
    if denial.challenges() {
        response.add_header("www-authenticate", "Bearer", None, false);
    }
    if let Some(secs) = denial.retry_after_secs() {
        response.add_header("retry-after", secs.to_string(), None, false);
    }
    response.set_body(denial.body());
    let mut check = CheckResponse::with_status(Status::new(grpc, denial.error_code()));
    check.set_http_response(response);
    check
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_owned())) }
}

fn ok(allowed: Allowed) -> CheckResponse {
    let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    let mut ok = OkHttpResponseBuilder::new();
    // The upstream learns who called, never the key itself (and cannot be handed a forged
    // identity: these headers overwrite any the client sent, or remove them).
    for (name, value) in allowed.identity_headers() {
        match value {
            Some(value) => ok.add_header(name, value, set, true),
            None => ok.remove_header(name),
        };
    }
    if let Some(header) = &allowed.strip_header {
        ok.remove_header(header);
    }
    if let Some(remaining) = allowed.remaining {
        ok.add_response_header("x-ratelimit-remaining", remaining.to_string(), set, false);
    }
    let mut metadata = Struct::default();
    metadata.fields.insert("key_id".into(), string_value(&allowed.key_id));
    metadata.fields.insert("key_name".into(), string_value(&allowed.key_name));
    let mut check = CheckResponse::with_status(Status::ok(""));
    check.set_http_response(ok).set_dynamic_metadata(Some(metadata));
    check
}

#[cfg(test)]
#[path = "ext_authz_tests.rs"]
mod tests;
