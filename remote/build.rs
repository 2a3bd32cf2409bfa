//! Generates the REAPI, ByteStream, Operations and Remote Workers client code
//! from the vendored protos in `proto/`, with `protox` (a protobuf parser in
//! Rust), so building hermit needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/build/bazel/remote/execution/v2/remote_execution.proto",
        "proto/google/bytestream/bytestream.proto",
        "proto/google/longrunning/operations.proto",
        "proto/google/devtools/remoteworkers/v1test2/bots.proto",
        "proto/google/devtools/remoteworkers/v1test2/command.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
