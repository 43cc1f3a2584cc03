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

pub const DEPLOYMENTS: &str = "deployd_deployments_total";
pub const FIRST_TIME_SUCCESS: &str = "deployd_deployments_first_time_success_total";
pub const DEPLOYMENT_DURATION: &str = "deployd_deployment_duration_seconds";
pub const IN_PROGRESS: &str = "deployd_deployments_in_progress";
pub const RESUMED: &str = "deployd_deployments_resumed_total";
pub const FAILURES: &str = "deployd_deployment_failures_total";
pub const STAGE_DURATION: &str = "deployd_stage_duration_seconds";
pub const PREFLIGHT_CHECKS: &str = "deployd_preflight_checks_total";
pub const BUILDS: &str = "deployd_builds_total";
pub const BUILD_ATTEMPTS: &str = "deployd_build_attempts_total";
pub const BUILD_RETRIES: &str = "deployd_build_retries_total";
pub const BUILD_DURATION: &str = "deployd_build_duration_seconds";
pub const HEALTH_CHECK_DURATION: &str = "deployd_health_check_duration_seconds";
pub const HEALTH_CHECK_DURATION_HDR: &str = super::hdr::NAME;
pub const ROLLBACKS: &str = "deployd_rollbacks_total";
pub const CANARY_ANALYSES: &str = "deployd_canary_analyses_total";
pub const CANARY_STEPS: &str = "deployd_canary_steps_total";
pub const CANARY_ABORTS: &str = "deployd_canary_aborts_total";
pub const GOOGLE_API_CALLS: &str = "deployd_google_api_calls_total";
pub const GOOGLE_API_CALL_DURATION: &str = "deployd_google_api_call_duration_seconds";
pub const GOOGLE_API_RETRIES: &str = "deployd_google_api_retries_total";
pub const GRPC_REQUESTS: &str = "deployd_grpc_requests_total";
pub const GRPC_REQUEST_DURATION: &str = "deployd_grpc_request_duration_seconds";
pub const AUTH_REFUSALS: &str = "deployd_auth_refusals_total";
pub const BUILD_INFO: &str = "deployd_build_info";
pub const OLDEST_RUNNING: &str = "deployd_oldest_running_deployment_created_seconds";
pub const CHANGE_FAILURES: &str = "deployd_change_failures_total";
pub const CHANGE_LEAD_TIME: &str = "deployd_change_lead_time_seconds";
pub const TIME_TO_RESTORE: &str = "deployd_time_to_restore_seconds";

/// Results a deploy run ends with, as `deployments_total` counts them.
pub const DEPLOY_RESULTS: [&str; 5] = [
    "success",
    "failure",
    "rolled_back",
    "canary_aborted",
    "cancelled",
];

pub const SPEC: &[MetricSpec] = &[
    MetricSpec {
        name: DEPLOYMENTS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Deploy runs by result (success, failure, rolled_back, canary_aborted, cancelled). A cancelled run is neither a success nor a failure.",
    },
    MetricSpec {
        name: FIRST_TIME_SUCCESS,
        kind: Kind::Counter,
        labels: &[],
        help: "Deploy runs that succeeded with no retry anywhere.",
    },
    MetricSpec {
        name: DEPLOYMENT_DURATION,
        kind: Kind::Histogram,
        labels: &["result"],
        help: "Wall time of whole deploy runs, by result.",
    },
    MetricSpec {
        name: IN_PROGRESS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Deploy runs currently running.",
    },
    MetricSpec {
        name: OLDEST_RUNNING,
        kind: Kind::Gauge,
        labels: &[],
        help: "Creation time (Unix seconds) of the oldest deployment this instance is running, resumed ones included; 0 when it runs none.",
    },
    MetricSpec {
        name: RESUMED,
        kind: Kind::Counter,
        labels: &["how", "result"],
        help: "Deployments a daemon resumed after their daemon stopped, by how (resumed: its own, after a restart; taken_over: another daemon's, after its lease expired) and final result.",
    },
    MetricSpec {
        name: FAILURES,
        kind: Kind::Counter,
        labels: &["stage", "failure"],
        help: "Failed deploy runs by the stage that failed and the outcome's failure code (e.g. BUILD_FAILED, UNHEALTHY). Cancelled runs are not failures.",
    },
    MetricSpec {
        name: STAGE_DURATION,
        kind: Kind::Histogram,
        labels: &["stage"],
        help: "Wall time of each stage of deploy and preflight runs.",
    },
    MetricSpec {
        name: PREFLIGHT_CHECKS,
        kind: Kind::Counter,
        labels: &["check", "result"],
        help: "Preflight check verdicts by check and result (pass, fail, inconclusive, skipped: not run because project_access failed).",
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
        labels: &["result"],
        help: "Build attempts by result (success, retriable_error, permanent_error, cancelled).",
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
        name: HEALTH_CHECK_DURATION,
        kind: Kind::Histogram,
        labels: &["origin", "result"],
        help: "Health-check attempt latency (time to full body) by origin (deploy: deployd's own probes of revisions; verify_rpc: Verify calls on callers' URLs) and result (healthy, unhealthy).",
    },
    MetricSpec {
        name: HEALTH_CHECK_DURATION_HDR,
        kind: Kind::Summary,
        labels: &["origin", "quantile"],
        help: "The same health-check latencies as exact percentiles (0.5, 0.95, 0.99) of this instance over the last 10 minutes (HDR histogram), by origin.",
    },
    MetricSpec {
        name: ROLLBACKS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Automatic rollbacks by result (success: the previous revision serves and is healthy; failure: the service may be left on a broken revision).",
    },
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
        name: GOOGLE_API_CALLS,
        kind: Kind::Counter,
        labels: &["api", "method", "code"],
        help: "Google API calls (each HTTP exchange, retries and operation polls included) by API (run, cloudbuild, storage, ...), method and canonical code (OK, NOT_FOUND, UNAVAILABLE for transport failures, ...).",
    },
    MetricSpec {
        name: GOOGLE_API_CALL_DURATION,
        kind: Kind::Histogram,
        labels: &["api"],
        help: "Google API call latency, to the answer's headers, by API; long polls (:wait) included.",
    },
    MetricSpec {
        name: GOOGLE_API_RETRIES,
        kind: Kind::Counter,
        labels: &["method", "code"],
        help: "Google API calls of the deploy stages retried, by API method and the canonical code that caused the retry.",
    },
    MetricSpec {
        name: GRPC_REQUESTS,
        kind: Kind::Counter,
        labels: &["method", "code"],
        help: "gRPC calls by method and final status code: a stream counts when it ends (CANCELLED when the client went away, DEADLINE_EXCEEDED when that was past its deadline).",
    },
    MetricSpec {
        name: GRPC_REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &["method"],
        help: "gRPC call duration by method, from the request to the stream's end.",
    },
    MetricSpec {
        name: AUTH_REFUSALS,
        kind: Kind::Counter,
        labels: &["method", "reason"],
        help: "Calls refused by gRPC method and reason: a credential problem (missing, malformed, unknown_token, expired, wrong_audience, bad_signature, ...) or denied by the policy. Never labelled by principal.",
    },
    MetricSpec {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        labels: &["version", "commit"],
        help: "Always 1; its labels name the running build (package version, git commit it was built from).",
    },
    MetricSpec {
        name: CHANGE_FAILURES,
        kind: Kind::Counter,
        labels: &[],
        help: "DORA change failures: deploy runs that failed after reaching users (traffic had moved to the new revision, all or a canary's share) or were rolled back. Change failure rate = this / (this + deployd_deployments_total{result=\"success\"}).",
    },
    MetricSpec {
        name: CHANGE_LEAD_TIME,
        kind: Kind::Histogram,
        labels: &[],
        help: "DORA lead time for changes: from the deployed commit's committer time to the deploy's verified success (sources that are git repositories or checkouts).",
    },
    MetricSpec {
        name: TIME_TO_RESTORE,
        kind: Kind::Histogram,
        labels: &[],
        help: "DORA time to restore: from a service's first change failure after a success to its next verified success.",
    },
];

/// Bucket bounds `2^(k/per_octave)` for k in `from..=to`: the layout of a
/// native histogram's schema, so a quantile read from the buckets is at
/// most one bucket width (2^(1/per_octave) - 1) off the true value, and
/// every replica has the same bounds.
fn exponential(from: i32, to: i32, per_octave: i32) -> Vec<f64> {
    (from..=to)
        .map(|k| 2f64.powf(f64::from(k) / f64::from(per_octave)))
        .collect()
}

/// Eight buckets per doubling: a bucket is 9% wide, so a quantile of the
/// buckets is within 10% of the exact one, whatever the samples.
const FINE: i32 = 8;
/// Two per doubling (41% wide), for latencies read as "slow or not".
const COARSE: i32 = 2;
/// Four per doubling (19% wide): the DORA durations are read against
/// bands a factor of 7 or more apart.
const DORA: i32 = 4;

/// Bucket boundaries for each histogram. Runs: 7.8 ms to 68 min; probes:
/// 0.49 ms to 64 s; API calls 1 ms to 64 s and gRPC calls 1 ms to 68 min,
/// coarser.
pub fn buckets_for(name: &str) -> Vec<f64> {
    match name {
        HEALTH_CHECK_DURATION => exponential(-11 * FINE, 6 * FINE, FINE),
        GOOGLE_API_CALL_DURATION => exponential(-10 * COARSE, 6 * COARSE, COARSE),
        GRPC_REQUEST_DURATION => exponential(-10 * COARSE, 12 * COARSE, COARSE),
        // 1 min to 194 days, and 1 s to 97 days: both cross every DORA band
        // edge (an hour, a day, a week, a month) within one bucket (19%).
        CHANGE_LEAD_TIME => exponential(6 * DORA, 24 * DORA, DORA),
        TIME_TO_RESTORE => exponential(0, 23 * DORA, DORA),
        _ => exponential(-7 * FINE, 12 * FINE, FINE),
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

/// Exports the known series at zero from the start, so `rate()`, success
/// ratios and alerts have data before the first event of each kind.
pub fn register_defaults() {
    for result in DEPLOY_RESULTS {
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
    for result in ["success", "retriable_error", "permanent_error", "cancelled"] {
        counter!(BUILD_ATTEMPTS, "result" => result).increment(0);
    }
    // The causes a build is retried for (see build::retry_reason).
    for reason in [
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "INTERNAL",
        "DEADLINE_EXCEEDED",
        "BUILD_INTERNAL_ERROR",
        "BUILD_TIMEOUT",
        "BUILD_EXPIRED",
        "BUILD_PUSH_FAILED",
        "DEADLINE",
    ] {
        counter!(BUILD_RETRIES, "reason" => reason).increment(0);
    }
    for result in ["success", "failure"] {
        counter!(ROLLBACKS, "result" => result).increment(0);
    }
    counter!(FIRST_TIME_SUCCESS).increment(0);
    counter!(CHANGE_FAILURES).increment(0);
    // A registered histogram is exported with empty buckets, so the first
    // observation is an increase (DORA events are rare: often the only one
    // of an hour).
    let _ = histogram!(CHANGE_LEAD_TIME);
    let _ = histogram!(TIME_TO_RESTORE);
    gauge!(IN_PROGRESS).increment(0.0);
    gauge!(OLDEST_RUNNING).set(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("DEPLOYD_GIT_COMMIT"))
        .set(1.0);
}

pub fn build_attempt(result: &'static str) {
    counter!(BUILD_ATTEMPTS, "result" => result).increment(1);
}

pub fn api_retry(method: &'static str, code: &'static str) {
    counter!(GOOGLE_API_RETRIES, "method" => method, "code" => code).increment(1);
}

/// One HTTP exchange with a Google API: `method` is its discovery name
/// (`run.projects.locations.services.get`), whose first part is the API.
pub fn google_api_call(method: &'static str, code: &'static str, duration: Duration) {
    let api = method.split('.').next().unwrap_or(method);
    counter!(GOOGLE_API_CALLS, "api" => api, "method" => method, "code" => code).increment(1);
    histogram!(GOOGLE_API_CALL_DURATION, "api" => api).record(duration.as_secs_f64());
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
    histogram!(DEPLOYMENT_DURATION, "result" => result).record(duration.as_secs_f64());
}

pub fn oldest_running(created: Option<std::time::SystemTime>) {
    let seconds = created
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(OLDEST_RUNNING).set(seconds);
}

pub fn change_failure() {
    counter!(CHANGE_FAILURES).increment(1);
}

pub fn change_lead_time(lead: Duration) {
    histogram!(CHANGE_LEAD_TIME).record(lead.as_secs_f64());
}

pub fn time_to_restore(t: Duration) {
    histogram!(TIME_TO_RESTORE).record(t.as_secs_f64());
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

/// Who asked for a health probe: the deploy SLI counts only deployd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeOrigin {
    /// A deploy's verify, gate, canary or rollback probes of its revisions.
    #[default]
    Deploy,
    /// A Verify RPC of a caller's URL.
    VerifyRpc,
}

impl ProbeOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOrigin::Deploy => "deploy",
            ProbeOrigin::VerifyRpc => "verify_rpc",
        }
    }
}

pub fn health_check(origin: ProbeOrigin, result: &'static str, duration: Duration) {
    histogram!(HEALTH_CHECK_DURATION, "origin" => origin.as_str(), "result" => result)
        .record(duration.as_secs_f64());
    super::hdr::record(origin, duration);
}

/// A failed run; cancellations never come here.
pub fn failure(stage: &'static str, failure: &str) {
    counter!(FAILURES, "stage" => stage, "failure" => failure.to_string()).increment(1);
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
pub fn auth_refused(method: &'static str, reason: &'static str) {
    counter!(AUTH_REFUSALS, "method" => method, "reason" => reason).increment(1);
}

/// A gRPC call that ended, with its final status.
pub fn grpc_request(method: &'static str, code: &'static str, duration: Duration) {
    counter!(GRPC_REQUESTS, "method" => method, "code" => code).increment(1);
    histogram!(GRPC_REQUEST_DURATION, "method" => method).record(duration.as_secs_f64());
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
