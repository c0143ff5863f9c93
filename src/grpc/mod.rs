//! The gRPC edge: keyward's services, health, reflection (v1 and v1alpha), and the limits and
//! graceful drain of the server that carries them (plaintext, or TLS through `crate::tls`),
//! observed by `layer`, load shed by `shed`, undecodable requests answered by `malformed`. Wire types end in this module.

mod audit;
mod auth;
mod cluster;
mod convert;
mod deadline;
mod ext_authz;
mod keys;
mod layer;
mod malformed;
mod master;
mod page_token;
mod shed;
mod status;
mod verify;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use self::{audit::AuditApi, cluster::ClusterApi, keys::KeyApi, master::MasterApi, verify::VerifyApi};
use crate::{
    config::ServerLimits,
    domain::{
        Services,
        auth::Authenticator,
        ports::{Hsm, Store},
    },
    listener::{Listener, UnixIncoming},
    proto::{
        self, audit_service_server::AuditServiceServer, cluster_service_server::ClusterServiceServer,
        key_service_server::KeyServiceServer, master_key_service_server::MasterKeyServiceServer,
        verify_service_server::VerifyServiceServer,
    },
    tls::{Identities, TlsReloader},
};

/// The services whose health is reported (besides the server as a whole, "").
const SERVICES: [&str; 5] = [
    "keyward.v1.KeyService",
    "keyward.v1.VerifyService",
    "keyward.v1.MasterKeyService",
    "keyward.v1.AuditService",
    "keyward.v1.ClusterService",
];

/// The services that need the store to confirm writes: `NOT_SERVING` once it stopped.
const WRITING_SERVICES: [&str; 2] = ["keyward.v1.KeyService", "keyward.v1.MasterKeyService"];

/// The services that answer while the store cannot prove its reads are current (cluster mode,
/// failing closed): `SERVING` then, while the HSM is reachable.
const ANSWERING_WHEN_STALE: [&str; 1] = ["keyward.v1.ClusterService"];

/// How connections arrive on a TCP listener (a Unix socket is always plaintext).
pub enum Transport {
    /// Plain TCP (h2c).
    Plain,
    /// TLS through keyward's own acceptor, whose configuration can be reloaded.
    Tls(Arc<TlsReloader>),
}

/// A service's health: every service needs the HSM and (but the cluster status) a store that
/// can prove its reads are current (cluster mode); the writing ones also need the store to
/// confirm writes. The server as a whole ("") follows the HSM and currency: verification still
/// works without writes.
fn service_status(name: &str, hsm_reachable: bool, current: bool, writes_confirmed: bool) -> ServingStatus {
    let current = current || ANSWERING_WHEN_STALE.contains(&name);
    if hsm_reachable && current && (writes_confirmed || !WRITING_SERVICES.contains(&name)) {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps health in step with the HSM (`NOT_SERVING` while the token is unreachable) and, for
/// the services that write, with the store (`NOT_SERVING` once it stopped confirming writes:
/// see `store.write_timeout`).
async fn track_health<H: Hsm, S: Store>(auth: Arc<Authenticator<H, S>>, reporter: HealthReporter) {
    let mut serving = None;
    loop {
        let now = (auth.is_healthy(), auth.writes_confirmed(), auth.store_current());
        if serving != Some(now) {
            let (hsm, writes, current) = now;
            for name in std::iter::once("").chain(SERVICES) {
                reporter.set_service_status(name, service_status(name, hsm, current, writes)).await;
            }
            if serving.is_some() {
                tracing::warn!(
                    hsm_reachable = hsm,
                    writes_confirmed = writes,
                    store_current = current,
                    "health changed"
                );
            }
            serving = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Serves until `shutdown` resolves, then stops accepting, drains in-flight calls for up to
/// `limits.shutdown_grace`, and returns. `identities` map verified client certificates to keys
/// (meaningful with mTLS only); `authz` are the gateway rules of ext_authz. Each API gets the
/// domain services it uses.
pub async fn serve<H: Hsm, S: Store>(
    services: Services<H, S>,
    listener: Listener,
    transport: Transport,
    identities: Arc<Identities>,
    authz: Arc<crate::gateway::Rules>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = limits.max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = health.max_decoding_message_size(max);
    let health_task = tokio::spawn(track_health(services.auth.clone(), reporter));
    let reflection = || {
        // Both reflection versions list every service, each other included.
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 =
        reflection().build_v1().expect("the embedded descriptor sets are valid").max_decoding_message_size(max);
    let reflection_v1alpha =
        reflection().build_v1alpha().expect("the embedded descriptor sets are valid").max_decoding_message_size(max);

    let Services { auth, keys, verify, master, audit, cluster, .. } = services;
    let ids = &identities;
    let key_api = KeyServiceServer::new(KeyApi::new(auth.clone(), keys, ids.clone())).max_decoding_message_size(max);
    let master_api =
        MasterKeyServiceServer::new(MasterApi::new(auth.clone(), master, ids.clone())).max_decoding_message_size(max);
    let audit_api =
        AuditServiceServer::new(AuditApi::new(auth.clone(), audit, ids.clone())).max_decoding_message_size(max);
    let cluster_api =
        ClusterServiceServer::new(ClusterApi::new(auth.clone(), cluster, ids.clone())).max_decoding_message_size(max);
    let ext_authz_api = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(ext_authz::ExtAuthzApi::new(
        auth.clone(),
        crate::gateway::Gatekeeper::new(verify.clone(), authz),
        ids.clone(),
    ))
    .max_decoding_message_size(max);
    let verify_api = VerifyServiceServer::new(VerifyApi::new(auth, verify, ids.clone())).max_decoding_message_size(max);

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    // tonic keeps the incoming stream until the drain ends: keyward's TLS acceptor is told to
    // stop accepting (and close the listener) at once.
    let (stop_accepting, accepting) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight calls");
        let _ = stop_accepting.send(true);
        let _ = drain_tx.send(());
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layer::ObserveLayer)
        .layer(shed::ShedLayer::new(limits.max_in_flight))
        .layer(deadline::DeadlineLayer::new(limits.request_timeout))
        .layer(malformed::MalformedLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(key_api)
        .add_service(master_api)
        .add_service(audit_api)
        .add_service(cluster_api)
        .add_service(verify_api)
        .add_service(ext_authz_api);
    // A Unix socket's file is removed when the server returns.
    let mut _socket_file = None;
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match (listener, transport)
    {
        (Listener::Tcp(listener), Transport::Plain) => {
            Box::pin(router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal))
        }
        (Listener::Tcp(listener), Transport::Tls(tls)) => {
            let incoming = crate::tls::incoming(listener, tls, accepting);
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
        (Listener::Unix(listener, file), _) => {
            _socket_file = Some(file);
            Box::pin(router.serve_with_incoming_shutdown(UnixIncoming(listener), signal))
        }
    };

    let deadline = async move {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(limits.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut server = server;
    let result = tokio::select! {
        r = &mut server => r,
        _ = deadline => {
            tracing::warn!(grace = ?limits.shutdown_grace, "drain deadline passed; closing remaining calls");
            Ok(())
        }
    };
    health_task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_services_go_not_serving_when_writes_stop_being_confirmed_and_verification_stays() {
        let status = |name, hsm, writes| service_status(name, hsm, true, writes);
        for name in std::iter::once("").chain(SERVICES) {
            assert_eq!(status(name, true, true), ServingStatus::Serving, "{name}");
            assert_eq!(status(name, false, true), ServingStatus::NotServing, "{name}: the HSM is gone");
        }
        assert_eq!(status("keyward.v1.KeyService", true, false), ServingStatus::NotServing);
        assert_eq!(status("keyward.v1.MasterKeyService", true, false), ServingStatus::NotServing);
        assert_eq!(status("keyward.v1.VerifyService", true, false), ServingStatus::Serving);
        assert_eq!(status("keyward.v1.AuditService", true, false), ServingStatus::Serving);
        assert_eq!(status("", true, false), ServingStatus::Serving);
    }

    #[test]
    fn a_stale_node_is_not_serving_but_for_the_cluster_status_which_needs_only_the_hsm() {
        for name in std::iter::once("").chain(SERVICES) {
            let stale = service_status(name, true, false, true);
            if name == "keyward.v1.ClusterService" {
                assert_eq!(stale, ServingStatus::Serving, "{name}");
                assert_eq!(service_status(name, false, false, true), ServingStatus::NotServing, "{name}: no HSM");
            } else {
                assert_eq!(stale, ServingStatus::NotServing, "{name}");
            }
        }
    }
}
