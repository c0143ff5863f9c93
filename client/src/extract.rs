//! The axum extractor for [`VerifiedKey`] (feature `axum`).

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header, request::Parts};

use crate::VerifiedKey;

/// A handler that takes a [`VerifiedKey`] gets the key [`VerifyKeyLayer`](crate::VerifyKeyLayer)
/// verified for the request. Without the layer in front of the route there is none, and the
/// request is refused with 401 `{"error":"missing_key"}` (a route that forgot its layer fails
/// closed). Take `Option<VerifiedKey>` to serve such requests anyway.
impl<S: Send + Sync> FromRequestParts<S> for VerifiedKey {
    type Rejection = NotVerified;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<VerifiedKey>().cloned().ok_or(NotVerified)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for VerifiedKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<VerifiedKey>().cloned())
    }
}

/// The rejection of the [`VerifiedKey`] extractor: no key was verified for this request.
/// Answers 401 with `www-authenticate: Bearer` and `{"error":"missing_key"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotVerified;

impl IntoResponse for NotVerified {
    fn into_response(self) -> Response {
        tracing::warn!("a handler asked for a VerifiedKey on a route without VerifyKeyLayer; refusing the request");
        let mut response = (StatusCode::UNAUTHORIZED, r#"{"error":"missing_key"}"#).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}
