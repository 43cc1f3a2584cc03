//! Archive throughput on a generated tree of 50,000 files, against
//! `tar --exclude-vcs -czf` on the same tree, in the same run.
//!
//!     cargo bench --bench archive

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deployd::pipeline::archive;

const DIRS: usize = 500;
const FILES_PER_DIR: usize = 100;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = generate(dir.path());
    let files = DIRS * FILES_PER_DIR;
    println!(
        "tree: {files} files, {:.1} MiB (plus a .git directory both tools skip)",
        mib(bytes)
    );

    let mut ours = vec![];
    let mut size = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let a = archive::pack(dir.path(), u64::MAX, &[]).expect("pack");
        ours.push(t.elapsed());
        size = a.blob.len() as usize;
        assert_eq!(a.files, files + 1, "the .gitignore is sent too");
    }
    let mut tar = vec![];
    let out = dir.path().with_extension("tgz");
    for _ in 0..RUNS {
        let t = Instant::now();
        let status = Command::new("tar")
            .args(["--exclude-vcs", "-czf"])
            .arg(&out)
            .arg("-C")
            .arg(dir.path())
            .arg(".")
            .status()
            .expect("tar runs");
        assert!(status.success());
        tar.push(t.elapsed());
    }
    let tar_size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    let (o, t) = (median(&mut ours), median(&mut tar));
    println!(
        "deployd archive::pack: {:>7.0} ms, {:>8.0} files/s, {:>6.1} MiB/s in, {:.2} MiB out",
        ms(o),
        files as f64 / o.as_secs_f64(),
        mib(bytes) / o.as_secs_f64(),
        mib(size as u64)
    );
    println!(
        "tar --exclude-vcs -czf: {:>7.0} ms, {:>8.0} files/s, {:>6.1} MiB/s in, {:.2} MiB out",
        ms(t),
        files as f64 / t.as_secs_f64(),
        mib(bytes) / t.as_secs_f64(),
        mib(tar_size)
    );
    println!(
        "ratio deployd/tar wall time: {:.2} (median of {RUNS})",
        o.as_secs_f64() / t.as_secs_f64()
    );
}

/// Source-like text files; returns their total size.
fn generate(root: &Path) -> u64 {
    let mut total = 0;
    let mut seed: u64 = 42;
    for d in 0..DIRS {
        let dir = root.join(format!("pkg{:03}/module{}", d % 50, d));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let lines = 5 + (seed >> 59) as usize;
            let mut text = String::new();
            for l in 0..lines {
                text.push_str(&format!(
                    "fn item_{d}_{f}_{l}(x: u64) -> u64 {{ x.wrapping_mul({}) }}\n",
                    seed >> (l % 32)
                ));
            }
            total += text.len() as u64;
            std::fs::write(dir.join(format!("file{f}.rs")), text).expect("write");
        }
    }
    std::fs::create_dir_all(root.join(".git/objects")).expect("mkdir");
    std::fs::write(root.join(".git/objects/pack"), vec![0u8; 1 << 20]).expect("write");
    std::fs::write(root.join(".gitignore"), "target/\n").expect("write");
    total
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
