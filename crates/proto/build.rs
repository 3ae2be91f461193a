//! Compiles proto/ with protox (pure Rust: no protoc needed) and generates tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal/objects.proto",
        "proto/shoal/ca.proto",
        "proto/shoal/dispatcher.proto",
        "proto/shoal/control.proto",
        "proto/shoal/local.proto",
        "proto/shoal/raft.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // The descriptors themselves, for what reads a message by its schema (the audit
    // log records a control request as JSON, secrets redacted by field).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("shoal.fds"), prost::Message::encode_to_vec(&fds))?;
    // Secret data never reaches a log through Debug (lib.rs implements it, redacted).
    tonic_prost_build::configure()
        .skip_debug(["shoal.objects.SecretVersion", "shoal.dispatcher.SecretData"])
        // Small starting buffers per call (src/codec.rs says why).
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
