//! The metrics' accounting rules, against the real daemon and its
//! /metrics. Its own test binary: the recorder is process-wide, and this
//! test measures exact deltas.

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::AppResponse;

/// What an SRE reads before anything happened, and what a deploy adds:
/// zero series, the build and process families, every Google API call by
/// api/method/code, and gRPC calls counted by how their streams ended.
#[tokio::test]
async fn accounting_adds_up() {
    let h = Harness::start().await;
    let before = h.metrics().await;
    // Registered at zero, so rate() works from the first scrape.
    for (name, labels) in [
        ("deployd_build_retries_total", "reason=\"UNAVAILABLE\""),
        ("deployd_build_attempts_total", "result=\"cancelled\""),
        ("deployd_rollbacks_total", "result=\"failure\""),
    ] {
        assert!(
            before
                .lines()
                .any(|l| l.starts_with(name) && l.contains(labels)),
            "{name}{{{labels}}} is not exported at zero:\n{before}"
        );
    }
    let info = before
        .lines()
        .find(|l| l.starts_with("deployd_build_info{"))
        .expect("deployd_build_info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && info.contains("commit=\"")
            && info.ends_with(" 1"),
        "{info}"
    );
    // (CPU seconds are a whole-second counter in the metrics crate: only
    // exported here, not yet above zero.)
    assert!(before.contains("\nprocess_cpu_seconds_total "), "{before}");
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = counter(&before, name, "");
        assert!(v > 0.0, "{name} = {v}");
    }

    let (_, o) = deploy(&h, deploy_request("accounted", &example_app())).await;
    assert!(o.success);
    let after = h.metrics().await;
    let delta =
        |name: &str, labels: &str| counter(&after, name, labels) - counter(&before, name, labels);
    // Each Google call, by api, method and code; operation polls by their
    // own method, not the call that started them.
    assert_eq!(
        delta(
            "deployd_google_api_calls_total",
            "api=\"cloudbuild\",method=\"cloudbuild.projects.locations.builds.create\",code=\"OK\""
        ),
        1.0
    );
    assert!(delta("deployd_google_api_calls_total", "api=\"run\",") >= 2.0);
    assert!(
        delta("deployd_google_api_calls_total", "code=\"NOT_FOUND\"") >= 1.0,
        "a first deploy finds no service: {after}"
    );
    assert!(
        delta(
            "deployd_google_api_call_duration_seconds_count",
            "api=\"storage\""
        ) >= 1.0
    );
    assert_eq!(
        delta(
            "deployd_grpc_requests_total",
            "method=\"Deploy\",code=\"OK\""
        ),
        1.0
    );
    assert_eq!(
        delta(
            "deployd_grpc_request_duration_seconds_count",
            "method=\"Deploy\""
        ),
        1.0
    );

    // A stream that outlives the caller's deadline is DEADLINE_EXCEEDED,
    // not the OK it started with.
    // The new revision answers its health check after 0.8 s: the run
    // outlives a 300 ms deadline.
    h.sandbox.next_revision_answers(
        PROJECT,
        "accounted",
        AppResponse {
            status: 200,
            delay: Duration::from_millis(800),
            body: "ok".into(),
        },
    );
    let app = app_version("2");
    let mut req = tonic::Request::new(deploy_request("accounted", app.path()));
    req.set_timeout(Duration::from_millis(300));
    let mut id = String::new();
    let mut ended_with = None;
    match h.client().await.deploy(req).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(e)) => id = e.deployment_id,
                    Ok(None) => break,
                    Err(s) => {
                        ended_with = Some(s.code());
                        break;
                    }
                }
            }
        }
        Err(s) => ended_with = Some(s.code()),
    }
    assert_eq!(ended_with, Some(tonic::Code::DeadlineExceeded));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = h.metrics().await;
        let counted = counter(
            &m,
            "deployd_grpc_requests_total",
            "code=\"DEADLINE_EXCEEDED\",method=\"Deploy\"",
        ) + counter(
            &m,
            "deployd_grpc_requests_total",
            "method=\"Deploy\",code=\"DEADLINE_EXCEEDED\"",
        );
        if counted == 1.0 {
            assert_eq!(
                counter(
                    &m,
                    "deployd_grpc_requests_total",
                    "method=\"Deploy\",code=\"OK\""
                ) - counter(
                    &before,
                    "deployd_grpc_requests_total",
                    "method=\"Deploy\",code=\"OK\""
                ),
                1.0,
                "the expired stream is not also OK"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The run itself is durable: it finishes without its caller.
    assert!(!id.is_empty(), "the stream started");
    let d = ended(&h, &id, Duration::from_secs(30)).await;
    assert_eq!(
        d.state,
        i32::from(proto::DeploymentState::Succeeded),
        "{d:?}"
    );
    the_oldest_running_deployment_is_exported(&h).await;
}

/// The stuck-deployment alert's gauge: the creation time of the oldest
/// run in progress here, and 0 once none runs. (Called by the test above:
/// metrics are process-wide, and its deltas are exact.)
async fn the_oldest_running_deployment_is_exported(h: &Harness) {
    let gauge = |m: &str| counter(m, "deployd_oldest_running_deployment_created_seconds", "");
    assert_eq!(gauge(&h.metrics().await), 0.0, "nothing runs yet");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let mut stream = deploy_with_a_running_build(h, "stuck").await;
    let created = gauge(&h.metrics().await);
    assert!(
        created >= before - 1.0 && created <= before + 30.0,
        "{created} vs {before}"
    );
    let id = running_id(h, "stuck").await;
    h.client()
        .await
        .cancel_deployment(proto::CancelDeploymentRequest { id: id.clone() })
        .await
        .expect("cancel");
    while let Ok(Some(_)) = stream.message().await {}
    ended(h, &id, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&h.metrics().await) != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "still exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
