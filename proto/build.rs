//! Compiles `mesh/**/*.proto` with protox (a protobuf compiler written in Rust),
//! so building needs no system `protoc`. The descriptor set is also written out
//! for server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "mesh/items/v1/items.proto",
    "mesh/cache/v1/cache.proto",
    "mesh/tasks/v1/tasks.proto",
    "mesh/counter/v1/counter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("mesh_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=mesh");
    Ok(())
}
