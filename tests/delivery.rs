//! DORA delivery metrics from a scripted history of one service: the
//! GetDeliveryMetrics RPC, the fleet series on /metrics, and `deployd dora`
//! on the real binary with its shipped settings. Its own test binary: the
//! metrics recorder is process-wide and this test reads exact deltas.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::{AppResponse, BuildFault};

/// A checkout of the example app whose HEAD was committed `ago` before now.
fn checkout_committed(ago: Duration, version: &str) -> (Repo, i64) {
    let repo = Repo::new();
    for f in ["Dockerfile", "main.py"] {
        std::fs::copy(example_app().join(f), repo.path().join(f)).expect("copy example");
    }
    std::fs::write(repo.path().join("VERSION"), version).expect("write VERSION");
    let when = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        - ago.as_secs() as i64;
    let date = format!("@{when} +0000");
    repo.git(&["add", "-A"]);
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["commit", "-qm", "v"])
        .env("GIT_COMMITTER_DATE", &date)
        .env("GIT_AUTHOR_DATE", &date)
        .current_dir(repo.path())
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (repo, when)
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_keys_of_a_scripted_history() {
    let h = Harness::start().await;
    let before = h.metrics().await;
    let service = "dora";

    // 1. A success from a commit made 3 hours ago: lead time about 3 h.
    let (v1, t1) = checkout_committed(Duration::from_secs(3 * 3600), "1");
    let (_, o) = deploy(&h, deploy_request(service, v1.path())).await;
    assert!(o.success, "{o:?}");
    assert_eq!(o.source_commit_time.as_ref().map(|t| t.seconds), Some(t1));

    // 2. A build failure: no user saw it, so it is no change failure.
    h.sandbox.fail_next_build(BuildFault::StepFails {
        step: "build".into(),
        lines: vec!["ERROR: boom".into()],
    });
    let (v2, _) = checkout_committed(Duration::from_secs(7200), "2");
    let (_, o) = deploy(&h, deploy_request(service, v2.path())).await;
    assert!(!o.success && !o.rolled_back, "{o:?}");

    // 3. A revision that answers 500 after taking traffic: rolled back, a
    // change failure; the service is failing from here...
    h.sandbox.next_revision_answers(
        PROJECT,
        service,
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "x".into(),
        },
    );
    let (v3, _) = checkout_committed(Duration::from_secs(3600), "3");
    let mut req = deploy_request(service, v3.path());
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let failed_at = SystemTime::now();
    let (_, o) = deploy(&h, req).await;
    assert!(o.rolled_back, "{o:?}");

    // 4. ...until this success, from a commit made 1 hour ago.
    let (v4, _) = checkout_committed(Duration::from_secs(3600), "4");
    let (_, o) = deploy(&h, deploy_request(service, v4.path())).await;
    assert!(o.success, "{o:?}");
    let restored_within = failed_at.elapsed().expect("clock");

    // 5. A success from a directory that is not a git checkout: no commit
    // time, so no lead time.
    let plain = app_version("5");
    let (_, o) = deploy(&h, deploy_request(service, plain.path())).await;
    assert!(o.success && o.source_commit_time.is_none(), "{o:?}");

    let m = h
        .client()
        .await
        .get_delivery_metrics(proto::GetDeliveryMetricsRequest {
            target: Some(target(service)),
            window: None,
        })
        .await
        .expect("delivery metrics")
        .into_inner();
    let window = m.end_time.as_ref().map(|t| t.seconds).unwrap_or(0)
        - m.start_time.as_ref().map(|t| t.seconds).unwrap_or(0);
    assert_eq!(window, 30 * 86_400, "30 days by default");
    assert_eq!(m.successful_deployments, 3, "{m:?}");
    assert!((m.deployments_per_day - 0.1).abs() < 1e-6, "{m:?}");
    assert_eq!(
        m.deployment_frequency_band,
        proto::PerformanceBand::Medium as i32
    );
    // 3 h and 1 h; the plain directory has no commit time.
    assert_eq!(m.lead_time_samples, 2, "{m:?}");
    let lead = secs(m.lead_time_median.as_ref());
    assert!((lead - 2.0 * 3600.0).abs() < 120.0, "median lead {lead}");
    assert_eq!(m.lead_time_band, proto::PerformanceBand::Elite as i32);
    // 1 change failure of 4 that reached users (the build failure did not).
    assert_eq!(m.change_failures, 1, "{m:?}");
    assert!((m.change_failure_rate - 0.25).abs() < 1e-9, "{m:?}");
    assert_eq!(m.change_failure_band, proto::PerformanceBand::Low as i32);
    assert_eq!(m.restores, 1, "{m:?}");
    let restore = secs(m.time_to_restore_median.as_ref());
    assert!(
        restore > 0.0 && restore <= restored_within.as_secs_f64(),
        "restore {restore} s, within {restored_within:?}"
    );
    assert_eq!(m.time_to_restore_band, proto::PerformanceBand::Elite as i32);
    assert!(m.failing_since.is_none());

    // The fleet series counted the same events.
    let after = h.metrics().await;
    let delta =
        |name: &str, labels: &str| counter(&after, name, labels) - counter(&before, name, labels);
    assert_eq!(delta("deployd_change_failures_total", ""), 1.0);
    assert_eq!(delta("deployd_change_lead_time_seconds_count", ""), 2.0);
    let lead_sum = delta("deployd_change_lead_time_seconds_sum", "");
    assert!(
        (lead_sum - 4.0 * 3600.0).abs() < 120.0,
        "3 h + 1 h, was {lead_sum}"
    );
    assert_eq!(delta("deployd_time_to_restore_seconds_count", ""), 1.0);
    let restore_sum = delta("deployd_time_to_restore_seconds_sum", "");
    assert!(
        (restore_sum - restore).abs() < 1.0,
        "{restore_sum} vs {restore}"
    );

    // Refusals name the field.
    let mut c = h.client().await;
    for (req, field) in [
        (
            proto::GetDeliveryMetricsRequest {
                target: None,
                window: None,
            },
            "target",
        ),
        (
            proto::GetDeliveryMetricsRequest {
                target: Some(target("Not_A_Service")),
                window: None,
            },
            "target.service",
        ),
        (
            proto::GetDeliveryMetricsRequest {
                target: Some(target(service)),
                window: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            },
            "window",
        ),
        (
            proto::GetDeliveryMetricsRequest {
                target: Some(target(service)),
                window: Some(prost_types::Duration {
                    seconds: 400 * 86_400,
                    nanos: 0,
                }),
            },
            "window",
        ),
    ] {
        let e = c.get_delivery_metrics(req).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
}

/// `deployd dora` against `deployd serve --sandbox` with its shipped
/// settings: one success from a local checkout committed 2 days ago.
#[test]
fn dora_from_the_command_line() {
    let (repo, _) = checkout_committed(Duration::from_secs(2 * 86_400), "cli");
    let served = serve(
        Command::new(env!("CARGO_BIN_EXE_deployd")),
        &[
            "--sandbox",
            "--local-source-root",
            &repo.path().display().to_string(),
        ],
    );
    let server = format!("http://127.0.0.1:{}", served.grpc);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
            .args(args)
            .args(["--server", &server])
            .output()
            .expect("deployd runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let path = repo.path().display().to_string();
    let (code, _, err) = run(&[
        "deploy",
        &path,
        "--project",
        "demo-project",
        "--service",
        "cli-dora",
        "--allow-unauthenticated",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&[
        "dora",
        "--project",
        "demo-project",
        "--service",
        "cli-dora",
        "--since",
        "7d",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // The proto's canonical JSON mapping of DeliveryMetrics.
    let m: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(m["successfulDeployments"], 1, "{m}");
    assert_eq!(
        m["deploymentFrequencyBand"], "PERFORMANCE_BAND_HIGH",
        "1 in 7 days: {m}"
    );
    let lead: f64 = m["leadTimeMedian"]
        .as_str()
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.parse().ok())
        .expect("lead time as a Duration string");
    assert!((lead - 2.0 * 86_400.0).abs() < 300.0, "{m}");
    assert_eq!(m["leadTimeBand"], "PERFORMANCE_BAND_HIGH", "{m}");
    assert_eq!(m["changeFailureRate"], 0.0, "{m}");
    assert_eq!(m["changeFailureBand"], "PERFORMANCE_BAND_ELITE", "{m}");
    assert_eq!(
        m["timeToRestoreBand"], "PERFORMANCE_BAND_UNSPECIFIED",
        "no restore: {m}"
    );

    let (code, out, err) = run(&["dora", "--project", "demo-project", "--service", "cli-dora"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("(30.0 days)"), "{out}");
    for line in [
        "deployment frequency    1 successful (0.03 a day)",
        "lead time for changes   median 2d 0h over 1 commits",
        "change failure rate     0.0% (0 of 1 that reached users)",
        "time to restore         no restores",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    // An unknown unit is refused by the command line.
    let (code, _, err) = run(&["dora", "--project", "p", "--service", "s", "--since", "3y"]);
    assert_eq!(code, Some(2), "{err}");
}
