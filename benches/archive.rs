//! Archive throughput on a generated tree of 50,000 files, against
//! `tar --exclude-vcs -czf` on the same tree, in the same run. Then a
//! 200 MiB tree (BIG_MIB): time against tar's, and the peak RSS packing it
//! adds (the archive goes to a temporary file, not memory).
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
    big(std::env::var("BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200));
}

/// Half incompressible, half text: 1 MiB files.
fn big(mib_total: usize) {
    if mib_total == 0 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seed: u64 = 7;
    for i in 0..mib_total {
        let data: Vec<u8> = if i % 2 == 0 {
            (0..1 << 20)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect()
        } else {
            (0..1u32 << 20)
                .map(|j| b"some text, repeated\n"[(j % 20) as usize])
                .collect()
        };
        std::fs::write(dir.path().join(format!("blob{i:04}.bin")), data).expect("write");
    }
    let rss_before = status_kib("VmRSS:");
    // Peak RSS from here on (Linux: "5" resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let a = archive::pack(dir.path(), u64::MAX, &[]).expect("pack");
    let ours = t.elapsed();
    let peak = status_kib("VmHWM:");
    let out = dir.path().with_extension("tgz");
    let t = Instant::now();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path())
        .arg(".")
        .status()
        .expect("tar runs");
    let tar = t.elapsed();
    assert!(status.success());
    let _ = std::fs::remove_file(&out);
    println!(
        "{mib_total} MiB tree: archive::pack {:.0} ms vs tar -czf {:.0} ms (ratio {:.2}); {:.1} MiB out; RSS {:.1} MiB before, peak {:.1} MiB while packing (+{:.1} MiB = {:.3} of the tree)",
        ms(ours),
        ms(tar),
        ours.as_secs_f64() / tar.as_secs_f64(),
        mib(a.blob.len()),
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak.saturating_sub(rss_before)) as f64 / 1024.0,
        (peak.saturating_sub(rss_before)) as f64 / 1024.0 / mib_total as f64
    );
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
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
