//! deployd under load, as users run it: the release binary, `serve` under
//! a soft open-file limit of 1,024 (`ulimit -S -n 1024`; the daemon raises
//! it to the hard limit at start, as servers do), with the sandbox embedded
//! (`serve --sandbox`) and split out (`serve --gcp-endpoint` to a second
//! process). Deploys of different services come over gRPC from this
//! process, at 1, 100, 500 and 1,000 at once. Per level: deploys/s, p50 and
//! p95 time to the outcome, the daemon's peak RSS, its open fds at the peak
//! and 10 s after, against what it held after start. Then retention, split
//! out: RSS after 100 and after 1,000 deploys (LANES at a time, each lane
//! one deploy after another). Last, one deploy of a generated BIG_MIB
//! (200) MiB source, split out: the daemon's peak RSS against its RSS
//! before.
//!
//!     cargo bench --bench load   (LEVELS=1,100,500,1000 RETENTION=1000 LANES=10 MODES=split,embedded BIG_MIB=200)

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{deploy_request, example_app, free_port, wait_for_port, ChildGuard};
use deployd::api::proto::{self, deployer_client::DeployerClient, event::Kind};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_deployd");
/// Deploy streams per gRPC connection (HTTP/2 servers cap concurrent streams).
const STREAMS_PER_CHANNEL: usize = 100;

struct Daemon {
    guard: ChildGuard,
    grpc: u16,
    _state: tempfile::TempDir,
    /// The split-out sandbox process.
    sandbox: Option<ChildGuard>,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    fn sandbox_pid(&self) -> Option<u32> {
        self.sandbox.as_ref().map(|s| s.child.id())
    }
}

/// CPU time (user + system) a process has used.
fn cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// `serve` under `ulimit -S -n 1024`, started through sh so the limit is
/// the one a user's shell would give it.
fn start(mode: &str, source_root: &Path) -> Daemon {
    let state = tempfile::tempdir().expect("state dir");
    let grpc = free_port();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{grpc}"),
        "--metrics-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--local-source-root".into(),
        source_root.display().to_string(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let sandbox = match mode {
        "embedded" => {
            args.push("--sandbox".into());
            None
        }
        _ => {
            let (port, api) = (free_port(), free_port());
            let mut child = Command::new(BIN)
                .args(["serve", "--sandbox", "--sandbox-listen"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
                .arg("--state-dir")
                .arg(state.path().join("sandbox"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sandbox starts");
            wait_for_port(port, &mut child);
            args.push("--gcp-endpoint".into());
            args.push(format!("http://127.0.0.1:{port}"));
            Some(ChildGuard::new(child))
        }
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 1024 && exec "$0" "$@""#)
        .arg(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon starts");
    wait_for_port(grpc, &mut child);
    Daemon {
        guard: ChildGuard::new(child),
        grpc,
        _state: state,
        sandbox,
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn soft_nofile(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                })
        })
        .unwrap_or_default()
}

/// Resets the peak RSS (VmHWM) so each level reports its own.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

async fn channels(port: u16, n: usize) -> Vec<DeployerClient<Channel>> {
    let mut out = vec![];
    for _ in 0..n.div_ceil(STREAMS_PER_CHANNEL).max(1) {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        out.push(DeployerClient::new(ch));
    }
    out
}

/// One deploy to its outcome: (took, succeeded, why not).
async fn one(
    mut client: DeployerClient<Channel>,
    service: String,
    dir: PathBuf,
) -> (Duration, bool, String) {
    let t = Instant::now();
    let mut req = deploy_request(&service, &dir);
    req.health_check = None;
    let mut stream = match client.deploy(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (t.elapsed(), false, format!("{}: {}", e.code(), e.message())),
    };
    loop {
        match stream.message().await {
            Ok(Some(proto::Event {
                kind: Some(Kind::Outcome(o)),
                ..
            })) => {
                let why = o
                    .error
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                return (t.elapsed(), o.success, why);
            }
            Ok(Some(_)) => {}
            Ok(None) => return (t.elapsed(), false, "stream ended without an outcome".into()),
            Err(e) => return (t.elapsed(), false, format!("{}: {}", e.code(), e.message())),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn level(d: &Daemon, mode: &str, n: usize, dir: &Path, baseline_fds: usize) {
    let pid = d.pid();
    reset_peak(pid);
    let clients = channels(d.grpc, n).await;
    let running = Arc::new(AtomicBool::new(true));
    let peak_fds = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (running, peak_fds) = (running.clone(), peak_fds.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                peak_fds.fetch_max(fds(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let cpu_before = (cpu(pid), d.sandbox_pid().map(cpu));
    let t = Instant::now();
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let c = clients[i / STREAMS_PER_CHANNEL].clone();
            tokio::spawn(one(c, format!("{mode}-{n}-{i}"), dir.to_path_buf()))
        })
        .collect();
    let mut took = vec![];
    let mut failures = vec![];
    for r in runs {
        let (d, ok, why) = r.await.expect("deploy task");
        took.push(d);
        if !ok {
            failures.push(why);
        }
    }
    let wall = t.elapsed();
    let per_deploy = |before: Duration, after: Duration| {
        (after.saturating_sub(before)).as_secs_f64() * 1000.0 / n as f64
    };
    let daemon_cpu = per_deploy(cpu_before.0, cpu(pid));
    let sandbox_cpu = match (cpu_before.1, d.sandbox_pid()) {
        (Some(b), Some(p)) => format!("{:.0}", per_deploy(b, cpu(p))),
        _ => "-".into(),
    };
    running.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let peak_rss = status_kib(pid, "VmHWM:");
    drop(clients);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = fds(pid);
    took.sort();
    println!(
        "{mode:>8} {n:>5} {:>4}/{n:<5} {:>8.1} {:>8.0} {:>8.0} {:>8.1} {:>7} {:>9} {:>+9} {daemon_cpu:>7.0} {sandbox_cpu:>7}",
        n - failures.len(),
        n as f64 / wall.as_secs_f64(),
        percentile(&took, 0.50).as_secs_f64() * 1000.0,
        percentile(&took, 0.95).as_secs_f64() * 1000.0,
        peak_rss as f64 / 1024.0,
        peak_fds.load(Ordering::Relaxed),
        after,
        after as i64 - baseline_fds as i64,
    );
    for f in failures.iter().take(3) {
        println!("           failed: {f}");
    }
}

/// `total` deploys, `lanes` at a time; RSS (MiB) after the first 100 and
/// after all.
async fn retention(d: &Daemon, total: usize, lanes: usize, dir: &Path) -> (f64, f64, usize) {
    let pid = d.pid();
    let clients = channels(d.grpc, lanes).await;
    let mut done = 0;
    let mut failed = 0;
    let mut at_100 = 0.0;
    while done < total {
        let batch = lanes.min(total - done);
        let runs: Vec<_> = (0..batch)
            .map(|i| {
                let c = clients[i / STREAMS_PER_CHANNEL].clone();
                tokio::spawn(one(c, format!("keep-{}", done + i), dir.to_path_buf()))
            })
            .collect();
        for r in runs {
            if !r.await.expect("deploy task").1 {
                failed += 1;
            }
        }
        done += batch;
        if done == 100.min(total) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            at_100 = status_kib(pid, "VmRSS:") as f64 / 1024.0;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (at_100, status_kib(pid, "VmRSS:") as f64 / 1024.0, failed)
}

/// `mib` MiB of files: half incompressible, half text, 1 MiB each.
fn generate_big_tree(dir: &Path, mib: usize) -> u64 {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut seed: u64 = 7;
    let mut total = 0;
    for i in 0..mib {
        let data: Vec<u8> = if i % 2 == 0 {
            (0..1024 * 1024)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect()
        } else {
            (0..1024 * 1024u32)
                .map(|j| b"deployd load bench text\n"[(j % 24) as usize])
                .collect()
        };
        total += data.len() as u64;
        std::fs::write(dir.join(format!("blob-{i:04}.bin")), data).expect("write");
    }
    total
}

/// The app without its generated assets (the warm-up deploy).
fn dir_of_small(app: &Path) -> PathBuf {
    let small = app.with_file_name("small");
    if !small.exists() {
        common::copy_dir(&example_app(), &small);
    }
    small
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::main]
async fn main() {
    let levels: Vec<usize> = list("LEVELS", "1,100,500,1000")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let retention_deploys = common::env_or("RETENTION", 1000);
    let lanes = common::env_or("LANES", 10);
    let dir = example_app();
    let root = dir.parent().expect("examples dir").to_path_buf();
    println!(
        "{:>8} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>7} {:>7}",
        "mode",
        "n",
        "ok",
        "deploy/s",
        "p50 ms",
        "p95 ms",
        "peak MiB",
        "peak fd",
        "fd +10s",
        "vs start",
        "cpu ms",
        "sbx ms"
    );
    println!(
        "(cpu ms: the daemon's CPU per deploy, the sandbox's included when embedded; sbx ms: the split-out sandbox's)"
    );
    for mode in list("MODES", "split,embedded") {
        let d = start(&mode, &root);
        // The repository and bucket are created once, outside the levels.
        let clients = channels(d.grpc, 1).await;
        let (_, ok, why) = one(clients[0].clone(), format!("{mode}-warmup"), dir.clone()).await;
        assert!(ok, "warm-up deploy: {why}");
        drop(clients);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let baseline = fds(d.pid());
        println!(
            "{mode:>8}   after start and one deploy: {baseline} fds, {:.1} MiB RSS, open-file limit soft/hard {}",
            status_kib(d.pid(), "VmRSS:") as f64 / 1024.0,
            soft_nofile(d.pid())
        );
        for &n in &levels {
            level(&d, &mode, n, &dir, baseline).await;
        }
    }
    let big_mib = common::env_or("BIG_MIB", 200);
    if big_mib > 0 {
        let tree = tempfile::tempdir().expect("big tree");
        let app = tree.path().join("app");
        common::copy_dir(&dir, &app);
        let bytes = generate_big_tree(&app.join("assets"), big_mib);
        let d = start("split", tree.path());
        let clients = channels(d.grpc, 1).await;
        let (_, ok, why) = one(clients[0].clone(), "big-warmup".into(), dir_of_small(&app)).await;
        assert!(ok, "warm-up deploy: {why}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = status_kib(d.pid(), "VmRSS:") as f64 / 1024.0;
        reset_peak(d.pid());
        let (took, ok, why) = one(clients[0].clone(), "big".into(), app.clone()).await;
        let peak = status_kib(d.pid(), "VmHWM:") as f64 / 1024.0;
        println!(
            "one {:.0} MiB source (split): {} in {:.1} s; daemon RSS {before:.1} MiB before, peak {peak:.1} MiB (+{:.1} MiB, {:.3} of the source's size){}",
            bytes as f64 / (1024.0 * 1024.0),
            if ok { "deployed" } else { "FAILED" },
            took.as_secs_f64(),
            peak - before,
            (peak - before) * 1024.0 * 1024.0 / bytes as f64,
            if ok { String::new() } else { format!(": {why}") }
        );
    }
    if retention_deploys > 0 {
        let d = start("split", &root);
        let (at_100, at_end, failed) = retention(&d, retention_deploys, lanes, &dir).await;
        println!(
            "retention (split, {lanes} at a time): RSS {at_100:.1} MiB after 100 deploys, {at_end:.1} MiB after {retention_deploys} ({failed} failed): ratio {:.3}",
            at_end / at_100.max(0.001)
        );
    }
}
