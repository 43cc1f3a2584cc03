//! The cost of observability, in one run: deploy throughput on the sandbox
//! with metrics and tracing off, then on (Prometheus recorder and /metrics,
//! every span exported over OTLP to a local receiver; log lines stay off so
//! the bench's own output is readable); and the time to render /metrics
//! holding 1,000 deployments' worth of data.
//!
//!     cargo bench --bench observability

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use deployd::pipeline::event::Stage;
use deployd::telemetry::{self, metrics};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

const DEPLOYS: usize = 24;
const CONCURRENCY: usize = 4;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<usize>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        *self.0.lock().expect("lock") += n;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Deploys per second, CONCURRENCY at a time, each to its own service.
async fn throughput(h: &Harness, tag: &str) -> f64 {
    let t = Instant::now();
    let mut done = 0;
    while done < DEPLOYS {
        let batch: Vec<_> = (done..(done + CONCURRENCY).min(DEPLOYS))
            .map(|i| {
                let req = deploy_request(&format!("svc-{tag}-{i}"), &example_app());
                async move {
                    let (_, o) = deploy(h, req).await;
                    assert!(o.success, "{o:?}");
                }
            })
            .collect();
        done += batch.len();
        futures::future::join_all(batch).await;
    }
    DEPLOYS as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    // Off: no recorder installed, no subscriber: metrics and spans are no-ops.
    let h = Harness::start_without_metrics().await;
    throughput(&h, "warmup").await;
    let off = throughput(&h, "off").await;
    drop(h);

    // On: recorder and /metrics, OTLP export of every span.
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = sink.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    // The standard OTEL_* variables, as an operator would set them.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    std::env::set_var("RUST_LOG", "off");
    let tracing = telemetry::init(telemetry::LogFormat::Json, "off").expect("tracing");
    let h = Harness::start().await;
    throughput(&h, "warmup-on").await;
    let on = throughput(&h, "on").await;
    drop(h);
    tracing.shutdown().await;
    println!("deploy throughput on the sandbox ({DEPLOYS} deploys, {CONCURRENCY} at a time):");
    println!("  metrics and tracing off: {off:>6.2} deploys/s");
    println!(
        "  metrics and tracing on:  {on:>6.2} deploys/s  (ratio on/off {:.2}; {} spans exported)",
        on / off,
        sink.0.lock().map(|n| *n).unwrap_or(0)
    );

    // /metrics with 1,000 deployments' worth of data recorded.
    let handle = telemetry::prometheus().expect("recorder");
    for i in 0..1000u64 {
        for check in deployd::pipeline::CHECK_ORDER {
            metrics::preflight_check(check, if i % 50 == 0 { "fail" } else { "pass" });
        }
        metrics::build_attempt("success");
        metrics::build_finished("success", Duration::from_secs(30 + i % 60));
        for stage in Stage::DEPLOY_ORDER {
            metrics::stage_duration(stage, Duration::from_millis(100 + i));
        }
        metrics::health_check(
            metrics::ProbeOrigin::Deploy,
            "healthy",
            Duration::from_millis(20 + i % 200),
        );
        metrics::deployment_finished("success", Duration::from_secs(60 + i % 120), true);
    }
    let mut times = vec![];
    let mut bytes = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let text = telemetry::render(&handle);
        times.push(t.elapsed());
        bytes = text.len();
    }
    times.sort();
    println!(
        "render /metrics after 1,000 deployments: median {:.3} ms, p95 {:.3} ms, {bytes} bytes",
        times[25].as_secs_f64() * 1000.0,
        times[47].as_secs_f64() * 1000.0
    );
}
