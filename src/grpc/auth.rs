//! Who the caller is: the key in `authorization: Bearer <key>`, or, on an mTLS connection
//! without that header, the key a verified client certificate is mapped to; and the caller's
//! address.

use tonic::Request;

use crate::{
    domain::{
        access::{Caller, RequestContext},
        auth::{Authenticator, CallerRecord},
        error::{Error, Result},
        ports::{Hsm, Store},
    },
    tls::{Identities, Resolution},
};

/// The bearer token, if the header is present and well-formed.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn context<T>(request: &Request<T>) -> RequestContext {
    RequestContext { client_addr: request.remote_addr() }
}

/// What the client certificate of the request's connection stands for: `None` without one.
fn certificate<T>(identities: &Identities, request: &Request<T>) -> Option<Resolution> {
    let certs = request.peer_certs()?;
    Some(identities.resolve(certs.first()?))
}

/// Authenticates the caller and returns it with the request's audit context. An
/// `authorization` header, when present, decides alone (a bearer key wins over a certificate).
pub async fn caller<H: Hsm, S: Store, T>(
    auth: &Authenticator<H, S>,
    identities: &Identities,
    request: &Request<T>,
) -> Result<(Caller, RequestContext)> {
    caller_reading(auth, identities, request, CallerRecord::Current).await
}

/// `caller`, reading the caller's key record as `read` says.
pub async fn caller_reading<H: Hsm, S: Store, T>(
    auth: &Authenticator<H, S>,
    identities: &Identities,
    request: &Request<T>,
    read: CallerRecord,
) -> Result<(Caller, RequestContext)> {
    let ctx = context(request);
    // The certificate is read only when there is no header: bearer calls pay nothing for mTLS.
    let by_certificate =
        if request.metadata().contains_key("authorization") { None } else { certificate(identities, request) };
    let caller = match by_certificate {
        None => auth.authenticate_reading(bearer(request), &ctx, read).await.inspect_err(|e| {
            if matches!(e, Error::Blocked(_)) {
                crate::metrics::get().brute_force_refused("authenticate");
            }
        })?,
        Some(Resolution::Key(id)) => auth.authenticate_identity_reading(id, &ctx, read).await?,
        Some(Resolution::Unmapped) => {
            return Err(Error::Unauthenticated(
                "the client certificate stands for no key: send `authorization: Bearer <key>`, or map one of its \
                 names in [tls.identities]",
            ));
        }
        Some(Resolution::Ambiguous) => {
            return Err(Error::Unauthenticated("the client certificate's names are mapped to different keys"));
        }
    };
    Ok((caller, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("authorization", value.parse().unwrap());
        r
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer(&with_auth("Bearer kw_abc")), Some("kw_abc"));
        assert_eq!(bearer(&with_auth("bearer kw_abc")), Some("kw_abc"));
        assert_eq!(bearer(&with_auth("Basic kw_abc")), None);
        assert_eq!(bearer(&with_auth("kw_abc")), None);
        assert_eq!(bearer(&Request::new(())), None);
    }
}
