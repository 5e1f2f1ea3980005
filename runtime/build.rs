//! Generates the example service's code (`user.v1`, used by the examples, tests and benchmark)
//! with tonic-prost-build. protox, a protobuf compiler written in Rust, parses the `.proto`
//! files, so building this crate needs no `protoc` on the machine.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["user/v1/user.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("user_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
