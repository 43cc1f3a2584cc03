//! Issue 5's acceptance against the sandbox: rollout modes, rollback,
//! private services, and the Verify URL policy.

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto::{self, Stage};
use deployd::config::Backend;
use deployd::sandbox::faults::AppResponse;

fn broken() -> AppResponse {
    AppResponse {
        status: 500,
        delay: Duration::ZERO,
        body: "boom".into(),
    }
}

async fn second_version(
    h: &Harness,
    service: &str,
    mode: proto::RolloutMode,
    canary: u32,
) -> (Vec<proto::Event>, proto::Outcome, proto::Outcome) {
    let (_, first) = deploy(h, deploy_request(service, &example_app())).await;
    assert!(first.success, "{first:?}");
    let app = app_version("2");
    let mut req = deploy_request(service, app.path());
    req.rollout_mode = mode.into();
    req.canary_percent = canary;
    req.health_check = Some(proto::HealthCheck {
        attempts: 3,
        timeout_ms: 2000,
        ..Default::default()
    });
    let (events, o) = deploy(h, req).await;
    (events, o, first)
}

/// What the service URL answers now: the emulated app names its revision.
async fn body_of(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("get")
        .text()
        .await
        .expect("body")
}

fn traffic(h: &Harness, service: &str) -> serde_json::Value {
    h.sandbox
        .service(PROJECT, REGION, service)
        .expect("service")["traffic"]
        .clone()
}

#[tokio::test]
async fn verify_before_traffic_never_moves_traffic_to_a_broken_revision() {
    let h = Harness::start().await;
    // The broken answer goes to the *second* revision: deploy the first,
    // then arm the fault.
    let (_, first) = deploy(&h, deploy_request("vbt", &example_app())).await;
    assert!(first.success);
    h.sandbox.next_revision_answers(PROJECT, "vbt", broken());
    let app = app_version("2");
    let mut req = deploy_request("vbt", app.path());
    req.rollout_mode = proto::RolloutMode::VerifyBeforeTraffic.into();
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 3,
        ..Default::default()
    });
    let before = h.sandbox.requests().len();
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Verify));
    // Users never saw it: nothing to roll back.
    assert!(!o.should_rollback && !o.rolled_back);
    // Probes went to the candidate's tag URL, not the service URL.
    let p = probes(&events);
    assert!(
        !p.is_empty() && p.iter().all(|p| !p.url.starts_with(&o.url)),
        "{p:?}"
    );
    // Every Run request of this deploy that set traffic left the previous
    // revision at 100% (and there was one: the candidate's rollout).
    let mut traffic_bodies = 0;
    for r in h.sandbox.requests()[before..]
        .iter()
        .filter(|r| r.method.starts_with("run.projects.locations.services."))
    {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if let Some(t) = body.get("traffic") {
            traffic_bodies += 1;
            let on_prev = t
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["revision"] == first.revision.as_str() && t["percent"] == 100);
            assert!(on_prev, "{t}");
        }
    }
    assert!(traffic_bodies >= 1, "the rollout sent its traffic split");
    let t = traffic(&h, "vbt");
    assert_eq!(t[0]["revision"], first.revision.as_str());
    assert_eq!(t[0]["percent"], 100);
    // And every probe of the service URL itself still reaches the old one.
    let answer = body_of(&o.url).await;
    assert!(answer.contains(&first.revision), "{answer}");
}

#[tokio::test]
async fn verify_before_traffic_promotes_a_healthy_revision() {
    let h = Harness::start().await;
    let (events, o, first) =
        second_version(&h, "vbt-ok", proto::RolloutMode::VerifyBeforeTraffic, 0).await;
    assert!(o.success, "{o:?}");
    assert_ne!(o.revision, first.revision);
    assert!(o.revision.starts_with("vbt-ok-"));
    let p = probes(&events);
    assert!(
        p[0].url != format!("{}/", o.url),
        "verified through the tag URL"
    );
    assert_eq!(
        traffic(&h, "vbt-ok"),
        serde_json::json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": o.revision, "percent": 100}])
    );
    let answer = body_of(&o.url).await;
    assert!(answer.contains(&o.revision), "{answer}");
}

#[tokio::test]
async fn canary_sends_a_share_first_and_rolls_back_a_broken_one() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("canary", &example_app())).await;
    assert!(first.success);
    h.sandbox.next_revision_answers(PROJECT, "canary", broken());
    let app = app_version("2");
    let mut req = deploy_request("canary", app.path());
    req.rollout_mode = proto::RolloutMode::Canary.into();
    req.canary_percent = 20;
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    assert!(!o.success && o.should_rollback && o.rolled_back, "{o:?}");
    // The rollout asked for an 80/20 split with the candidate tagged.
    let create = h
        .sandbox
        .requests()
        .into_iter()
        .rfind(|r| r.method == "run.projects.locations.services.patch" && r.query.is_empty())
        .expect("patch");
    let body: serde_json::Value = serde_json::from_slice(&create.body).expect("json");
    assert_eq!(body["traffic"][0]["percent"], 80);
    assert_eq!(body["traffic"][1]["percent"], 20);
    assert_eq!(body["traffic"][1]["tag"], "candidate");
    assert_eq!(
        traffic(&h, "canary")[0]["revision"],
        first.revision.as_str()
    );
    assert_eq!(traffic(&h, "canary")[0]["percent"], 100);
}

#[tokio::test]
async fn canary_that_is_healthy_ends_at_100_percent() {
    let h = Harness::start().await;
    let (_, o, _) = second_version(&h, "canary-ok", proto::RolloutMode::Canary, 10).await;
    assert!(o.success, "{o:?}");
    assert_eq!(traffic(&h, "canary-ok")[0]["revision"], o.revision.as_str());
    assert_eq!(traffic(&h, "canary-ok")[0]["percent"], 100);
}

#[tokio::test]
async fn first_deploy_has_nothing_to_roll_back_to() {
    let h = Harness::start().await;
    h.sandbox.next_revision_answers(PROJECT, "fresh", broken());
    let mut req = deploy_request("fresh", &example_app());
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success && !o.should_rollback && !o.rolled_back);
    assert_eq!(o.previous_revision, "");
    assert!(!stages_started(&events).contains(&i32::from(Stage::Rollback)));
}

#[tokio::test]
async fn outcome_reports_probe_latency_percentiles() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("stats", &example_app())).await;
    assert!(first.success);
    let answers = vec![
        AppResponse {
            status: 503,
            delay: Duration::from_millis(30),
            body: "warming".into()
        };
        2
    ];
    assert!(h.sandbox.script_app(PROJECT, REGION, "stats", answers));
    let app = app_version("2");
    let (events, o) = deploy(&h, deploy_request("stats", app.path())).await;
    assert!(o.success);
    let s = o.probe_stats.expect("stats");
    assert_eq!(s.attempts, 3);
    assert!(s.max_ms >= 30.0 && s.p95_ms >= s.p50_ms, "{s:?}");
    let p = probes(&events);
    assert_eq!(p[0].error_class, "http_status");
    assert!(p[0].headers_ms <= p[0].response_time_ms);
    assert_eq!(o.final_url, format!("{}/", o.url));
}

#[tokio::test]
async fn private_service_without_invoker_permission_names_it() {
    let h = Harness::start().await;
    h.sandbox
        .with_project(PROJECT, |p| p.permissions.remove("run.routes.invoke"));
    let mut req = deploy_request("private", &example_app());
    if let Some(rt) = req.runtime.as_mut() {
        rt.allow_unauthenticated = false;
    }
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (events, o) = deploy(&h, req).await;
    assert!(probes(&events).iter().all(|p| p.status_code == 403));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "INVOKER_DENIED");
    assert!(
        err.message
            .contains("roles/run.invoker (permission run.routes.invoke)"),
        "{}",
        err.message
    );
    assert!(err.remediation[0].contains("gcloud run services add-iam-policy-binding private"));
}

fn private(service: &str) -> proto::DeployRequest {
    let mut req = deploy_request(service, &example_app());
    if let Some(rt) = req.runtime.as_mut() {
        rt.allow_unauthenticated = false;
    }
    req
}

#[tokio::test]
async fn private_service_is_probed_with_the_metadata_servers_token() {
    // No invoker account: as on Google, deployd's own identity comes from
    // the metadata server (here the sandbox's, named by GCE_METADATA_HOST).
    let h = Harness::start_config(|c| {
        c.invoker_service_account = None;
        if let Backend::Endpoint(base) = &c.backend {
            c.metadata_host = Some(base.trim_start_matches("http://").to_string());
        }
    })
    .await;
    let (events, o) = deploy(&h, private("meta")).await;
    assert!(o.verified, "{o:?}");
    let asked = h.sandbox.requests_of("metadata.identity");
    // Preflight's check that a token can be had, then one per probe.
    assert_eq!(asked.len(), 1 + probes(&events).len());
    assert!(asked.iter().all(|a| a
        .headers
        .iter()
        .any(|(k, v)| k == "metadata-flavor" && v == "Google")));
    // The probes' tokens are for the service's URL.
    let audience = format!("audience={}", urlencode(&o.url));
    assert!(asked[1].query.contains(&audience), "{}", asked[1].query);
    assert_eq!(
        h.sandbox
            .count("iamcredentials.projects.serviceAccounts.generateIdToken"),
        0
    );
    let probe = h.sandbox.requests_of("app.request").remove(0);
    assert!(probe
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("Bearer eyJ")));
}

#[tokio::test]
async fn private_service_with_no_identity_to_probe_with_says_so() {
    let h = Harness::start_config(|c| c.invoker_service_account = None).await;
    let (_, o) = deploy(&h, private("noid")).await;
    assert!(!o.success && !o.verified);
    // Found by preflight, before anything was uploaded or built.
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight), "{o:?}");
    let c = o
        .checks
        .iter()
        .find(|c| c.name == "probe_identity")
        .expect("the check");
    assert!(!c.ok, "{c:?}");
    assert!(c.detail.contains("noid"), "{c:?}");
    let err = o.error.expect("failure");
    assert_eq!(err.code, "PREFLIGHT_FAILED");
    assert!(!err.retriable);
    assert!(
        err.remediation[0].contains("DEPLOYD_INVOKER_SERVICE_ACCOUNT"),
        "{err:?}"
    );
    assert_eq!(h.sandbox.count("storage.objects.insert"), 0);
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
    assert_eq!(
        h.sandbox.count("app.request"),
        0,
        "nothing probed without a token"
    );
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

async fn verify_status(h: &Harness, url: &str) -> Result<proto::Outcome, tonic::Status> {
    let stream = h
        .client()
        .await
        .verify(proto::VerifyRequest {
            url: url.into(),
            attempts: 1,
            timeout_ms: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(outcome(&collect(stream).await))
}

#[tokio::test]
async fn verify_refuses_urls_outside_the_policy() {
    let h = Harness::start().await;
    for (url, why) in [
        ("https://example.com/", "not in the verify allow-list"),
        (
            "http://169.254.169.254/computeMetadata/v1/",
            "not in the verify allow-list",
        ),
        (
            "http://metadata.google.internal/",
            "not in the verify allow-list",
        ),
        // Allowed by name, but it resolves to loopback.
        (
            "http://localhost:9/",
            "resolves to 127.0.0.1, a loopback address",
        ),
    ] {
        let status = verify_status(&h, url).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{url}");
        assert!(
            status.message().contains(why),
            "{url}: {}",
            status.message()
        );
    }
    // Not a URL deployd probes at all: refused as invalid.
    let status = verify_status(&h, "ftp://hello-abc.a.run.app/")
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Nothing was probed.
    assert_eq!(h.sandbox.count("app.request"), 0);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_dns_failure_not_a_refusal() {
    let h = Harness::start().await;
    // A 64-character label: the resolver rejects it on this machine, so no
    // query leaves it, and the name can never resolve.
    let url = format!("https://{}.a.run.app/", "x".repeat(64));
    let req = proto::VerifyRequest {
        url: url.clone(),
        attempts: 3,
        timeout_ms: 1000,
        base_delay_ms: 10,
        ..Default::default()
    };
    let (events, o) = verify_rpc(&h, req).await;
    assert!(!o.success && !o.verified);
    let p = probes(&events);
    assert_eq!(p.len(), 3, "every attempt resolves again");
    for probe in &p {
        assert_eq!(probe.error_class, "dns", "{probe:?}");
        assert!(probe.error.contains("does not resolve"), "{}", probe.error);
    }
    let retries = events
        .iter()
        .filter(|e| matches!(e.kind, Some(proto::event::Kind::Retry(_))))
        .count();
    assert_eq!(retries, 2);
    let err = o.error.expect("failure");
    assert_eq!(err.code, "UNHEALTHY");
    assert!(err.message.contains("dns:"), "{}", err.message);
}

/// A tiny server with redirects and a header echo, on loopback.
async fn redirect_server() -> String {
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route(
            "/start",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/healthz")]) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/elsewhere",
            get(move || async move {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, format!("http://localhost:{port}/healthz"))],
                )
            }),
        )
        .route(
            "/needs-header",
            get(|h: HeaderMap| async move {
                if h.get("x-probe").is_some_and(|v| v == "deployd") {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::BAD_REQUEST, "missing header")
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn redirects_are_followed_within_the_host_only_and_headers_are_sent() {
    let h = Harness::start().await;
    let base = redirect_server().await;
    let run = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let (h, base) = (&h, base.clone());
        async move {
            let stream = h
                .client()
                .await
                .verify(proto::VerifyRequest {
                    url: base,
                    health_path: path.into(),
                    attempts: 1,
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                })
                .await
                .expect("accepted")
                .into_inner();
            let events = collect(stream).await;
            (probes(&events), outcome(&events))
        }
    };
    let (p, o) = run("/start", vec![]).await;
    assert!(o.success, "{p:?}");
    assert_eq!(o.final_url, format!("{base}/healthz"));
    let (p, o) = run("/elsewhere", vec![]).await;
    assert!(!o.success);
    assert_eq!(p[0].error_class, "redirect");
    assert!(p[0].error.contains("http://localhost:"), "{}", p[0].error);
    let (_, o) = run("/needs-header", vec![]).await;
    assert!(!o.success);
    let (_, o) = run("/needs-header", vec![("x-probe", "deployd")]).await;
    assert!(o.success);
}

/// The sandbox's history stays within its limits over many deploys, the
/// serving revision is never evicted, and a tag's listener stops when the
/// tag is gone.
#[tokio::test]
async fn the_sandbox_keeps_bounded_state_and_stops_listeners_of_removed_tags() {
    use deployd::sandbox::{Limits, SandboxConfig};
    let limits = Limits {
        requests: 100,
        finished_builds: 2,
        done_operations: 4,
        revisions_per_service: 2,
        ..Limits::default()
    };
    let h = Harness::start_with(SandboxConfig {
        limits: limits.clone(),
        ..SandboxConfig::fast()
    })
    .await;
    let (_, first) = deploy(&h, deploy_request("bounded", &example_app())).await;
    assert!(first.success, "{first:?}");
    let mut tag_urls = Vec::new();
    let mut last = first;
    for v in 2..=6 {
        let app = app_version(&v.to_string());
        let mut req = deploy_request("bounded", app.path());
        req.rollout_mode = proto::RolloutMode::Canary.into();
        req.canary_percent = 10;
        let (events, o) = deploy(&h, req).await;
        assert!(o.success, "deploy {v}: {o:?}");
        tag_urls.extend(
            probes(&events)
                .into_iter()
                .map(|p| p.url)
                .filter(|u| !u.starts_with(&o.url)),
        );
        last = o;
    }
    let sizes = h.sandbox.sizes();
    assert!(sizes.builds <= limits.finished_builds, "{sizes:?}");
    assert!(sizes.operations <= limits.done_operations, "{sizes:?}");
    assert!(sizes.revisions <= limits.revisions_per_service, "{sizes:?}");
    assert!(sizes.requests <= limits.requests, "{sizes:?}");
    assert!(h.sandbox.requests_seen() > limits.requests as u64);
    assert_eq!(
        sizes.tag_listeners, 0,
        "the canary's tag is gone: {sizes:?}"
    );
    // The serving revision survived eviction and answers.
    assert!(body_of(&last.url).await.contains(&last.revision));
    assert_eq!(
        traffic(&h, "bounded")[0]["revision"],
        last.revision.as_str()
    );
    // Each canary's candidate was probed on its tag URL (3 times: the
    // health gate); none still listens.
    tag_urls.dedup();
    assert_eq!(tag_urls.len(), 5, "{tag_urls:?}");
    for url in tag_urls {
        let err = reqwest::get(&url)
            .await
            .expect_err("the tag's listener stopped");
        assert!(err.is_connect(), "{url}: {err}");
    }
}

/// By default the revision carries an HTTP startup probe on the health
/// path, with settings Cloud Run accepts.
#[tokio::test]
async fn the_revision_gets_an_http_startup_probe_on_the_health_path() {
    let h = Harness::start().await;
    let mut req = deploy_request("probed", &example_app());
    if let Some(hc) = req.health_check.as_mut() {
        hc.path = "/healthz".into();
    }
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let create = h
        .sandbox
        .requests_of("run.projects.locations.services.create")
        .pop()
        .expect("create");
    let body: serde_json::Value = serde_json::from_slice(&create.body).expect("json");
    let probe = &body["template"]["containers"][0]["startupProbe"];
    assert_eq!(probe["httpGet"]["path"], "/healthz", "{body}");
    assert_eq!(probe["periodSeconds"], 2);
    assert_eq!(probe["timeoutSeconds"], 1);
    assert_eq!(probe["failureThreshold"], 120);
    assert_eq!(probe["initialDelaySeconds"], 0);
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            Some(proto::event::Kind::Progress(p)) if p.message.contains("HTTP startup probe: GET /healthz every 2 s"))),
        "{events:?}"
    );
}

/// A revision that fails its startup probe never becomes ready: the deploy
/// fails at the deploy stage and traffic never leaves the old revision.
/// Without the probe the same revision becomes ready and is caught only
/// by verification.
#[tokio::test]
async fn a_revision_that_fails_its_startup_probe_never_becomes_ready() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("gated", &example_app())).await;
    assert!(first.success, "{first:?}");
    h.sandbox.next_revision_answers(PROJECT, "gated", broken());
    let app = app_version("2");
    let (_, o) = deploy(&h, deploy_request("gated", app.path())).await;
    assert!(!o.success, "{o:?}");
    assert_eq!(o.failed_stage, i32::from(Stage::Deploy), "{o:?}");
    let e = o.error.clone().expect("error");
    assert!(e.message.contains("startup probe"), "{e:?}");
    assert_eq!(traffic(&h, "gated")[0]["revision"], first.revision.as_str());
    let service = h
        .sandbox
        .service(PROJECT, REGION, "gated")
        .expect("service");
    assert!(
        service["latestReadyRevision"]
            .as_str()
            .is_some_and(|r| r.ends_with(&first.revision)),
        "{service}"
    );

    h.sandbox.next_revision_answers(PROJECT, "gated", broken());
    let app = app_version("3");
    let mut req = deploy_request("gated", app.path());
    if let Some(hc) = req.health_check.as_mut() {
        hc.attempts = 2;
        hc.startup_probe = Some(proto::StartupProbe {
            disabled: true,
            ..Default::default()
        });
    }
    let (_, o) = deploy(&h, req).await;
    assert!(!o.success, "{o:?}");
    assert_eq!(o.failed_stage, i32::from(Stage::Verify), "{o:?}");
    let create = h
        .sandbox
        .requests_of("run.projects.locations.services.patch")
        .into_iter()
        .rfind(|r| r.query.is_empty())
        .expect("patch");
    let body: serde_json::Value = serde_json::from_slice(&create.body).expect("json");
    assert!(
        body["template"]["containers"][0]
            .get("startupProbe")
            .is_none(),
        "{body}"
    );
}

/// In a verify-first rollout the candidate needs 3 healthy answers in a
/// row before it gets traffic: a failure after one starts the streak over.
#[tokio::test]
async fn a_candidate_needs_three_healthy_answers_in_a_row() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("gate", &example_app())).await;
    assert!(first.success, "{first:?}");
    let ok = AppResponse {
        status: 200,
        delay: Duration::ZERO,
        body: "ok".into(),
    };
    assert!(h
        .sandbox
        .script_app(PROJECT, REGION, "gate", vec![ok.clone(), broken()]));
    let app = app_version("2");
    let mut req = deploy_request("gate", app.path());
    req.rollout_mode = proto::RolloutMode::VerifyBeforeTraffic.into();
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let p = probes(&events);
    let healthy: Vec<bool> = p.iter().map(|p| p.healthy).collect();
    assert_eq!(healthy, vec![true, false, true, true, true], "{p:?}");
    assert!(
        p.iter()
            .all(|p| p.url.contains("candidate") || !p.url.starts_with(&o.url)),
        "{p:?}"
    );
    assert_eq!(traffic(&h, "gate")[0]["revision"], o.revision.as_str());
}
