//! Reads the caller's credential (`authorization: Bearer <key>`) and address from a request.

use tonic::Request;

use crate::domain::{
    error::Result,
    ports::{Hsm, Store},
    service::{Caller, Keys, RequestContext},
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

/// Authenticates the caller and returns it with the request's audit context.
pub async fn caller<H: Hsm, S: Store, T>(keys: &Keys<H, S>, request: &Request<T>) -> Result<(Caller, RequestContext)> {
    let ctx = context(request);
    let caller = keys.authenticate(bearer(request), &ctx).await?;
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
