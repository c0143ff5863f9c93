//! A Check server that decides nothing: every request is allowed at once, with the same header
//! mutations and metadata keyward's allowed answer carries. Envoy + ext_authz → this server is
//! what the ext_authz path costs Envoy itself, the ceiling any Check server can reach on the
//! machine (`scripts/envoy-bench.sh --null-check`).

use std::{net::SocketAddr, path::PathBuf};

use envoy_types::{
    ext_authz::v3::{
        CheckResponseExt, OkHttpResponseBuilder,
        pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction},
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use tonic::{Request, Response, Status};

use crate::error::{BenchError, Result};

struct NullCheck;

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_owned())) }
}

#[tonic::async_trait]
impl Authorization for NullCheck {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header("x-keyward-key-id", "01936f6e-0000-7000-8000-000000000001", set, true);
        ok.add_header("x-keyward-key-name", "bench-client", set, true);
        ok.add_header("x-keyward-scopes", "orders:read", set, true);
        ok.remove_header("x-keyward-owner");
        ok.remove_header("authorization");
        let mut metadata = Struct::default();
        metadata.fields.insert("key_id".into(), string_value("01936f6e-0000-7000-8000-000000000001"));
        metadata.fields.insert("key_name".into(), string_value("bench-client"));
        let mut check = CheckResponse::with_status(Status::ok(""));
        check.set_http_response(ok).set_dynamic_metadata(Some(metadata));
        Ok(Response::new(check))
    }
}

/// Serves the null Check on `listen` until killed; writes the bound address to `addr_file`.
pub fn serve(listen: SocketAddr, addr_file: Option<PathBuf>) -> Result<()> {
    keyward::app::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| BenchError::Io { context: format!("listening on {listen}"), source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| BenchError::Io { context: "reading the bound address".into(), source })?;
        if let Some(file) = addr_file {
            std::fs::write(&file, bound.to_string())
                .map_err(|source| BenchError::Io { context: format!("writing {}", file.display()), source })?;
        }
        eprintln!("null Check server on {bound}");
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(NullCheck))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
            .map_err(|e| BenchError::Io { context: "serving the null Check".into(), source: std::io::Error::other(e) })
    })
}
