//! [`connection_ip`]: the end client's address as the connection shows it.

use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The peer address of the request's connection, where the server recorded it:
/// axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`; feature `axum`), or tonic's
/// `TcpConnectInfo` (plain or under TLS). `None` otherwise: keyward then checks the key
/// without an address, and a key with an IP allowlist is refused.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are given as IPv4.
pub fn connection_ip(parts: &Parts) -> Option<IpAddr> {
    let extensions = &parts.extensions;
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(addr.ip().to_canonical());
    }
    let peer: Option<SocketAddr> = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|tls| tls.get_ref().remote_addr()));
    peer.map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn no_connection_info_is_no_address() {
        assert_eq!(connection_ip(&parts()), None);
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_gives_the_peer_with_mapped_v4_unmapped() {
        let mut p = parts();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        p.extensions.insert(axum::extract::ConnectInfo(mapped));
        assert_eq!(connection_ip(&p), Some("192.0.2.7".parse().unwrap()));
    }
}
