//! Deploys under transient Google failures. The sandbox fails about 20% of
//! all API calls at random (429, 500, 503, connection resets, slow
//! answers), never more than twice in a row for one call, so every call
//! succeeds within deployd's retry budget of three attempts. Reports the
//! share of deploys that succeed, streams that never end, and outcomes
//! that are wrong, against a baseline of the same deploys without faults
//! measured in the same run.
//!
//!     cargo bench --bench soak            (DEPLOYS=200 CONCURRENCY=20)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use deployd::api::proto::{self, event::Kind};
use deployd::sandbox::faults::Chaos;
use futures::StreamExt;

#[derive(Default, Debug)]
struct Tally {
    succeeded: usize,
    failed: usize,
    stuck: usize,
    wrong: usize,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() {
    let deploys = env_or("DEPLOYS", 200);
    let concurrency = env_or("CONCURRENCY", 20);
    let h = Harness::start_without_metrics().await;
    // Creates the repository and bucket once, outside the measurement.
    let (_, o) = deploy(&h, deploy_request("soak-warmup", &example_app())).await;
    assert!(o.success, "{o:?}");

    let t = Instant::now();
    let baseline = run(&h, "base", deploys, concurrency).await;
    let baseline_wall = t.elapsed();

    h.sandbox.chaos(Chaos {
        rate: 0.2,
        max_consecutive: 2,
        slow: Duration::from_millis(100),
        seed: 20261201,
    });
    let calls_before = h.sandbox.requests().len();
    let t = Instant::now();
    let chaos = run(&h, "chaos", deploys, concurrency).await;
    let chaos_wall = t.elapsed();
    let calls = h.sandbox.requests().len() - calls_before;
    let injected = h.sandbox.chaos_injected();

    let pct = |n: usize| 100.0 * n as f64 / deploys as f64;
    println!(
        "baseline, no faults: {}/{deploys} succeeded ({:.1}%), {} stuck, {} wrong, {:.1}s",
        baseline.succeeded,
        pct(baseline.succeeded),
        baseline.stuck,
        baseline.wrong,
        baseline_wall.as_secs_f64()
    );
    println!(
        "chaos, {injected} of {calls} API calls failed ({:.1}%): {}/{deploys} succeeded ({:.1}%), {} stuck, {} wrong, {:.1}s",
        100.0 * injected as f64 / calls.max(1) as f64,
        chaos.succeeded,
        pct(chaos.succeeded),
        chaos.stuck,
        chaos.wrong,
        chaos_wall.as_secs_f64()
    );
    println!(
        "ratio of successes chaos/baseline {:.3}; wall time chaos/baseline {:.2}",
        chaos.succeeded as f64 / baseline.succeeded.max(1) as f64,
        chaos_wall.as_secs_f64() / baseline_wall.as_secs_f64()
    );
    for f in chaos.failures.iter().take(10) {
        println!("  failed: {f}");
    }
}

async fn run(h: &Harness, prefix: &str, deploys: usize, concurrency: usize) -> Tally {
    let results: Vec<Result<proto::Outcome, String>> = futures::stream::iter(0..deploys)
        .map(|i| one(h, format!("{prefix}-{i}")))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut t = Tally::default();
    for r in results {
        match r {
            Err(stuck) => {
                t.stuck += 1;
                t.failures.push(stuck);
            }
            Ok(o) if o.success => {
                // Success means verified, with a revision and an image.
                if !o.verified || o.revision.is_empty() || o.image.is_empty() {
                    t.wrong += 1;
                }
                t.succeeded += 1;
            }
            Ok(o) => {
                t.failed += 1;
                match &o.error {
                    Some(f) if !f.code.is_empty() && !f.remediation.is_empty() => {
                        t.failures.push(format!("[{}] {}", f.code, f.message))
                    }
                    _ => t.wrong += 1,
                }
            }
        }
    }
    t
}

/// One deploy to its outcome; `Err` when the stream stalls or ends
/// without one.
async fn one(h: &Harness, service: String) -> Result<proto::Outcome, String> {
    let mut client = h.client().await;
    let mut stream = client
        .deploy(deploy_request(&service, &example_app()))
        .await
        .map_err(|s| format!("{service}: refused: {s}"))?
        .into_inner();
    let mut outcome = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), stream.message()).await {
            Err(_) => return Err(format!("{service}: no event for 120 s")),
            Ok(Err(s)) => return Err(format!("{service}: stream error {s}")),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(e))) => {
                if let Some(Kind::Outcome(o)) = e.kind {
                    outcome = Some(o);
                }
            }
        }
    }
    outcome.ok_or_else(|| format!("{service}: the stream ended without an outcome"))
}
