//! Generates the demo gRPC service's Rust code (`onbehalf::demo::flights`) from
//! `proto/demo/flights/v1/flights.proto`, compiled by protox: no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/demo/flights/v1/flights.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(files)?;
    Ok(())
}
