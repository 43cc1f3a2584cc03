//! Detection lag: how long after a service turns healthy the verifier
//! declares it, for services that turn healthy at various times, with the
//! seed's schedule (5 attempts, waits of 2, 4, 8, 16 s) and with a capped
//! schedule (waits of 1, 2, 4, 4, 4... s, 16 attempts), side by side.
//!
//! Real probes against a local server that answers 503 until its moment,
//! then 200. Time runs 20x faster than real (waits scaled by 1/20); figures
//! are reported at full scale.
//!
//!     cargo bench --bench verify_lag

use std::sync::Arc;
use std::time::{Duration, Instant};

use deployd::pipeline::event::Reporter;
use deployd::pipeline::model::HealthCheckSpec;
use deployd::pipeline::verify::{self, ProbeContext};
use deployd::probe::HttpProber;
use tokio_util::sync::CancellationToken;

const SCALE: f64 = 20.0;

fn scaled(secs: f64) -> Duration {
    Duration::from_secs_f64(secs / SCALE)
}

/// A server that is unhealthy until `healthy_at` after `start`.
async fn server(start: Instant, healthy_at: Duration) -> String {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || async move {
        if start.elapsed() >= healthy_at {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn lag(spec: &HealthCheckSpec, healthy_at_s: f64, prober: &HttpProber) -> Option<f64> {
    let start = Instant::now();
    let url = server(start, scaled(healthy_at_s)).await;
    let v = verify::verify(
        prober,
        &url,
        spec,
        ProbeContext::default(),
        &Reporter::detached("bench".into()),
        &CancellationToken::new(),
    )
    .await;
    v.healthy
        .then(|| (start.elapsed().as_secs_f64() - healthy_at_s / SCALE) * SCALE)
}

#[tokio::main]
async fn main() {
    let prober = Arc::new(HttpProber::new().expect("prober"));
    let seed = HealthCheckSpec {
        attempts: 5,
        base_delay: scaled(2.0),
        timeout: Duration::from_secs(5),
        ..HealthCheckSpec::default()
    };
    let capped = HealthCheckSpec {
        attempts: 16,
        base_delay: scaled(1.0),
        max_delay: Some(scaled(4.0)),
        ..seed.clone()
    };
    println!("healthy at | seed 2,4,8,16 s (5 attempts, 30 s budget) | capped 1,2,4,4.. s (16 attempts, 55 s budget)");
    let mut sums = (0.0, 0.0, 0);
    for t in [0.5, 1.5, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 29.0, 40.0] {
        let a = lag(&seed, t, &prober).await;
        let b = lag(&capped, t, &prober).await;
        let show = |l: Option<f64>| {
            l.map_or("never declared (gave up)".to_string(), |l| {
                format!("lag {l:>5.1} s")
            })
        };
        println!("{t:>8.1} s | {:<42} | {}", show(a), show(b));
        if let (Some(a), Some(b)) = (a, b) {
            sums = (sums.0 + a, sums.1 + b, sums.2 + 1);
        }
    }
    if sums.2 > 0 {
        println!(
            "mean lag where both declared: seed {:.1} s, capped {:.1} s (ratio capped/seed {:.2})",
            sums.0 / sums.2 as f64,
            sums.1 / sums.2 as f64,
            sums.1 / sums.0
        );
    }
}
