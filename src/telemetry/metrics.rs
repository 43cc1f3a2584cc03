//! Every metric deployd exports, declared once in [`SPEC`] (name, type,
//! labels, meaning) and recorded through the functions below. Names follow
//! `deployd_<thing>_<unit>`, counters end in `_total`, and labels are low
//! cardinality: never a service name, URL, revision or deployment id.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::pipeline::event::Stage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Rendered by hand next to the recorder's output (HDR quantiles).
    Summary,
}

pub struct MetricSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

pub const BUILDS: &str = "deployd_builds_total";
pub const BUILD_ATTEMPTS: &str = "deployd_build_attempts_total";
pub const BUILD_RETRIES: &str = "deployd_build_retries_total";
pub const BUILD_DURATION: &str = "deployd_build_duration_seconds";
pub const DEPLOYMENTS: &str = "deployd_deployments_total";
pub const FIRST_TIME_SUCCESS: &str = "deployd_deployments_first_time_success_total";
pub const DEPLOY_DURATION: &str = "deployd_deploy_duration_seconds";
pub const IN_PROGRESS: &str = "deployd_deployments_in_progress";
pub const STAGE_DURATION: &str = "deployd_stage_duration_seconds";
pub const PREFLIGHT_CHECKS: &str = "deployd_preflight_checks_total";
pub const HEALTH_CHECK_DURATION: &str = "deployd_health_check_duration_seconds";
pub const GRPC_REQUESTS: &str = "deployd_grpc_requests_total";
pub const ROLLBACKS: &str = "deployd_rollbacks_total";
pub const FAILURES: &str = "deployd_failures_total";
pub const HEALTH_CHECK_LATENCY_HDR: &str = super::hdr::NAME;
pub const API_RETRIES: &str = "deployd_api_retries_total";
pub const RESUMED: &str = "deployd_deployments_resumed_total";
pub const AUTH_REFUSALS: &str = "deployd_auth_refusals_total";
pub const CANARY_ANALYSES: &str = "deployd_canary_analyses_total";
pub const CANARY_STEPS: &str = "deployd_canary_steps_total";
pub const CANARY_ABORTS: &str = "deployd_canary_aborts_total";

pub const SPEC: &[MetricSpec] = &[
    MetricSpec {
        name: CANARY_ANALYSES,
        kind: Kind::Counter,
        labels: &["source", "result"],
        help: "Canary step analyses by signal (probes, monitoring, prometheus) and result (pass, fail, inconclusive); an extended step counts once per bake.",
    },
    MetricSpec {
        name: CANARY_STEPS,
        kind: Kind::Counter,
        labels: &["verdict", "action"],
        help: "Canary steps judged, by verdict (pass, fail, inconclusive) and what the rollout did (next, promote, extend, abort, pass_inconclusive).",
    },
    MetricSpec {
        name: CANARY_ABORTS,
        kind: Kind::Counter,
        labels: &[],
        help: "Canaries aborted by their analysis: traffic went back to the stable revision.",
    },
    MetricSpec {
        name: AUTH_REFUSALS,
        kind: Kind::Counter,
        labels: &["rpc", "reason"],
        help: "Calls refused by RPC and reason: a credential problem (missing, malformed, unknown_token, expired, wrong_audience, bad_signature, ...) or denied by the policy. Never labelled by principal.",
    },
    MetricSpec {
        name: RESUMED,
        kind: Kind::Counter,
        labels: &["how", "result"],
        help: "Deployments a daemon resumed after their daemon stopped, by how (resumed: its own, after a restart; taken_over: another daemon's, after its lease expired) and final result.",
    },
    MetricSpec {
        name: API_RETRIES,
        kind: Kind::Counter,
        labels: &["call", "code"],
        help: "Google API calls of the deploy stages retried, by API method and the canonical code (UNAVAILABLE for transport failures) that caused the retry.",
    },
    MetricSpec {
        name: BUILDS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Builds by final result (success, failure, cancelled), after all attempts.",
    },
    MetricSpec {
        name: BUILD_ATTEMPTS,
        kind: Kind::Counter,
        labels: &["outcome"],
        help: "Build attempts by outcome (success, retriable_error, permanent_error).",
    },
    MetricSpec {
        name: BUILD_RETRIES,
        kind: Kind::Counter,
        labels: &["reason"],
        help:
            "Build attempts retried, by the canonical code or build status that caused the retry.",
    },
    MetricSpec {
        name: BUILD_DURATION,
        kind: Kind::Histogram,
        labels: &[],
        help: "Wall time of the build stage's remote builds, all attempts included.",
    },
    MetricSpec {
        name: DEPLOYMENTS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Deploy runs by result (success, failure, rolled_back, canary_aborted, cancelled).",
    },
    MetricSpec {
        name: FIRST_TIME_SUCCESS,
        kind: Kind::Counter,
        labels: &[],
        help: "Deploy runs that succeeded with no retry anywhere.",
    },
    MetricSpec {
        name: DEPLOY_DURATION,
        kind: Kind::Histogram,
        labels: &["result"],
        help: "Wall time of whole deploy runs.",
    },
    MetricSpec {
        name: IN_PROGRESS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Deploy runs currently running.",
    },
    MetricSpec {
        name: STAGE_DURATION,
        kind: Kind::Histogram,
        labels: &["stage"],
        help: "Wall time of each pipeline stage.",
    },
    MetricSpec {
        name: PREFLIGHT_CHECKS,
        kind: Kind::Counter,
        labels: &["check", "result"],
        help: "Preflight check verdicts by check and result (pass, fail, inconclusive).",
    },
    MetricSpec {
        name: HEALTH_CHECK_DURATION,
        kind: Kind::Histogram,
        labels: &["result"],
        help: "Health-check attempt latency (time to full body) by result (healthy, unhealthy).",
    },
    MetricSpec {
        name: GRPC_REQUESTS,
        kind: Kind::Counter,
        labels: &["method", "code"],
        help: "gRPC requests by method and status code (OK for streams that started).",
    },
    MetricSpec {
        name: ROLLBACKS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Automatic rollbacks by result (success: the previous revision serves and is healthy; failure).",
    },
    MetricSpec {
        name: FAILURES,
        kind: Kind::Counter,
        labels: &["stage", "code"],
        help: "Failed deploy runs by the stage that failed and the outcome's failure code (e.g. BUILD_FAILED, UNHEALTHY).",
    },
    MetricSpec {
        name: HEALTH_CHECK_LATENCY_HDR,
        kind: Kind::Summary,
        labels: &["quantile"],
        help: "Exact health-check latency percentiles (0.5, 0.95, 0.99) of this instance over the last 10 minutes (HDR histogram).",
    },
];

/// Bucket boundaries, so histograms aggregate across replicas.
pub fn buckets_for(name: &str) -> &'static [f64] {
    match name {
        HEALTH_CHECK_DURATION => &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
        _ => &[
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
        ],
    }
}

/// Registers HELP text; call after the recorder is installed.
pub fn describe() {
    for m in SPEC {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help),
            Kind::Summary => {}
        }
    }
}

/// Exports the known series at zero from the start, so success ratios and
/// alerts have data before the first failure (or first clean deploy).
pub fn register_defaults() {
    for result in [
        "success",
        "failure",
        "rolled_back",
        "canary_aborted",
        "cancelled",
    ] {
        counter!(DEPLOYMENTS, "result" => result).increment(0);
    }
    counter!(CANARY_ABORTS).increment(0);
    for source in ["probes", "monitoring", "prometheus"] {
        for result in ["pass", "fail", "inconclusive"] {
            counter!(CANARY_ANALYSES, "source" => source, "result" => result).increment(0);
        }
    }
    for (verdict, action) in [
        ("pass", "next"),
        ("pass", "promote"),
        ("fail", "abort"),
        ("inconclusive", "extend"),
        ("inconclusive", "abort"),
        ("inconclusive", "pass_inconclusive"),
    ] {
        counter!(CANARY_STEPS, "verdict" => verdict, "action" => action).increment(0);
    }
    for result in ["success", "failure", "cancelled"] {
        counter!(BUILDS, "result" => result).increment(0);
    }
    for outcome in ["success", "retriable_error", "permanent_error"] {
        counter!(BUILD_ATTEMPTS, "outcome" => outcome).increment(0);
    }
    for result in ["success", "failure"] {
        counter!(ROLLBACKS, "result" => result).increment(0);
    }
    counter!(FIRST_TIME_SUCCESS).increment(0);
    gauge!(IN_PROGRESS).increment(0.0);
}

pub fn build_attempt(outcome: &'static str) {
    counter!(BUILD_ATTEMPTS, "outcome" => outcome).increment(1);
}

pub fn api_retry(call: &'static str, code: &'static str) {
    counter!(API_RETRIES, "call" => call, "code" => code).increment(1);
}

pub fn build_retry(reason: &'static str) {
    counter!(BUILD_RETRIES, "reason" => reason).increment(1);
}

pub fn build_finished(result: &'static str, duration: Duration) {
    counter!(BUILDS, "result" => result).increment(1);
    histogram!(BUILD_DURATION).record(duration.as_secs_f64());
}

pub fn deployment_finished(result: &'static str, duration: Duration, no_retries: bool) {
    counter!(DEPLOYMENTS, "result" => result).increment(1);
    if result == "success" && no_retries {
        counter!(FIRST_TIME_SUCCESS).increment(1);
    }
    histogram!(DEPLOY_DURATION, "result" => result).record(duration.as_secs_f64());
}

pub fn deployment_resumed(how: &'static str, result: &'static str) {
    counter!(RESUMED, "how" => how, "result" => result).increment(1);
}

pub fn stage_duration(stage: Stage, duration: Duration) {
    histogram!(STAGE_DURATION, "stage" => stage.as_str()).record(duration.as_secs_f64());
}

pub fn preflight_check(check: &str, result: &'static str) {
    counter!(PREFLIGHT_CHECKS, "check" => check.to_string(), "result" => result).increment(1);
}

pub fn health_check(result: &'static str, duration: Duration) {
    histogram!(HEALTH_CHECK_DURATION, "result" => result).record(duration.as_secs_f64());
    super::hdr::record(duration);
}

pub fn failure(stage: &'static str, code: &str) {
    counter!(FAILURES, "stage" => stage, "code" => code.to_string()).increment(1);
}

pub fn canary_analysis(source: &str, result: &'static str) {
    counter!(CANARY_ANALYSES, "source" => source.to_string(), "result" => result).increment(1);
}

pub fn canary_step(verdict: &'static str, action: &'static str) {
    counter!(CANARY_STEPS, "verdict" => verdict, "action" => action).increment(1);
}

pub fn canary_abort() {
    counter!(CANARY_ABORTS).increment(1);
}

pub fn rollback(result: &'static str) {
    counter!(ROLLBACKS, "result" => result).increment(1);
}

/// A call refused for its credential or by the policy (never labelled
/// with the principal).
pub fn auth_refused(rpc: &'static str, reason: &'static str) {
    counter!(AUTH_REFUSALS, "rpc" => rpc, "reason" => reason).increment(1);
}

pub fn grpc_request(method: &'static str, code: &'static str) {
    counter!(GRPC_REQUESTS, "method" => method, "code" => code).increment(1);
}

/// Counts a deploy as in progress for as long as it lives, even when the
/// run ends by panic or cancellation.
pub struct InProgress(());

impl InProgress {
    pub fn start() -> Self {
        gauge!(IN_PROGRESS).increment(1.0);
        InProgress(())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        gauge!(IN_PROGRESS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../dashboards/README.md");

    /// The documented table and SPEC must list the same metrics, types and labels.
    #[test]
    fn documentation_matches_the_spec() {
        let rows: Vec<Vec<String>> = DOC
            .lines()
            .filter(|l| l.starts_with("| `deployd_"))
            .map(|l| l.split('|').map(|c| c.trim().replace('`', "")).collect())
            .collect();
        assert_eq!(rows.len(), SPEC.len(), "one documented row per metric");
        for m in SPEC {
            let row = rows
                .iter()
                .find(|r| r[1] == m.name)
                .unwrap_or_else(|| panic!("{} is not documented", m.name));
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
                Kind::Summary => "summary",
            };
            assert_eq!(row[2], kind, "{}", m.name);
            assert_eq!(row[3], m.labels.join(", "), "{}", m.name);
            assert_eq!(row[4], m.help, "{}", m.name);
        }
    }

    /// The project README lists every metric with its labels and type too.
    #[test]
    fn readme_lists_every_metric() {
        const README: &str = include_str!("../../README.md");
        for m in SPEC {
            let labels = if m.labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", m.labels.join(", "))
            };
            let kind = format!("{:?}", m.kind).to_lowercase();
            let entry = format!("`{}{labels}` ({kind})", m.name);
            assert!(README.contains(&entry), "README lacks {entry}");
        }
    }

    #[test]
    fn names_follow_the_convention() {
        for m in SPEC {
            assert!(m.name.starts_with("deployd_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram | Kind::Summary => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name)
                }
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }
}
