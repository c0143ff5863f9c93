//! The end client's address behind a gateway: the address the gateway saw, or, with trusted
//! proxies in front of it, the `X-Forwarded-For` entry they vouch for. Entries a client could
//! have written itself (left of the trusted ones) are never taken.

use std::net::IpAddr;

/// The client among the addresses `forwarded_for` lists (left to right, the nearest proxy last)
/// followed by `direct` (the address the gateway saw, when it is not in the header already),
/// skipping `trusted_hops` entries from the right. A chain shorter than that gives its
/// leftmost address; an entry that is not an address gives `None` (unknown client).
pub fn client_ip(direct: Option<IpAddr>, forwarded_for: Option<&str>, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return direct.or_else(|| forwarded_for.and_then(|f| parse(f.rsplit(',').next()?)));
    }
    let mut chain: Vec<&str> = forwarded_for.map(|f| f.split(',').map(str::trim).collect()).unwrap_or_default();
    chain.retain(|entry| !entry.is_empty());
    let mut addresses: Vec<Option<IpAddr>> = chain.iter().map(|entry| parse(entry)).collect();
    if let Some(direct) = direct
        && addresses.last() != Some(&Some(direct))
    {
        addresses.push(Some(direct));
    }
    let index = addresses.len().saturating_sub(trusted_hops + 1);
    addresses.get(index).copied().flatten()
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`[v6]:port`, `v4:port`).
fn parse(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}
