//! Preflight's wall time against the sum of its API calls' latencies, with
//! the sandbox answering every call after a realistic round trip. The ratio
//! shows what running the checks concurrently buys: 1.0 would be serial.
//!
//!     cargo bench --bench preflight

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use deployd::sandbox::SandboxConfig;

const RUNS: usize = 10;

#[tokio::main]
async fn main() {
    for latency_ms in [20u64, 50, 100] {
        let h = Harness::start_with(SandboxConfig {
            latency: Duration::from_millis(latency_ms),
            ..SandboxConfig::fast()
        })
        .await;
        // The first preflight creates the repository and bucket; measure the
        // steady state after it.
        run(&h).await;
        let mut walls = vec![];
        let mut sums = vec![];
        let mut calls = 0;
        for _ in 0..RUNS {
            let before = h.sandbox.requests().len();
            let t = Instant::now();
            run(&h).await;
            walls.push(t.elapsed());
            let reqs = h.sandbox.requests();
            let mine = &reqs[before..];
            calls = mine.len();
            sums.push(mine.iter().map(|r| r.duration).sum::<Duration>());
        }
        let wall = median(&mut walls);
        let sum = median(&mut sums);
        println!(
            "latency {latency_ms:>3} ms/call: {calls} calls, sum of call latencies {:>6.1} ms, preflight wall time {:>6.1} ms, ratio wall/sum {:.2}",
            ms(sum),
            ms(wall),
            wall.as_secs_f64() / sum.as_secs_f64()
        );
    }
}

async fn run(h: &Harness) {
    let o = preflight(h).await;
    assert!(o.success, "{:?}", o.checks);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
