//! Gateway authorisation, edge-neutral: a gateway (Envoy ext_authz, nginx/Caddy/Traefik
//! forward-auth) asks about one HTTP request; keyward finds the client's key in its headers, the
//! scopes the route needs, and the client's address, runs VerifyKey's decision (same policies,
//! usage log, brute-force defence, metrics), and answers allow (with the identity for the
//! upstream) or deny (with what the client is told). The adapters in `grpc::ext_authz` and
//! `http` only translate.

mod client_ip;
mod denial;
mod form;
mod rules;
mod signature;

use std::{net::IpAddr, sync::Arc};

pub use self::{
    client_ip::client_ip,
    denial::Denial,
    form::decode as form_decode,
    rules::{KeyHeader, Rules},
    signature::{SignedParts, Unverifiable, signed_parts},
};
use crate::{
    domain::{
        access::Caller,
        error::Error,
        ports::{Hsm, Store},
        verification::{SignedRequest, Verifier, VerifyRequest},
    },
    metrics,
};

/// The identity headers the upstream is given; a client's own copies are replaced or removed.
pub const IDENTITY_HEADERS: [&str; 4] =
    ["x-keyward-key-id", "x-keyward-key-name", "x-keyward-scopes", "x-keyward-owner"];

/// One HTTP request, as the gateway describes it.
pub struct GatewayRequest<'a> {
    pub method: &'a str,
    /// The path, possibly with its query string.
    pub path: &'a str,
    /// The host (and port) the request was sent to; empty when the gateway does not say.
    pub authority: &'a str,
    /// `http` or `https`; empty when the gateway does not say.
    pub scheme: &'a str,
    /// A header's value by lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    /// The address the gateway saw the request come from, when it says.
    pub direct_client: Option<IpAddr>,
    /// Scopes the gateway's own route configuration asks for.
    pub route_scopes: Vec<String>,
    /// Whether the request has a body, as the gateway says (a length above 0, or chunked).
    pub has_body: bool,
    /// What keyward sees of the body.
    pub body: Body<'a>,
}

/// The request body as the gateway hands it to keyward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// Forward-auth: gateways never send the body. A covered `content-digest` must be signed;
    /// that it matches the body is for the upstream to check.
    NotForwarded,
    /// Envoy sent the whole body (`with_request_body`), possibly empty: a covered
    /// `content-digest` must match it.
    Whole(&'a [u8]),
    /// Envoy sent part of the body, or none of a body the request has: a covered
    /// `content-digest` cannot be checked, and the request is refused.
    Incomplete,
}

/// A request let through: who called, for the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub key_id: String,
    pub key_name: String,
    pub scopes: Vec<String>,
    pub owner: Option<String>,
    /// Uses left, for a key with a quota.
    pub remaining: Option<u64>,
    /// The header that carried the key, to remove before the upstream sees it (`None` when
    /// `authz.strip_key_header` is off).
    pub strip_header: Option<String>,
}

impl Allowed {
    /// The identity headers for the upstream, in `IDENTITY_HEADERS` order; `None` for the owner
    /// of a key that has none (the header is then removed).
    pub fn identity_headers(&self) -> [(&'static str, Option<String>); 4] {
        [
            (IDENTITY_HEADERS[0], Some(self.key_id.clone())),
            (IDENTITY_HEADERS[1], Some(self.key_name.clone())),
            (IDENTITY_HEADERS[2], Some(self.scopes.join(" "))),
            (IDENTITY_HEADERS[3], self.owner.clone()),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
}

/// What the request presented: a key (and the header it came in), or a signature.
enum Presented<'r> {
    Key(&'r str, &'r KeyHeader),
    Signed(&'r SignedParts),
}

/// Decides gateway requests with the verifier and `[authz]`.
pub struct Gatekeeper<H, S> {
    verifier: Arc<Verifier<H, S>>,
    rules: Arc<Rules>,
}

impl<H, S> Clone for Gatekeeper<H, S> {
    fn clone(&self) -> Self {
        Self { verifier: self.verifier.clone(), rules: self.rules.clone() }
    }
}

impl<H: Hsm, S: Store> Gatekeeper<H, S> {
    pub fn new(verifier: Arc<Verifier<H, S>>, rules: Arc<Rules>) -> Self {
        Self { verifier, rules }
    }

    /// The decision about `request`, asked by `caller` (the gateway, which needs
    /// `keyward:verify`). Errors are the gateway's problem (not allowed to verify, bad required
    /// scopes, keyward unavailable), never the client's.
    /// A request carrying `Signature-Input` is checked as a signed request (VerifySignature),
    /// whatever key header it also has.
    pub async fn decide(&self, caller: &Caller, request: GatewayRequest<'_>) -> Result<Decision, Error> {
        let signed = signed_parts(&request);
        let presented = match &signed {
            Some(Ok(parts)) => Presented::Signed(parts),
            Some(Err(why)) => {
                tracing::debug!(%why, "signed request refused before verification");
                return Ok(Decision::Deny(why.denial()));
            }
            None => match self.presented_key(request.header) {
                Some((key, header)) => Presented::Key(key, header),
                None => return Ok(Decision::Deny(Denial::MissingKey)),
            },
        };
        let mut required = request.route_scopes;
        for scope in self.rules.scopes_for(request.method, request.path) {
            if !required.contains(scope) {
                required.push(scope.clone());
            }
        }
        let client =
            client_ip(request.direct_client, (request.header)("x-forwarded-for"), self.rules.trusted_proxy_hops);
        let client = client.map(|ip| ip.to_canonical().to_string()).unwrap_or_default();
        let verified = match &presented {
            Presented::Key(key, _) => {
                let request = VerifyRequest { key, client_ip: &client, required_scopes: &required, cost: None };
                self.verifier.verify(caller, request).await
            }
            Presented::Signed(parts) => {
                let request = SignedRequest {
                    signature_base: &parts.base,
                    signature: &parts.signature,
                    client_ip: &client,
                    required_scopes: &required,
                    cost: None,
                };
                self.verifier.verify_signature(caller, request).await
            }
        };
        let verification = match verified {
            Ok(verification) => verification,
            // The client's address is blocked by the brute-force defence: its problem, not the gateway's.
            Err(Error::Blocked(wait)) if !client.is_empty() => {
                return Ok(Decision::Deny(Denial::TooManyFailures(wait)));
            }
            Err(e) => return Err(e),
        };
        metrics::get().verify_outcome(verification.code.name());
        if let Some(denial) = Denial::of(verification.code, verification.retry_after) {
            return Ok(Decision::Deny(denial));
        }
        // A VALID answer always names its key.
        let Some(record) = verification.record else { return Ok(Decision::Deny(Denial::InvalidKey)) };
        Ok(Decision::Allow(Allowed {
            key_id: record.id.to_string(),
            key_name: record.name,
            scopes: record.scopes,
            owner: record.owner,
            remaining: verification.remaining,
            strip_header: match presented {
                Presented::Key(_, header) if self.rules.strip_key_header => Some(header.name().to_owned()),
                _ => None,
            },
        }))
    }

    /// The first configured key header present with a key in it.
    fn presented_key<'a>(&self, header: &(dyn Fn(&str) -> Option<&'a str> + Sync)) -> Option<(&'a str, &KeyHeader)> {
        self.rules.key_headers().iter().find_map(|h| Some((h.key_in(header(h.name())?)?, h)))
    }
}

#[cfg(test)]
mod tests;
