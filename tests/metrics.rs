//! The metrics endpoint after a deploy. In its own test binary: the
//! Prometheus recorder is process-wide, and other tests' runs would move the
//! counters this test measures exact deltas of.

mod common;

use common::*;

#[tokio::test]
async fn metrics_count_builds_deployments_and_health_checks() {
    let h = Harness::start().await;
    let before = h.metrics().await;
    let (_, o) = deploy(&h, deploy_request("counted", &example_app())).await;
    assert!(o.success);
    let after = h.metrics().await;
    let delta =
        |name: &str, labels: &str| counter(&after, name, labels) - counter(&before, name, labels);
    assert_eq!(delta("deployd_builds_total", "result=\"success\""), 1.0);
    assert_eq!(
        delta("deployd_build_attempts_total", "result=\"success\""),
        1.0
    );
    assert_eq!(
        delta("deployd_deployments_total", "result=\"success\""),
        1.0
    );
    assert_eq!(
        delta("deployd_deployments_first_time_success_total", ""),
        1.0
    );
    assert_eq!(
        delta(
            "deployd_health_check_duration_seconds_count",
            "origin=\"deploy\",result=\"healthy\""
        ),
        1.0
    );
    assert_eq!(
        delta(
            "deployd_preflight_checks_total",
            "check=\"permissions\",result=\"pass\""
        ),
        1.0
    );
    assert!(after.contains("# TYPE deployd_health_check_duration_seconds histogram"));
    assert!(after
        .contains("deployd_health_check_duration_seconds_bucket{origin=\"deploy\",result=\"healthy\",le=\"0.00048828125\"}"));
    assert!(after.contains("# HELP deployd_builds_total"));
    // Low cardinality: no service name in any label.
    assert!(!after.contains("counted"));
}
