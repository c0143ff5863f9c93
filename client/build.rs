//! Compiles the repository's `proto/` with protox (no system `protoc` needed) into the
//! keyward.v1 client stubs; no server code.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("../proto");
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["keyward/v1/keyward.proto"], [proto_root])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
