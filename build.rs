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
    // prost::Name on every message: the CLI finds a message's descriptor by
    // its full name to print the canonical JSON mapping.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    println!("cargo:rerun-if-changed=proto");
    // The commit deployd_build_info names; "unknown" outside a checkout
    // (a crate tarball). Rebuilt when HEAD moves.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for name in ["HEAD".to_string(), "packed-refs".to_string()]
        .into_iter()
        .chain(branch)
    {
        // A packed ref has no file; a path that never exists would rerun
        // this script on every build.
        if let Some(path) =
            git(&["rev-parse", "--git-path", &name]).filter(|p| PathBuf::from(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DEPLOYD_GIT_COMMIT={commit}");
    Ok(())
}
