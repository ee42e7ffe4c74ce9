//! Compiles the protobuf contracts in `proto/` with protox, a protobuf compiler written in Rust,
//! so that building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "rollcall/type/v1/attendance.proto",
    "rollcall/registers/v1/registers.proto",
    "rollcall/policy/v1/policy.proto",
    "rollcall/cases/v1/cases.proto",
    "rollcall/referrals/v1/referrals.proto",
    "rollcall/mis_adapter/v1/mis_adapter.proto",
    "rollcall/mis_adapter/v1/sync.proto",
    "rollcall/audit/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    // tonic-prost-build does not print rerun-if-changed lines, so the build script does.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;

    // The encoded descriptor set feeds gRPC server reflection.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rollcall_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
