//! Generates the protocol's message types (prost, without tonic's services) from
//! `proto/proto/loggate.proto` with the vendored `protoc`, for the `read_request` target: the
//! same definitions the agent decodes, without tonic in the instrumented build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.compile_protos(&["../proto/proto/loggate.proto"], &["../proto/proto"])?;
    println!("cargo:rerun-if-changed=../proto/proto/loggate.proto");
    Ok(())
}
