//! Generates the gRPC code with a vendored `protoc`, so building needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".rooms.host.v1")
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_protos(&["proto/rooms/v1/admin.proto", "proto/rooms/v1/host.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
