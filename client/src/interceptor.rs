//! [`BearerInterceptor`]: attaches `authorization: Bearer <key>` to outgoing tonic calls.

use std::{fmt, sync::Arc};

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::Interceptor,
};
use zeroize::Zeroizing;

use crate::{ApiKey, Error};

/// A tonic [`Interceptor`] that sends `authorization: Bearer <key>` with every call: how a
/// service presents its own key to keyward, or to any other service protected by
/// [`VerifyKeyLayer`](crate::VerifyKeyLayer).
///
/// The key is kept in an [`ApiKey`] (wiped on drop, redacted in `Debug`); each call's header
/// value is marked sensitive, so HTTP/2 header compression never indexes it.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use keyward_client::{BearerInterceptor, proto::key_service_client::KeyServiceClient};
///
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
/// let bearer = BearerInterceptor::new("kw_admin_key")?;
/// let mut keys = KeyServiceClient::with_interceptor(channel, bearer);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BearerInterceptor {
    key: Option<Arc<ApiKey>>,
}

impl BearerInterceptor {
    /// Sends `key` with every call. Fails when the key holds characters that cannot go in an
    /// HTTP header.
    pub fn new(key: impl Into<ApiKey>) -> Result<Self, Error> {
        let key = key.into();
        bearer_value(&key)?;
        Ok(BearerInterceptor { key: Some(Arc::new(key)) })
    }

    /// Sends no `authorization` header (for a client authenticated by its TLS certificate).
    pub fn none() -> Self {
        BearerInterceptor { key: None }
    }
}

/// `Bearer <key>` as a sensitive header value.
fn bearer_value(key: &ApiKey) -> Result<AsciiMetadataValue, Error> {
    let mut text = Zeroizing::new(String::with_capacity(7 + key.expose().len()));
    text.push_str("Bearer ");
    text.push_str(key.expose());
    let visible = key.expose().bytes().all(|b| b.is_ascii_graphic());
    let mut value: AsciiMetadataValue = match MetadataValue::try_from(text.as_str()) {
        Ok(value) if visible && !key.expose().is_empty() => value,
        _ => return Err(Error::UnsendableKey),
    };
    value.set_sensitive(true);
    Ok(value)
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.key {
            // Checked in `new`, so this cannot fail; a failure still refuses the call, never
            // sends it without its key.
            let value = bearer_value(key).map_err(|_| Status::internal("the bearer key cannot be sent"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

impl fmt::Debug for BearerInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerInterceptor").field("key", &self.key.as_ref().map(|_| "<redacted>")).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_carries_the_bearer_header_marked_sensitive() {
        let mut interceptor = BearerInterceptor::new("kw_abc123").unwrap();
        let request = interceptor.call(Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer kw_abc123");
        assert!(value.is_sensitive());
        assert!(!format!("{interceptor:?}").contains("abc123"));
    }

    #[test]
    fn none_sends_no_header() {
        let request = BearerInterceptor::none().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn keys_that_cannot_be_a_header_are_refused_up_front() {
        assert!(matches!(BearerInterceptor::new("kw_a b"), Err(Error::UnsendableKey)));
        assert!(matches!(BearerInterceptor::new("kw_é"), Err(Error::UnsendableKey)));
        assert!(matches!(BearerInterceptor::new(""), Err(Error::UnsendableKey)));
    }
}
