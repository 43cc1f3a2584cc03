//! Canary steps judged by live signals, against the sandbox: deployd's own
//! probes of the candidate and the stable revision, Cloud Monitoring's
//! count of users' requests (the sandbox's emulation), and PromQL against
//! a real Prometheus. Bake times are the requests' own, run 100x faster by
//! the harness's canary time scale (a 2 m bake takes 1.2 s).

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto::{self, event::Kind, Stage};
use deployd::sandbox::world::Misbehaviour;
use tokio_stream::StreamExt;

fn step(percent: u32, bake_secs: i64) -> proto::CanaryStep {
    proto::CanaryStep {
        percent,
        bake: Some(prost_types::Duration {
            seconds: bake_secs,
            nanos: 0,
        }),
    }
}

/// A second version of `service`, after a first deployed directly.
async fn canary_request(
    h: &Harness,
    service: &str,
    steps: Vec<proto::CanaryStep>,
    analysis: Option<proto::CanaryAnalysis>,
) -> (proto::DeployRequest, proto::Outcome, tempfile::TempDir) {
    let (_, first) = deploy(h, deploy_request(service, &example_app())).await;
    assert!(first.success, "{first:?}");
    let app = app_version("2");
    let mut req = deploy_request(service, app.path());
    req.rollout_mode = proto::RolloutMode::Canary.into();
    req.canary_steps = steps;
    req.analysis = analysis;
    (req, first, app)
}

fn step_results(events: &[proto::Event]) -> Vec<proto::CanaryStepResult> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::CanaryStep(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn traffic(h: &Harness, service: &str) -> Vec<(String, u64)> {
    h.sandbox
        .service(PROJECT, REGION, service)
        .expect("service")["traffic"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["revision"].as_str().unwrap_or_default().to_string(),
                t["percent"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(_, p)| *p > 0)
        .collect()
}

/// The traffic splits the Run API was sent during this deploy, in order:
/// (candidate's percent) for every request that set traffic.
fn candidate_shares(h: &Harness, candidate: &str, since: usize) -> Vec<u64> {
    h.sandbox.requests()[since..]
        .iter()
        .filter(|r| r.method.starts_with("run.projects.locations.services."))
        // Preflight's validateOnly request changes nothing.
        .filter(|r| !r.query.contains("validateOnly=true"))
        .filter_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let t = body.get("traffic")?.as_array()?.clone();
            Some(
                t.iter()
                    .filter(|t| t["revision"] == candidate)
                    .map(|t| t["percent"].as_u64().unwrap_or(0))
                    .sum(),
            )
        })
        .collect()
}

fn verdict(v: i32) -> proto::Verdict {
    proto::Verdict::try_from(v).expect("verdict")
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let h = Harness::start().await;
    // 5:2m,25:5m,50:5m,100 as a user writes it, baked 100x faster.
    let steps = vec![step(5, 120), step(25, 300), step(50, 300), step(100, 0)];
    let (req, first, _app) = canary_request(&h, "promoted", steps, None).await;
    let since = h.sandbox.requests().len();
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let results = step_results(&events);
    let got: Vec<(u32, u32, proto::Verdict, &str)> = results
        .iter()
        .map(|r| (r.step, r.percent, verdict(r.verdict), r.action.as_str()))
        .collect();
    use proto::Verdict::Pass;
    assert_eq!(
        got,
        [
            (1, 5, Pass, "next"),
            (2, 25, Pass, "next"),
            (3, 50, Pass, "promote")
        ]
    );
    // The outcome carries the same results.
    assert_eq!(o.canary_steps, results);
    assert!(!o.canary_aborted);
    // Each step baked its scaled time, not its full one: 1.2 s, 3 s, 3 s.
    for (r, want) in results.iter().zip([1.2, 3.0, 3.0]) {
        let baked = r
            .baked
            .as_ref()
            .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
        assert!(
            baked >= want && baked < want + 5.0,
            "step {} baked {baked} s",
            r.step
        );
        // Probes of both revisions measured it.
        let errors = r
            .measurements
            .iter()
            .find(|m| m.source == "probes" && m.name == "error_ratio")
            .expect("error ratio");
        assert!(errors.samples >= 10, "{errors:?}");
        let p95 = r
            .measurements
            .iter()
            .find(|m| m.name == "p95_vs_stable")
            .expect("latency against stable");
        assert!(p95.baseline > 0.0, "{p95:?}");
    }
    // The Run API saw the steps in order, then all traffic on the candidate.
    assert_eq!(candidate_shares(&h, &o.revision, since), [5, 25, 50, 100]);
    assert_eq!(traffic(&h, "promoted"), [(o.revision.clone(), 100)]);
    assert_ne!(o.revision, first.revision);
    // Both tags were probed during the bakes: the sandbox served each.
    let served = h.sandbox.served(PROJECT, "promoted");
    assert!(served.iter().any(|s| s.revision == first.revision));
    assert!(served.iter().any(|s| s.revision == o.revision));
    let m = h.metrics().await;
    // (Other tests of this binary share the process's metrics.)
    assert!(
        counter(
            &m,
            "deployd_canary_steps_total",
            "verdict=\"pass\",action=\"promote\""
        ) >= 1.0,
        "{m}"
    );
    assert!(
        counter(
            &m,
            "deployd_canary_analyses_total",
            "source=\"probes\",result=\"pass\""
        ) >= 3.0
    );
}

#[tokio::test]
async fn a_candidate_failing_a_fifth_of_requests_at_the_50_percent_step_is_aborted_there() {
    let h = Harness::start().await;
    let steps = vec![step(10, 120), step(25, 120), step(50, 120), step(100, 0)];
    let (req, first, _app) = canary_request(&h, "aborted", steps, None).await;
    let mut client = h.client().await;
    let mut stream = client.deploy(req).await.expect("deploy").into_inner();
    let mut events = vec![];
    let mut armed = false;
    while let Some(e) = stream.next().await {
        let e = e.expect("event");
        // Healthy for two steps; the candidate breaks as step 3 begins.
        if let Some(Kind::Progress(p)) = &e.kind {
            if p.message.starts_with("canary step 3/4") && !armed {
                let candidate = h
                    .sandbox
                    .revisions(PROJECT, REGION, "aborted")
                    .into_iter()
                    .find(|r| *r != first.revision)
                    .expect("candidate");
                armed = h.sandbox.revision_misbehaves(
                    PROJECT,
                    REGION,
                    "aborted",
                    &candidate,
                    Misbehaviour {
                        error_rate: 0.2,
                        error_status: 500,
                        added_latency: Duration::ZERO,
                    },
                );
            }
        }
        events.push(e);
    }
    assert!(armed, "the fault was injected at step 3");
    let o = outcome(&events);
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Verify));
    let f = o.error.as_ref().expect("failure");
    assert_eq!(f.code, "CANARY_ABORTED", "{f:?}");
    assert!(f.message.contains("step 3 of 4"), "{}", f.message);
    assert!(o.canary_aborted && o.rolled_back, "{o:?}");
    // Two passes, then the abort at 50%, with the measurement that failed it.
    let results = step_results(&events);
    let got: Vec<(u32, &str)> = results
        .iter()
        .map(|r| (r.percent, r.action.as_str()))
        .collect();
    assert_eq!(got, [(10, "next"), (25, "next"), (50, "abort")]);
    let last = results.last().expect("step 3");
    assert_eq!(verdict(last.verdict), proto::Verdict::Fail);
    let failed = last
        .measurements
        .iter()
        .find(|m| verdict(m.verdict) == proto::Verdict::Fail)
        .expect("a failed measurement");
    assert_eq!(
        (failed.source.as_str(), failed.name.as_str()),
        ("probes", "error_ratio")
    );
    assert!(failed.value > 0.05 && failed.value < 0.5, "{failed:?}");
    assert!(f.message.contains("probes error_ratio"), "{}", f.message);
    // Users are back on the stable revision, as the sandbox holds it, and
    // the rollback was verified.
    assert_eq!(traffic(&h, "aborted"), [(first.revision.clone(), 100)]);
    let rollback_started = events
        .iter()
        .position(|e| e.stage == i32::from(Stage::Rollback))
        .expect("a rollback");
    let rollback_probes: Vec<&proto::Probe> = events[rollback_started..]
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Probe(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert!(
        rollback_probes.last().is_some_and(|p| p.healthy),
        "{rollback_probes:?}"
    );
    let m = h.metrics().await;
    assert!(counter(&m, "deployd_canary_aborts_total", "") >= 1.0, "{m}");
    assert!(counter(&m, "deployd_deployments_total", "result=\"canary_aborted\"") >= 1.0);
}

fn never_enough(policy: proto::InconclusivePolicy) -> proto::CanaryAnalysis {
    proto::CanaryAnalysis {
        probes: Some(proto::ProbeAnalysis {
            // More probes than a step can take.
            min_samples: 10_000,
            ..Default::default()
        }),
        on_inconclusive: policy.into(),
        max_extension: Some(prost_types::Duration {
            seconds: 120,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn below_the_minimum_samples_each_inconclusive_policy_does_what_it_says() {
    let h = Harness::start().await;
    use proto::InconclusivePolicy as P;
    // Pass: moves on, saying it had no verdict.
    let (req, _, _a) = canary_request(
        &h,
        "low-pass",
        vec![step(10, 60), step(100, 0)],
        Some(never_enough(P::Pass)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let r = step_results(&events);
    assert_eq!(r.len(), 1);
    assert_eq!(verdict(r[0].verdict), proto::Verdict::Inconclusive);
    assert_eq!(r[0].action, "pass_inconclusive");
    let m = &r[0].measurements[0];
    assert!(
        m.samples < m.min_samples && m.detail.contains("samples needed"),
        "{m:?}"
    );

    // Abort: stops at once.
    let (req, first, _b) = canary_request(
        &h,
        "low-abort",
        vec![step(10, 60), step(100, 0)],
        Some(never_enough(P::Abort)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success && o.canary_aborted, "{o:?}");
    let r = step_results(&events);
    let got: Vec<&str> = r.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(got, ["abort"]);
    assert_eq!(traffic(&h, "low-abort"), [(first.revision.clone(), 100)]);

    // Extend: bakes again (1 m bakes, 2 m cap: twice), then aborts.
    let (req, _, _c) = canary_request(
        &h,
        "low-extend",
        vec![step(10, 60), step(100, 0)],
        Some(never_enough(P::Extend)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success && o.canary_aborted, "{o:?}");
    let r = step_results(&events);
    let got: Vec<&str> = r.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(got, ["extend", "extend", "abort"]);
    let baked: Vec<f64> = r
        .iter()
        .map(|r| {
            r.baked
                .as_ref()
                .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        })
        .collect();
    assert!(baked[0] < baked[1] && baked[1] < baked[2], "{baked:?}");
    // Samples accumulate across the extensions.
    let n: Vec<u64> = r.iter().map(|r| r.measurements[0].samples).collect();
    assert!(n[0] < n[2], "{n:?}");
    assert!(
        r[2].reason.contains("still inconclusive"),
        "{}",
        r[2].reason
    );
    assert_eq!(
        o.error.as_ref().map(|f| f.code.as_str()),
        Some("CANARY_ABORTED")
    );
}

fn monitoring_only(min_requests: u32, policy: proto::InconclusivePolicy) -> proto::CanaryAnalysis {
    proto::CanaryAnalysis {
        probes: Some(proto::ProbeAnalysis {
            disabled: true,
            ..Default::default()
        }),
        monitoring: Some(proto::MonitoringAnalysis {
            enabled: true,
            min_requests,
            // The sandbox shows requests at once.
            ingestion_delay: Some(prost_types::Duration::default()),
            ..Default::default()
        }),
        on_inconclusive: policy.into(),
        ..Default::default()
    }
}

/// Users' requests to the service URL until `stop`, as fast as they go.
fn user_traffic(
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0;
        while !stop.is_cancelled() {
            if client.get(&url).send().await.is_ok() {
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    })
}

#[tokio::test]
async fn cloud_monitoring_counts_users_requests_to_the_candidate() {
    let h = Harness::start().await;
    use proto::InconclusivePolicy as P;
    let (req, first, _a) = canary_request(
        &h,
        "monitored",
        vec![step(30, 180), step(100, 0)],
        Some(monitoring_only(20, P::Abort)),
    )
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let users = user_traffic(
        h.sandbox
            .service(PROJECT, REGION, "monitored")
            .expect("service")["uri"]
            .as_str()
            .expect("uri")
            .to_string(),
        stop.clone(),
    );
    let since = h.sandbox.requests().len();
    let (events, o) = deploy(&h, req).await;
    stop.cancel();
    let sent = users.await.expect("users");
    assert!(o.success, "{o:?} after {sent} user requests");
    let r = step_results(&events);
    assert_eq!(r.len(), 1);
    let m = &r[0].measurements[0];
    assert_eq!(
        (m.source.as_str(), m.name.as_str()),
        ("monitoring", "error_ratio")
    );
    assert_eq!(verdict(m.verdict), proto::Verdict::Pass, "{m:?}");
    assert!(m.samples >= 20, "{m:?}");
    // What deployd asked Monitoring, against the API's documented shape.
    let asked: Vec<_> = h.sandbox.requests()[since..]
        .iter()
        .filter(|r| r.method == "monitoring.projects.timeSeries.list")
        .cloned()
        .collect();
    assert_eq!(asked.len(), 2, "request_count, then request_latencies");
    let q = |r: &deployd::sandbox::world::Request| -> Vec<(String, String)> {
        url::form_urlencoded::parse(r.query.as_bytes())
            .into_owned()
            .collect()
    };
    let get = |qs: &[(String, String)], k: &str| {
        qs.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let counts = q(&asked[0]);
    assert_eq!(asked[0].path, format!("/v3/projects/{PROJECT}/timeSeries"));
    assert_eq!(
        get(&counts, "filter"),
        format!(
            "metric.type = \"run.googleapis.com/request_count\" AND resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"monitored\" AND resource.labels.revision_name = \"{}\" AND resource.labels.location = \"{REGION}\"",
            o.revision
        )
    );
    let start =
        chrono::DateTime::parse_from_rfc3339(&get(&counts, "interval.startTime")).expect("start");
    let end = chrono::DateTime::parse_from_rfc3339(&get(&counts, "interval.endTime")).expect("end");
    assert!(
        start < end && end - start < chrono::TimeDelta::seconds(30),
        "{start} {end}"
    );
    assert_eq!(get(&counts, "aggregation.alignmentPeriod"), "60s");
    assert_eq!(get(&counts, "aggregation.perSeriesAligner"), "ALIGN_DELTA");
    assert_eq!(get(&counts, "aggregation.crossSeriesReducer"), "REDUCE_SUM");
    assert_eq!(
        get(&counts, "aggregation.groupByFields"),
        "metric.labels.response_code_class"
    );
    assert!(get(&q(&asked[1]), "filter").contains("run.googleapis.com/request_latencies"));

    // Users hit by errors fail it: half of the candidate's answers are 500s.
    let (req, first2, _b) = canary_request(
        &h,
        "monitored-bad",
        vec![step(50, 180), step(100, 0)],
        Some(monitoring_only(20, P::Abort)),
    )
    .await;
    let url = h
        .sandbox
        .service(PROJECT, REGION, "monitored-bad")
        .expect("service")["uri"]
        .as_str()
        .expect("uri")
        .to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let users = user_traffic(url, stop.clone());
    let mut client = h.client().await;
    let mut stream = client.deploy(req).await.expect("deploy").into_inner();
    let mut events = vec![];
    while let Some(e) = stream.next().await {
        let e = e.expect("event");
        if let Some(Kind::Progress(p)) = &e.kind {
            if p.message.starts_with("canary step 1/2") {
                let candidate = h
                    .sandbox
                    .revisions(PROJECT, REGION, "monitored-bad")
                    .into_iter()
                    .find(|r| *r != first2.revision)
                    .expect("candidate");
                assert!(h.sandbox.revision_misbehaves(
                    PROJECT,
                    REGION,
                    "monitored-bad",
                    &candidate,
                    Misbehaviour {
                        error_rate: 0.5,
                        error_status: 503,
                        added_latency: Duration::ZERO,
                    }
                ));
            }
        }
        events.push(e);
    }
    stop.cancel();
    let _ = users.await;
    let o = outcome(&events);
    assert!(o.canary_aborted, "{o:?}");
    let m = &step_results(&events)[0].measurements[0];
    assert_eq!(verdict(m.verdict), proto::Verdict::Fail, "{m:?}");
    assert!(m.value > 0.2, "{m:?}");
    assert_eq!(
        traffic(&h, "monitored-bad"),
        [(first2.revision.clone(), 100)]
    );

    // No users at all: too few requests, inconclusive, and this policy aborts.
    let (req, _, _c) = canary_request(
        &h,
        "monitored-idle",
        vec![step(10, 60), step(100, 0)],
        Some(monitoring_only(20, P::Abort)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(o.canary_aborted, "{o:?}");
    let m = &step_results(&events)[0].measurements[0];
    assert_eq!(verdict(m.verdict), proto::Verdict::Inconclusive, "{m:?}");
    assert_eq!(m.samples, 0);
    let _ = first;
}

#[tokio::test]
async fn preflight_catches_a_monitoring_analysis_it_could_not_read() {
    let h = Harness::start().await;
    let (req, _, _a) = canary_request(
        &h,
        "no-monitoring",
        vec![step(10, 60), step(100, 0)],
        Some(monitoring_only(1, proto::InconclusivePolicy::Abort)),
    )
    .await;
    h.sandbox.with_project(PROJECT, |p| {
        p.permissions.remove("monitoring.timeSeries.list");
    });
    let builds = h.sandbox.builds().len();
    let (_, o) = deploy(&h, req).await;
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight), "{o:?}");
    let c = o
        .checks
        .iter()
        .find(|c| c.name == "monitoring_access")
        .expect("the check");
    assert!(
        !c.ok && c.detail.contains("monitoring.timeSeries.list"),
        "{c:?}"
    );
    assert!(
        c.remediation[0].contains("roles/monitoring.viewer"),
        "{:?}",
        c.remediation
    );
    // Found before anything was built.
    assert_eq!(h.sandbox.builds().len(), builds);
}

#[tokio::test]
async fn preflight_catches_an_unreachable_prometheus() {
    let h = Harness::start().await;
    // A port nothing listens on.
    let url = format!("http://127.0.0.1:{}", free_port());
    let (req, _, _a) = canary_request(
        &h,
        "no-prometheus",
        vec![step(10, 60), step(100, 0)],
        Some(promql_analysis(&url)),
    )
    .await;
    let builds = h.sandbox.builds().len();
    let (_, o) = deploy(&h, req).await;
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight), "{o:?}");
    let c = o
        .checks
        .iter()
        .find(|c| c.name == "prometheus")
        .expect("the check");
    assert!(!c.ok && c.detail.contains(&url), "{c:?}");
    assert_eq!(h.sandbox.builds().len(), builds);
}

/// A test exporter: the app's own error ratio and request count per
/// revision, which the test sets.
struct Exporter {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<(f64, u64)>>,
}

async fn exporter() -> Exporter {
    let state = std::sync::Arc::new(std::sync::Mutex::new((0.0, 0)));
    let s = state.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let s = s.clone();
            async move {
                let (ratio, requests) = *s.lock().expect("state");
                format!("# TYPE app_error_ratio gauge\napp_error_ratio {ratio}\n# TYPE app_requests gauge\napp_requests {requests}\n")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Exporter { addr, state }
}

fn promql_analysis(prometheus: &str) -> proto::CanaryAnalysis {
    proto::CanaryAnalysis {
        probes: Some(proto::ProbeAnalysis {
            disabled: true,
            ..Default::default()
        }),
        prometheus: Some(proto::PrometheusAnalysis {
            url: prometheus.to_string(),
            queries: vec![proto::PromQuery {
                name: "app-errors".into(),
                query: "max(app_error_ratio{job=\"app\"})".into(),
                comparison: proto::Comparison::Less.into(),
                threshold: 0.05,
                samples_query: "max(app_requests{job=\"app\"})".into(),
                min_samples: 10,
            }],
        }),
        on_inconclusive: proto::InconclusivePolicy::Abort.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn promql_analysis_against_a_real_prometheus() {
    if !outside_tool("prometheus", &["--version"], "apt-get install prometheus") {
        return;
    }
    let app = exporter().await;
    let target = app.addr.to_string();
    let prom = Prometheus::start(|_| {
        format!("global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n")
    })
    .await;
    *app.state.lock().expect("state") = (0.01, 500);
    // Until Prometheus has scraped the exporter once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value =
            reqwest::get(format!("{}/api/v1/query?query=app_requests", prom.url))
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no scrape: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h = Harness::start().await;
    let (req, _, _a) = canary_request(
        &h,
        "promql-ok",
        vec![step(10, 60), step(100, 0)],
        Some(promql_analysis(&prom.url)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let m = &step_results(&events)[0].measurements[0];
    assert_eq!(
        (m.source.as_str(), m.name.as_str()),
        ("prometheus", "app-errors")
    );
    assert_eq!(verdict(m.verdict), proto::Verdict::Pass, "{m:?}");
    assert_eq!((m.value, m.samples), (0.01, 500));

    // The app's own errors rise: the query's condition fails the step.
    *app.state.lock().expect("state") = (0.3, 500);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (req, first, _b) = canary_request(
        &h,
        "promql-bad",
        vec![step(10, 60), step(100, 0)],
        Some(promql_analysis(&prom.url)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(o.canary_aborted, "{o:?}");
    let m = &step_results(&events)[0].measurements[0];
    assert_eq!(verdict(m.verdict), proto::Verdict::Fail, "{m:?}");
    assert_eq!(m.value, 0.3);
    assert_eq!(traffic(&h, "promql-bad"), [(first.revision.clone(), 100)]);

    // Too few requests counted: inconclusive, whatever the ratio says.
    *app.state.lock().expect("state") = (0.0, 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (req, _, _c) = canary_request(
        &h,
        "promql-few",
        vec![step(10, 60), step(100, 0)],
        Some(promql_analysis(&prom.url)),
    )
    .await;
    let (events, o) = deploy(&h, req).await;
    assert!(o.canary_aborted, "{o:?}");
    let m = &step_results(&events)[0].measurements[0];
    assert_eq!(verdict(m.verdict), proto::Verdict::Inconclusive, "{m:?}");
    assert_eq!(m.samples, 3);
}

#[tokio::test]
async fn canary_requests_are_checked_before_anything_runs() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    type Change = Box<dyn Fn(&mut proto::DeployRequest)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "canary_steps",
            Box::new(|r| {
                r.rollout_mode = proto::RolloutMode::Direct.into();
                r.canary_steps = vec![step(10, 60)];
            }),
        ),
        (
            "canary_steps[1].percent",
            Box::new(|r| r.canary_steps = vec![step(50, 60), step(20, 60)]),
        ),
        (
            "canary_steps[0].percent",
            Box::new(|r| r.canary_steps = vec![step(100, 0)]),
        ),
        ("canary_percent", Box::new(|r| r.canary_percent = 10)),
        (
            "analysis.prometheus.url",
            Box::new(|r| {
                r.analysis = Some(promql_analysis("http://prometheus.internal.example:9090"));
            }),
        ),
        (
            "analysis.probes.max_error_ratio",
            Box::new(|r| {
                r.analysis = Some(proto::CanaryAnalysis {
                    probes: Some(proto::ProbeAnalysis {
                        max_error_ratio: 2.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }),
        ),
        (
            "analysis",
            Box::new(|r| {
                r.analysis = Some(proto::CanaryAnalysis {
                    probes: Some(proto::ProbeAnalysis {
                        disabled: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }),
        ),
    ];
    for (field, change) in cases {
        let mut req = deploy_request("refused", &example_app());
        req.rollout_mode = proto::RolloutMode::Canary.into();
        req.canary_steps = vec![step(10, 60), step(100, 0)];
        change(&mut req);
        let status = client.deploy(req).await.expect_err(field);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert!(h.sandbox.builds().is_empty());
}
