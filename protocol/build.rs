//! Compiles `proto/mesh/v1/*.proto` with prost. `protox` parses the schema in pure Rust, so
//! building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let files = [
        "mesh/v1/log.proto",
        "mesh/v1/catalog.proto",
        "mesh/v1/sync.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
