//! Compiles proto/ with protox (pure Rust), so a fresh machine needs no protoc.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/deployd/v1/deployd.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // tonic-reflection serves this set; compile_fds writes no descriptor itself.
    fs::write(
        out.join("deployd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
