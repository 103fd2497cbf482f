//! Generates the gRPC code from `proto/` with protox, a pure-Rust .proto compiler: no `protoc`
//! binary and no network are needed on a fresh machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "calico_rs/node/v1/node_status.proto";
    println!("cargo:rerun-if-changed=proto/{file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
