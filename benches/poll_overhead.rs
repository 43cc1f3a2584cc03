//! Time a deploy spends above its critical path, and the API calls it
//! makes, at a 100 ms and a 1 s base poll interval.
//!
//! The sandbox runs at its default (realistic) speeds and records, for
//! every build and operation, when it finished and when a caller first saw
//! it finished. The sum of those detection lags is what polling added; the
//! critical path is a deploy's wall time (at the client) minus it. Each
//! interval is measured with Cloud Run's long poll (`:wait`) and, as the
//! baseline in the same run, with `:wait` refused as UNIMPLEMENTED so
//! operations are polled.
//!
//!     cargo bench --bench poll_overhead        (DEPLOYS=8)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use deployd::sandbox::faults::{Fault, FaultAction, InjectedError};
use deployd::sandbox::SandboxConfig;

struct Run {
    wall: Duration,
    lag: Duration,
    calls: f64,
}

async fn measure(poll: Duration, long_poll: bool, deploys: usize) -> Run {
    let h = Harness::start_full(SandboxConfig::default(), |c| {
        c.pipeline.poll_interval = poll;
    })
    .await;
    let (_, o) = deploy(&h, deploy_request("warmup", &example_app())).await;
    assert!(o.success, "{o:?}");
    if !long_poll {
        h.sandbox.inject(Fault {
            method: "run.projects.locations.operations.wait".into(),
            remaining: u32::MAX,
            action: FaultAction::Error(InjectedError::new(
                501,
                "UNIMPLEMENTED",
                "Method not implemented.",
            )),
        });
    }
    let (mut wall, mut lag) = (Duration::ZERO, Duration::ZERO);
    let calls_before = h.sandbox.requests_seen();
    for i in 0..deploys {
        let since = Instant::now();
        let (_, o) = deploy(&h, deploy_request(&format!("poll-{i}"), &example_app())).await;
        assert!(o.success, "{o:?}");
        wall += since.elapsed();
        let lags = h.sandbox.detection_lags(since);
        if std::env::var_os("SHOW_LAGS").is_some() {
            println!("  {lags:?}");
        }
        lag += lags.into_iter().map(|(_, d)| d).sum::<Duration>();
    }
    // The services' own requests (probes) are not API calls.
    let probes = h.sandbox.count("app.request") as u64;
    let calls = (h.sandbox.requests_seen() - calls_before).saturating_sub(probes);
    Run {
        wall: wall / deploys as u32,
        lag: lag / deploys as u32,
        calls: calls as f64 / deploys as f64,
    }
}

#[tokio::main]
async fn main() {
    let deploys = env_or("DEPLOYS", 8);
    println!("{deploys} sequential deploys per row; the sandbox at its default speeds");
    println!(
        "{:>6} {:>10} {:>9} {:>9} {:>9} {:>7} {:>11}",
        "poll", "cloud run", "wall ms", "lag ms", "crit ms", "ratio", "calls/dep"
    );
    for poll_ms in [100u64, 1000] {
        let poll = Duration::from_millis(poll_ms);
        let polled = measure(poll, false, deploys).await;
        let waited = measure(poll, true, deploys).await;
        for (name, r) in [("polled", &polled), (":wait", &waited)] {
            let crit = r.wall.saturating_sub(r.lag);
            println!(
                "{:>4}ms {:>10} {:>9.0} {:>9.0} {:>9.0} {:>6.3}x {:>11.1}",
                poll_ms,
                name,
                ms(r.wall),
                ms(r.lag),
                ms(crit),
                r.wall.as_secs_f64() / crit.as_secs_f64(),
                r.calls
            );
        }
        println!(
            "{poll_ms:>4}ms  :wait/polled: wall {:.3}, calls per deploy {:.3}",
            waited.wall.as_secs_f64() / polled.wall.as_secs_f64(),
            waited.calls / polled.calls
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
