//! Compiles `proto/` with protox (no system `protoc` needed) into the keyward.v1 client stubs;
//! no server code. In the repository `proto` is a link to the server's `../proto`, so there is
//! one copy of the API; `cargo package` copies the files into the crate, so the published crate
//! builds alone.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["keyward/v1/keyward.proto"], [proto_root])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
