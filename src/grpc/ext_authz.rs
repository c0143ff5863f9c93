//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization (and Istio's
//! `envoyExtAuthzGrpc` provider) asks keyward about each HTTP request. The gateway authenticates
//! like any caller (a key with `keyward:verify`, or an mTLS identity); the end client's key comes
//! from the request's headers, the required scopes from the route's `context_extensions`, and
//! the decision is VerifyKey's, mapped to HTTP: 200 with identity headers for the upstream, 401,
//! 403 or 429 with a small JSON body for the client.

use std::{sync::Arc, time::Duration};

use envoy_types::{
    ext_authz::v3::{
        CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        auth::Authenticator,
        policy::VerifyCode,
        ports::{Hsm, Store},
        verification::{Verification, Verifier, VerifyRequest},
    },
    metrics,
    tls::Identities,
};

/// The `context_extensions` entry of a route that names the scopes its requests need.
pub const REQUIRED_SCOPES: &str = "required_scopes";

/// Where the end client's key is looked for, in order: the first header present wins.
const KEY_HEADERS: [KeyHeader; 2] = [KeyHeader::Bearer("authorization"), KeyHeader::Plain("x-api-key")];

#[derive(Clone, Copy)]
enum KeyHeader {
    /// `Bearer <key>`.
    Bearer(&'static str),
    /// The key as the whole value.
    Plain(&'static str),
}

impl KeyHeader {
    fn name(self) -> &'static str {
        match self {
            KeyHeader::Bearer(name) | KeyHeader::Plain(name) => name,
        }
    }
}

pub struct ExtAuthzApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    verifier: Arc<Verifier<H, S>>,
    identities: Arc<Identities>,
}

impl<H, S> ExtAuthzApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, verifier: Arc<Verifier<H, S>>, identities: Arc<Identities>) -> Self {
        Self { auth, verifier, identities }
    }
}

/// The end client's key in `headers` (names lower-case, as Envoy sends them) and the header it
/// came in; `None` when no key header is there.
fn presented_key(headers: &std::collections::HashMap<String, String>) -> Option<(&str, &'static str)> {
    KEY_HEADERS.iter().find_map(|header| {
        let value = headers.get(header.name())?.trim();
        let key = match header {
            KeyHeader::Bearer(_) => value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim(),
            KeyHeader::Plain(_) => value,
        };
        (!key.is_empty()).then_some((key, header.name()))
    })
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> Authorization for ExtAuthzApi<H, S> {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let check = request.into_inner();
        let Some((key, header)) = check.get_client_headers().and_then(presented_key) else {
            return Ok(Response::new(denied(Denial::MissingKey)));
        };
        let required: Vec<String> = check
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(REQUIRED_SCOPES))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let client_ip = check.get_client_address().cloned().unwrap_or_default();
        let verification = self
            .verifier
            .verify(&caller, VerifyRequest { key, client_ip: &client_ip, required_scopes: &required, cost: None })
            .await?;
        metrics::get().verify_outcome(convert::verify_code(verification.code).short_name());
        Ok(Response::new(decide(&verification, header)))
    }
}

/// Why a request is refused, as the end client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denial {
    MissingKey,
    InvalidKey,
    InsufficientScope,
    IpNotAllowed,
    RateLimited(Option<Duration>),
    QuotaExceeded(Option<Duration>),
}

impl Denial {
    fn of(code: VerifyCode, retry_after: Option<Duration>) -> Option<Self> {
        Some(match code {
            VerifyCode::Valid => return None,
            // Whatever is wrong with the key itself looks the same to the client.
            VerifyCode::Invalid
            | VerifyCode::Revoked
            | VerifyCode::Disabled
            | VerifyCode::NotYetValid
            | VerifyCode::Expired => Denial::InvalidKey,
            VerifyCode::InsufficientScope => Denial::InsufficientScope,
            VerifyCode::IpNotAllowed => Denial::IpNotAllowed,
            VerifyCode::RateLimited => Denial::RateLimited(retry_after),
            VerifyCode::QuotaExceeded => Denial::QuotaExceeded(retry_after),
        })
    }

    /// The HTTP status, the stable error code of the body, and the gRPC status Envoy is given.
    fn answer(self) -> (HttpStatusCode, &'static str, tonic::Code) {
        match self {
            Denial::MissingKey => (HttpStatusCode::Unauthorized, "missing_key", tonic::Code::Unauthenticated),
            Denial::InvalidKey => (HttpStatusCode::Unauthorized, "invalid_key", tonic::Code::Unauthenticated),
            Denial::InsufficientScope => {
                (HttpStatusCode::Forbidden, "insufficient_scope", tonic::Code::PermissionDenied)
            }
            Denial::IpNotAllowed => (HttpStatusCode::Forbidden, "ip_not_allowed", tonic::Code::PermissionDenied),
            Denial::RateLimited(_) => (HttpStatusCode::TooManyRequests, "rate_limited", tonic::Code::ResourceExhausted),
            Denial::QuotaExceeded(_) => {
                (HttpStatusCode::TooManyRequests, "quota_exceeded", tonic::Code::ResourceExhausted)
            }
        }
    }
}

/// Whole seconds to wait, rounded up (never 0 for a wait that is not over).
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

fn denied(denial: Denial) -> CheckResponse {
    let (http, code, grpc) = denial.answer();
    let mut response = DeniedHttpResponseBuilder::new();
    response.set_http_status(http);
    response.add_header("content-type", "application/json", None, false);
    if http == HttpStatusCode::Unauthorized {
        response.add_header("www-authenticate", "Bearer", None, false);
    }
    if let Denial::RateLimited(Some(wait)) | Denial::QuotaExceeded(Some(wait)) = denial {
        response.add_header("retry-after", retry_after_secs(wait).to_string(), None, false);
    }
    response.set_body(format!("{{\"error\":\"{code}\"}}"));
    let mut check = CheckResponse::with_status(Status::new(grpc, code));
    check.set_http_response(response);
    check
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_owned())) }
}

/// The answer to Envoy for `verification` of a key presented in `header`.
fn decide(verification: &Verification, header: &'static str) -> CheckResponse {
    if let Some(denial) = Denial::of(verification.code, verification.retry_after) {
        return denied(denial);
    }
    let Some(record) = &verification.record else {
        return denied(Denial::InvalidKey); // A VALID answer always names its key.
    };
    let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    let mut ok = OkHttpResponseBuilder::new();
    // The upstream learns who called, never the key itself (and cannot be handed a forged
    // identity: these headers overwrite any the client sent).
    ok.add_header("x-keyward-key-id", record.id.to_string(), set, false);
    ok.add_header("x-keyward-key-name", record.name.clone(), set, false);
    ok.add_header("x-keyward-scopes", record.scopes.join(" "), set, true);
    match &record.owner {
        Some(owner) => ok.add_header("x-keyward-owner", owner.clone(), set, false),
        None => ok.remove_header("x-keyward-owner"),
    };
    ok.remove_header(header);
    if let Some(remaining) = verification.remaining {
        ok.add_response_header("x-ratelimit-remaining", remaining.to_string(), set, false);
    }
    let mut metadata = Struct::default();
    metadata.fields.insert("key_id".into(), string_value(&record.id.to_string()));
    metadata.fields.insert("key_name".into(), string_value(&record.name));
    let mut check = CheckResponse::with_status(Status::ok(""));
    check.set_http_response(ok).set_dynamic_metadata(Some(metadata));
    check
}

#[cfg(test)]
#[path = "ext_authz_tests.rs"]
mod tests;
