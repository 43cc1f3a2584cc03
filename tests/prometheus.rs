//! The SLO rules and dashboards against a real Prometheus (Debian's
//! `prometheus` package, which .ci/run installs): promtool checks the rules
//! and their unit tests, lints /metrics, and a Prometheus on loopback scrapes
//! a daemon running a scripted workload, after which every dashboard panel's
//! and variable's query must succeed and return data.
//!
//! Outside CI these tests skip, saying so, where Prometheus is not installed;
//! in CI (CI=true) its absence fails them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::{AppResponse, BuildFault, Fault, FaultAction, InjectedError};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether prometheus and promtool are here; in CI they must be.
fn tools_present() -> bool {
    ["prometheus", "promtool"]
        .iter()
        .all(|t| common::outside_tool(t, &["--version"], "apt-get install prometheus"))
}

#[test]
fn rules_pass_promtool_checks_and_unit_tests() {
    if !tools_present() {
        return;
    }
    let dir = root().join("dashboards/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "deployd.rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "deployd.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let out =
        String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

async fn start_prometheus(target: &str) -> Prometheus {
    // The rules as shipped, evaluated every second instead of every 30.
    let rules = std::fs::read_to_string(root().join("dashboards/prometheus/deployd.rules.yml"))
        .expect("rules");
    Prometheus::start(|dir| {
        std::fs::write(
            dir.join("rules.yml"),
            rules.replace("interval: 30s", "interval: 1s"),
        )
        .expect("write");
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: deployd\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          env: test\n",
            dir.join("rules.yml").display()
        )
    })
    .await
}

/// Successes, a retried build, a failed build, a rollback, a preflight
/// failure and a Verify: every metric the dashboards chart gets data.
async fn workload(h: &Harness) {
    // A retried API call of the deploy stage (after preflight's own read).
    h.sandbox.inject_after(
        1,
        Fault {
            method: "run.projects.locations.services.get".into(),
            remaining: 1,
            action: FaultAction::Error(InjectedError::unavailable()),
        },
    );
    let (_, o) = deploy(h, deploy_request("steady", &example_app())).await;
    assert!(o.success);
    // A refused call (the same process, so the same metrics).
    refuse_a_call_without_a_token().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 1,
        action: FaultAction::Error(InjectedError::rate_limited("cloudbuild.googleapis.com")),
    });
    let app = app_version("2");
    let (_, o) = deploy(h, deploy_request("steady", app.path())).await;
    assert!(o.success);
    h.sandbox.fail_next_build(BuildFault::StepFails {
        step: "build".into(),
        lines: vec!["ERROR: boom".into()],
    });
    let (_, o) = deploy(h, deploy_request("broken", &example_app())).await;
    assert!(!o.success);
    h.sandbox.next_revision_answers(
        PROJECT,
        "steady",
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "x".into(),
        },
    );
    let app = app_version("3");
    let mut req = deploy_request("steady", app.path());
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (_, o) = deploy(h, req).await;
    assert!(o.rolled_back, "{o:?}");
    // A canary of two steps, judged by probes and promoted.
    let app = app_version("3");
    let mut req = deploy_request("steady", app.path());
    req.rollout_mode = proto::RolloutMode::Canary.into();
    req.canary_steps = [(10, 60), (100, 0)]
        .into_iter()
        .map(|(percent, seconds)| proto::CanaryStep {
            percent,
            bake: Some(prost_types::Duration { seconds, nanos: 0 }),
        })
        .collect();
    let (_, o) = deploy(h, req).await;
    assert!(o.success && o.canary_steps.len() == 1, "{o:?}");
    h.sandbox
        .with_project(PROJECT, |p| p.enabled_apis.remove("run.googleapis.com"));
    let (_, o) = deploy(h, deploy_request("noapi", &example_app())).await;
    assert!(!o.success);
    h.sandbox.with_project(PROJECT, |p| {
        p.enabled_apis.insert("run.googleapis.com".into())
    });
    // A Verify the policy refuses, and one that runs.
    let refused = h
        .client()
        .await
        .verify(proto::VerifyRequest {
            url: "https://example.com/".into(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    let stream = h
        .client()
        .await
        .verify(proto::VerifyRequest {
            url: "http://127.0.0.1:9".into(),
            attempts: 1,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let _ = collect(stream).await;
}

/// Each shipped dashboard, parsed.
fn dashboards() -> Vec<(&'static str, serde_json::Value)> {
    [
        "deployd-overview.json",
        "deployd-latency.json",
        "deployd-failures.json",
        "deployd-delivery.json",
    ]
    .into_iter()
    .map(|file| {
        let text = std::fs::read_to_string(root().join("dashboards/grafana").join(file))
            .expect("dashboard");
        (file, serde_json::from_str(&text).expect("json"))
    })
    .collect()
}

/// Grafana's built-in variables, expanded as a query at "now" would see them.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$instance", ".+")
        .replace("$job", ".+")
        .replace("$env", ".*")
}

async fn query(prom: &str, expr: &str) -> serde_json::Value {
    let resp: serde_json::Value = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !tools_present() {
        return;
    }
    let h = Harness::start().await;
    let metrics = h.daemon.metrics.expect("metrics").to_string();
    let prom = start_prometheus(&metrics).await;
    // Target discovery reaches the scraper only after a few seconds; the
    // workload must run while Prometheus watches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while query(&prom.url, "up{job=\"deployd\"} == 1").await["data"]["result"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never scraped the daemon"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    workload(&h).await;
    // A few scrapes and rule evaluations after the last event.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut checked = 0;
    let mut problems = vec![];
    for (file, d) in dashboards() {
        assert_eq!(
            d["templating"]["list"][0]["type"], "datasource",
            "{file}: data source is a variable"
        );
        for v in d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "query")
        {
            // label_values(metric, label)
            let q = expand(v["query"]["query"].as_str().expect("variable query"));
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.rsplit_once(',').expect("metric, label");
            let values: serde_json::Value = reqwest::Client::new()
                .get(format!("{}/api/v1/label/{}/values", prom.url, label.trim()))
                .query(&[("match[]", metric.trim())])
                .send()
                .await
                .expect("label values")
                .json()
                .await
                .expect("json");
            checked += 1;
            if values["data"].as_array().is_none_or(|a| a.is_empty()) {
                problems.push(format!("{file}: variable {} is empty: {values}", v["name"]));
            }
        }
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = expand(t["expr"].as_str().expect("expr"));
                let r = query(&prom.url, &expr).await;
                checked += 1;
                if r["status"] != "success" {
                    problems.push(format!("{file} / {}: error {r}", p["title"]));
                } else if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                    problems.push(format!("{file} / {}: empty for {expr}", p["title"]));
                }
            }
        }
    }
    // Annotations: the scripted deploys and rollbacks are marked.
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for (file, d) in dashboards() {
        let list = d["annotations"]["list"].as_array().expect("annotations");
        assert!(
            list.iter().any(|a| a["builtIn"] == 1),
            "{file}: the built-in Annotations & Alerts"
        );
        for a in list.iter().filter(|a| a["expr"].is_string()) {
            let expr = expand(a["expr"].as_str().expect("expr"));
            let r: serde_json::Value = reqwest::Client::new()
                .get(format!("{}/api/v1/query_range", prom.url))
                .query(&[
                    ("query", expr.as_str()),
                    ("start", &(end - 600).to_string()),
                    ("end", &end.to_string()),
                    ("step", "5"),
                ])
                .send()
                .await
                .expect("query_range")
                .json()
                .await
                .expect("json");
            checked += 1;
            let results: Vec<String> = r["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["metric"]["result"].as_str().unwrap_or("").to_string())
                .collect();
            let want = if a["name"] == "Rollbacks" {
                vec!["success"]
            } else {
                vec!["success", "failure", "rolled_back"]
            };
            for w in want {
                if !results.iter().any(|r| r == w) {
                    problems.push(format!(
                        "{file}: annotation {} does not mark {w}: {r}",
                        a["name"]
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        for q in [
            "deployd_deployments_total",
            "count_over_time(deployd_deployments_total[1m])",
            "up",
            "prometheus_tsdb_head_samples_appended_total",
        ] {
            eprintln!("DEBUG {q}: {}", query(&prom.url, q).await);
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} queries failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked >= 25, "{checked}");

    // The recording rules the alerts read are evaluated and present.
    for rule in [
        "deployd:deploy_success:ratio_rate1h",
        "deployd:build_success:ratio_rate1h",
        "deployd:health_check_success:ratio_rate1h",
    ] {
        let r = query(&prom.url, rule).await;
        assert!(
            r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{rule}: {r}"
        );
    }

    delivery_panels_read_the_workload(&prom.url).await;

    // promtool lints the exposition format.
    let text = h.metrics().await;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = lint.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    percentiles_agree(&h, &prom.url).await;
}

/// The DORA dashboard's stats, read back: the workload's 3 successes, 1
/// change failure (the rollback; the build and preflight failures reached
/// no user), the restore by the canary, and the lead time of the example
/// app's commit (this checkout's HEAD) in the first deploy. The panels
/// average hourly increases, so over this short a range they weigh events
/// by their age: ratios are checked for range, quantiles for their bucket.
async fn delivery_panels_read_the_workload(prom: &str) {
    let text = std::fs::read_to_string(root().join("dashboards/grafana/deployd-delivery.json"))
        .expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("json");
    let stat = |title: &str| {
        let p = d["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["title"].as_str().is_some_and(|t| t.starts_with(title)))
            .unwrap_or_else(|| panic!("panel {title}"));
        expand(p["targets"][0]["expr"].as_str().expect("expr"))
    };
    let value = |r: serde_json::Value| -> f64 {
        r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let frequency = value(query(prom, &stat("Deployment frequency")).await);
    assert!(frequency > 0.0, "deployment frequency {frequency}");
    let cfr = value(query(prom, &stat("Change failure rate")).await);
    assert!(cfr > 0.0 && cfr < 1.0, "change failure rate {cfr}");
    let restore = value(query(prom, &stat("Time to restore")).await);
    assert!(
        restore > 0.0 && restore < 300.0,
        "time to restore {restore} s (within the workload)"
    );
    let lead = value(query(prom, &stat("Lead time for changes")).await);
    let head = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        });
    if let Some(committed) = head {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let age = now.saturating_sub(committed).max(1) as f64;
        // One sample: the median is inside its 19%-wide bucket.
        assert!(
            lead > age * 0.75 && lead < age * 1.25,
            "lead time {lead} s for a commit {age} s old"
        );
    }
}

/// A server answering 500 after a scripted delay: the n-th request waits
/// `delays[n % len]`.
async fn slow_server(delays: Vec<Duration>) -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let delay = delays[next.fetch_add(1, Ordering::Relaxed) % delays.len()];
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx")
                    .await;
            });
        }
    });
    addr
}

/// The fleet p95 Prometheus computes from the buckets lands within 10% of
/// the exact (HDR) p95 of the same probes: 200 probes of Verify calls, each
/// answered after a known delay of 5 to 104 ms.
async fn percentiles_agree(h: &Harness, prom: &str) {
    let delays: Vec<Duration> = (0..100).map(|i| Duration::from_millis(5 + i)).collect();
    let addr = slow_server(delays).await;
    let mut runs = vec![];
    for _ in 0..10 {
        let mut client = h.client().await;
        runs.push(tokio::spawn(async move {
            let stream = client
                .verify(proto::VerifyRequest {
                    url: format!("http://{addr}/"),
                    attempts: 20,
                    max_delay_ms: 10,
                    ..Default::default()
                })
                .await
                .expect("accepted")
                .into_inner();
            collect(stream).await
        }));
    }
    let mut probes = 0;
    for r in runs {
        let events = r.await.expect("verify ran");
        probes += events
            .iter()
            .filter(|e| matches!(e.kind, Some(proto::event::Kind::Probe(_))))
            .count();
    }
    assert_eq!(probes, 200);
    // Two scrapes after the last probe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let value = |r: serde_json::Value| -> f64 {
        r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value: {r}"))
    };
    let buckets = value(
        query(
            prom,
            "histogram_quantile(0.95, sum by (le) (deployd_health_check_duration_seconds_bucket{origin=\"verify_rpc\"}))",
        )
        .await,
    );
    let exact = value(
        query(
            prom,
            "deployd_health_check_duration_hdr_seconds{origin=\"verify_rpc\",quantile=\"0.95\"}",
        )
        .await,
    );
    let off = (buckets - exact).abs() / exact;
    eprintln!(
        "p95 of verify_rpc probes: buckets {buckets:.4} s, HDR {exact:.4} s, {:.1}% apart",
        off * 100.0
    );
    assert!(
        (0.09..0.12).contains(&exact),
        "the scripted p95 is about 100 ms: {exact}"
    );
    assert!(
        off < 0.10,
        "buckets {buckets} vs HDR {exact}: {:.1}%",
        off * 100.0
    );
}
