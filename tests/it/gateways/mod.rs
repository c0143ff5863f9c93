//! Real gateways in front of a real keyward, on loopback: the gateway process started by the
//! test from the exact configuration under `deploy/`, a small upstream service that echoes what
//! it received, and an independent HTTP client (curl) sending requests through the gateway.

mod curl;
mod envoy;
mod envoy_bench;
mod envoy_proxy;
mod envoy_signed;
mod upstream;
