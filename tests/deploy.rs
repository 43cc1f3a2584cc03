//! Deploy over gRPC against the sandbox, asserting on what the client saw
//! and on what the emulator received.

mod common;

use common::*;
use deployd::api::proto::{self, Stage};
use deployd::sandbox::faults::{AppResponse, BuildFault, Fault, FaultAction, InjectedError};
use std::time::Duration;

#[tokio::test]
async fn happy_deploy_runs_every_stage_and_verifies() {
    let h = Harness::start().await;
    let (events, o) = deploy(&h, deploy_request("hello", &example_app())).await;

    assert!(o.success, "{o:?}");
    assert!(o.verified);
    assert!(o.url.starts_with("http://127.0.0.1:"), "{}", o.url);
    assert!(o.response_time_ms > 0.0);
    assert_deployd_named(&o.revision, "hello");
    assert!(
        o.image
            .contains("-docker.pkg.dev/demo-project/deployd/hello@sha256:"),
        "{}",
        o.image
    );
    assert_eq!(o.previous_revision, "");
    assert_eq!(
        stages_started(&events),
        vec![
            Stage::Source,
            Stage::Analyze,
            Stage::Preflight,
            Stage::Build,
            Stage::Deploy,
            Stage::Verify
        ]
        .into_iter()
        .map(i32::from)
        .collect::<Vec<_>>()
    );
    assert!(events
        .iter()
        .all(|e| !e.deployment_id.is_empty() && e.deployment_id == events[0].deployment_id));
    // Every preflight check passed, and each was reported: the project's
    // eight, and Cloud Run's verdict on the revision.
    assert_eq!(o.checks.len(), 9);
    assert_eq!(o.checks[8].name, "revision_spec");
    assert!(o.checks.iter().all(|c| c.ok), "{:?}", o.checks);
    // The build log was streamed, Dockerfile steps included.
    let logs = logs(&events);
    assert!(
        logs.iter()
            .any(|l| l.contains("Step 1/7 : FROM python:3.12-slim")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l == "DONE"));

    // What the emulator received: the archive upload, the build, the
    // service create, and the probe.
    assert_eq!(h.sandbox.count("storage.objects.insert"), 1);
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );
    assert_eq!(
        changes(&h.sandbox, "run.projects.locations.services.create"),
        1
    );
    // And preflight's validateOnly create before all of them.
    assert_eq!(h.sandbox.count("run.projects.locations.services.create"), 2);
    assert!(h.sandbox.count("app.request") >= 1);
    let build = &h.sandbox.builds()[0];
    assert_eq!(build["options"]["machineType"], "E2_HIGHCPU_8");
    assert_eq!(build["timeout"], "1200s");
    assert_eq!(build["steps"][1]["timeout"], "600s");
    assert_eq!(build["steps"][1]["args"][1], "--cache-from");
    assert_eq!(build["status"], "SUCCESS");
    assert!(build["source"]["storageSource"]["generation"]
        .as_str()
        .is_some_and(|g| !g.is_empty()));
    // The uploaded archive is what was built.
    assert!(built_archive(&h).len() > 100);
}

#[tokio::test]
async fn runtime_settings_reach_the_run_api() {
    let h = Harness::start().await;
    let mut req = deploy_request("configured", &example_app());
    req.runtime = Some(proto::RuntimeSettings {
        env: [("APP_ENV".to_string(), "prod".to_string())].into(),
        secrets: vec![proto::SecretEnv {
            env_name: "DB_PASSWORD".into(),
            secret: "db-password".into(),
            version: String::new(),
        }],
        cpu: "2".into(),
        memory: "1Gi".into(),
        min_instances: 1,
        max_instances: 7,
        concurrency: 40,
        request_timeout_seconds: 120,
        service_account: "100000000001-compute@developer.gserviceaccount.com".into(),
        ingress: proto::Ingress::InternalLoadBalancer.into(),
        vpc_egress: proto::VpcEgress::AllTraffic.into(),
        vpc_connector: "projects/demo-project/locations/us-central1/connectors/c1".into(),
        allow_unauthenticated: false,
        container_port: 9000,
    });
    // A private service: probes carry an identity token minted for it.
    let (_, o) = deploy(&h, req).await;
    assert!(o.verified, "{o:?}");
    let probe = h
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.method == "app.request")
        .expect("probe");
    assert!(probe
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("Bearer ")));
    // One token for preflight's check that the daemon can mint, one for
    // the probe.
    assert_eq!(
        h.sandbox
            .count("iamcredentials.projects.serviceAccounts.generateIdToken"),
        2
    );

    let svc = h
        .sandbox
        .service(PROJECT, REGION, "configured")
        .expect("service exists");
    let c = &svc["template"]["containers"][0];
    assert_eq!(
        c["env"][0],
        serde_json::json!({"name": "APP_ENV", "value": "prod"})
    );
    assert_eq!(
        c["env"][1]["valueSource"]["secretKeyRef"],
        serde_json::json!({"secret": "db-password", "version": "latest"})
    );
    assert_eq!(
        c["resources"]["limits"],
        serde_json::json!({"cpu": "2", "memory": "1Gi"})
    );
    assert_eq!(c["ports"][0]["containerPort"], 9000);
    let t = &svc["template"];
    assert_eq!(
        t["scaling"],
        serde_json::json!({"minInstanceCount": 1, "maxInstanceCount": 7})
    );
    assert_eq!(t["maxInstanceRequestConcurrency"], 40);
    assert_eq!(t["timeout"], "120s");
    assert_eq!(
        t["serviceAccount"],
        "100000000001-compute@developer.gserviceaccount.com"
    );
    assert_eq!(t["vpcAccess"]["egress"], "ALL_TRAFFIC");
    assert_eq!(svc["ingress"], "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER");
    assert_eq!(svc["labels"]["managed-by"], "deployd");
    // Private: no allUsers invoker binding was written.
    assert_eq!(
        h.sandbox
            .count("run.projects.locations.services.setIamPolicy"),
        0
    );
}

#[tokio::test]
async fn public_service_gets_the_invoker_binding() {
    let h = Harness::start().await;
    let (_, o) = deploy(&h, deploy_request("public", &example_app())).await;
    assert!(o.success);
    let set: Vec<_> = h
        .sandbox
        .requests_of("run.projects.locations.services.setIamPolicy");
    assert_eq!(set.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&set[0].body).expect("json body");
    assert_eq!(
        body["policy"]["bindings"][0],
        serde_json::json!({"role": "roles/run.invoker", "members": ["allUsers"]})
    );
}

#[tokio::test]
async fn second_deploy_reuses_the_source_and_reports_the_previous_revision() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("twice", &example_app())).await;
    assert!(first.success);
    let (events, second) = deploy(&h, deploy_request("twice", &example_app())).await;
    assert!(second.success, "{second:?}");
    assert_eq!(second.previous_revision, first.revision);
    assert_ne!(second.revision, first.revision);
    assert_deployd_named(&second.revision, "twice");
    // Same tree, same archive digest: uploaded once.
    assert_eq!(h.sandbox.count("storage.objects.insert"), 1);
    assert_eq!(
        changes(&h.sandbox, "run.projects.locations.services.patch"),
        1
    );
    // The second build pulled the first build's image as its cache.
    assert!(
        logs(&events)
            .iter()
            .any(|l| l.contains("latest: Pulling from")),
        "cache pull"
    );
}

#[tokio::test]
async fn failing_dockerfile_step_is_permanent_and_quoted() {
    let h = Harness::start().await;
    h.sandbox.fail_next_build(BuildFault::StepFails {
        step: "build".into(),
        lines: vec![
            "Step 4/7 : RUN pip install -r requirements.txt".into(),
            "ERROR: Could not find a version that satisfies the requirement flask==99.0".into(),
            "The command '/bin/sh -c pip install -r requirements.txt' returned a non-zero code: 1"
                .into(),
        ],
    });
    let (_, o) = deploy(&h, deploy_request("broken", &example_app())).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Build));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "BUILD_FAILED");
    assert!(!err.retriable);
    assert!(
        err.message.contains("failing step: build"),
        "{}",
        err.message
    );
    assert!(err.message.contains("flask==99.0"), "{}", err.message);
    // A user's broken Dockerfile is not retried, and nothing was deployed.
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );
    assert_eq!(
        changes(&h.sandbox, "run.projects.locations.services.create"),
        0
    );
}

#[tokio::test]
async fn rate_limited_build_create_is_retried_with_backoff() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 2,
        action: FaultAction::Error(InjectedError::rate_limited("cloudbuild.googleapis.com")),
    });
    let (events, o) = deploy(&h, deploy_request("quota", &example_app())).await;
    assert!(o.success, "{o:?}");
    let creates: Vec<_> = h
        .sandbox
        .requests_of("cloudbuild.projects.locations.builds.create");
    assert_eq!(creates.len(), 3);
    assert_eq!(
        creates.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 429, 200]
    );
    // Waits of about 20 ms then 40 ms (the base delay is 20 ms in tests).
    let gap1 = creates[1].at - creates[0].at;
    let gap2 = creates[2].at - creates[1].at;
    assert!(
        gap1 >= Duration::from_millis(20) && gap1 < Duration::from_millis(500),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(40) && gap2 < Duration::from_millis(500),
        "{gap2:?}"
    );
    let retries = events
        .iter()
        .filter(|e| matches!(e.kind, Some(proto::event::Kind::Retry(_))))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn resets_and_503s_while_polling_do_not_fail_the_build() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.get".into(),
        remaining: 2,
        action: FaultAction::Reset,
    });
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.get".into(),
        remaining: 2,
        action: FaultAction::Error(InjectedError::unavailable()),
    });
    let (_, o) = deploy(&h, deploy_request("flaky", &example_app())).await;
    assert!(o.success, "{o:?}");
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );
}

#[tokio::test]
async fn unhealthy_revision_is_rolled_back_automatically() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("flaky-app", &example_app())).await;
    assert!(first.success);
    // The next revision answers 500 to every request; the old one stays healthy.
    h.sandbox.next_revision_answers(
        PROJECT,
        "flaky-app",
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "boom".into(),
        },
    );
    let app = app_version("2");
    let mut req = deploy_request("flaky-app", app.path());
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 5,
        timeout_ms: 2000,
        ..Default::default()
    });
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Verify));
    assert!(o.should_rollback);
    assert!(o.rolled_back);
    assert_eq!(o.previous_revision, first.revision);
    assert_ne!(o.revision, first.revision);
    assert_eq!(o.error.clone().expect("failure").code, "UNHEALTHY");
    // Five probes of the new revision, all 500; then the old one, healthy.
    let probes = probes(&events);
    assert_eq!(probes.len(), 6);
    assert!(probes[..5]
        .iter()
        .all(|p| p.status_code == 500 && !p.healthy));
    assert!(probes[5].healthy);
    assert!(stages_started(&events).contains(&i32::from(Stage::Rollback)));
    // Each probe belongs to its stage: the rollback's is STAGE_ROLLBACK,
    // between that stage's start and finish.
    let stage_of_probes: Vec<i32> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(proto::event::Kind::Probe(_))))
        .map(|e| e.stage)
        .collect();
    assert_eq!(
        stage_of_probes,
        [
            vec![i32::from(Stage::Verify); 5],
            vec![i32::from(Stage::Rollback)]
        ]
        .concat()
    );
    let at = |want: fn(&proto::event::Kind) -> bool| {
        events
            .iter()
            .position(|e| {
                e.stage == i32::from(Stage::Rollback) && e.kind.as_ref().is_some_and(want)
            })
            .expect("event")
    };
    let started = at(|k| matches!(k, proto::event::Kind::StageStarted(_)));
    let probed = at(|k| matches!(k, proto::event::Kind::Probe(_)));
    let finished = at(|k| matches!(k, proto::event::Kind::StageFinished(_)));
    assert!(started < probed && probed < finished);
    // What to do starts with where users are, not with "roll back".
    let failure = o.error.clone().expect("failure");
    assert!(
        failure.remediation[0].starts_with(&format!("Traffic is back on {}", first.revision)),
        "{failure:?}"
    );
    // The five probes followed the backoff (base 20 ms in tests: 20, 40, 80, 160).
    let at: Vec<_> = h
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.method == "app.request" && r.status == 500)
        .map(|r| r.at)
        .collect();
    assert_eq!(at.len(), 5);
    for (i, want_ms) in [20u64, 40, 80, 160].iter().enumerate() {
        let gap = at[i + 1] - at[i];
        assert!(gap >= Duration::from_millis(*want_ms), "gap {i}: {gap:?}");
        assert!(
            gap < Duration::from_millis(*want_ms + 400),
            "gap {i}: {gap:?}"
        );
    }
    // The sandbox shows all traffic pinned back on the previous revision.
    let svc = h
        .sandbox
        .service(PROJECT, REGION, "flaky-app")
        .expect("service");
    assert_eq!(
        svc["traffic"],
        serde_json::json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": first.revision, "percent": 100}])
    );
    let patch = h
        .sandbox
        .requests()
        .into_iter()
        .rfind(|r| r.method == "run.projects.locations.services.patch")
        .expect("traffic patch");
    assert_eq!(patch.query, "updateMask=traffic");
    let m = h.metrics().await;
    assert!(counter(&m, "deployd_rollbacks_total", "result=\"success\"") >= 1.0);
    assert!(counter(&m, "deployd_deployments_total", "result=\"rolled_back\"") >= 1.0);
}

/// A rollback that cannot move traffic says users are still on the new
/// revision and gives the command that moves them; the outcome carries the
/// structured rollback failure.
#[tokio::test]
async fn a_rollback_that_cannot_move_traffic_says_users_are_still_on_the_new_revision() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("stuck-app", &example_app())).await;
    assert!(first.success);
    h.sandbox.next_revision_answers(
        PROJECT,
        "stuck-app",
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "boom".into(),
        },
    );
    // Preflight's validateOnly patch and the rollout's go through; the
    // rollback's is refused for good.
    h.sandbox.inject_after(
        2,
        Fault {
            method: "run.projects.locations.services.patch".into(),
            remaining: 10,
            action: FaultAction::Error(InjectedError::new(
                403,
                "PERMISSION_DENIED",
                "Permission 'run.services.update' denied",
            )),
        },
    );
    let app = app_version("2");
    let mut req = deploy_request("stuck-app", app.path());
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 2,
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    assert!(!o.success && !o.rolled_back && o.should_rollback, "{o:?}");
    let r = o.rollback_failure.clone().expect("rollback failure");
    assert!(!r.traffic_moved);
    assert_eq!(r.serving_revision, o.revision);
    assert_eq!(r.error.expect("why").code, "CLOUD_API_ERROR");
    let first_remedy = &o.error.expect("failure").remediation[0];
    assert!(
        first_remedy.contains(&format!("users are still on {}", o.revision))
            && first_remedy.contains(&format!("--to-revisions={}=100", first.revision)),
        "{first_remedy}"
    );
}

/// A rollback whose previous revision is unhealthy too: traffic is on it,
/// the outcome says so, and no remedy proposes moving users where they are.
#[tokio::test]
async fn a_rollback_to_an_unhealthy_revision_says_where_users_are() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("both-bad", &example_app())).await;
    assert!(first.success);
    let boom = AppResponse {
        status: 500,
        delay: Duration::ZERO,
        body: "boom".into(),
    };
    h.sandbox.next_revision_answers(PROJECT, "both-bad", boom);
    // The first revision starts failing every request too.
    assert!(h.sandbox.revision_misbehaves(
        PROJECT,
        REGION,
        "both-bad",
        &first.revision,
        deployd::sandbox::world::Misbehaviour {
            error_rate: 1.0,
            error_status: 500,
            added_latency: Duration::ZERO,
        },
    ));
    let app = app_version("2");
    let mut req = deploy_request("both-bad", app.path());
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 2,
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    let r = o.rollback_failure.clone().expect("rollback failure");
    assert!(r.traffic_moved);
    assert_eq!(r.serving_revision, first.revision);
    assert_eq!(r.error.expect("why").code, "UNHEALTHY");
    let remediation = o.error.expect("failure").remediation;
    assert!(
        remediation[0].contains(&format!("moved traffic back to {}", first.revision)),
        "{remediation:?}"
    );
    assert!(
        !remediation
            .iter()
            .any(|r| r.contains(&format!("--to-revisions={}=100", first.revision))),
        "no remedy moves users to where they are: {remediation:?}"
    );
}

#[tokio::test]
async fn recommend_policy_reports_but_does_not_roll_back() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("advice", &example_app())).await;
    assert!(first.success);
    h.sandbox.next_revision_answers(
        PROJECT,
        "advice",
        AppResponse {
            status: 503,
            delay: Duration::ZERO,
            body: "down".into(),
        },
    );
    let app = app_version("2");
    let mut req = deploy_request("advice", app.path());
    req.rollback_policy = proto::RollbackPolicy::Recommend.into();
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (events, o) = deploy(&h, req).await;
    assert!(o.should_rollback && !o.rolled_back);
    assert!(!stages_started(&events).contains(&i32::from(Stage::Rollback)));
    // The rollback is the caller's: a runnable command for it.
    let first_step = &o.error.clone().expect("failure").remediation[0];
    assert!(
        first_step.starts_with(&format!("Traffic is still on {}", o.revision))
            && first_step.ends_with(&format!(
                "gcloud run services update-traffic advice --region={REGION} --project={PROJECT} --to-revisions={}=100",
                first.revision
            )),
        "{first_step}"
    );
    // Traffic stays on the latest (broken) revision, as asked.
    let svc = h
        .sandbox
        .service(PROJECT, REGION, "advice")
        .expect("service");
    assert_eq!(
        svc["traffic"][0]["type"],
        "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    );
}

#[tokio::test]
async fn slow_start_is_verified_on_a_later_attempt() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("slow", &example_app())).await;
    assert!(first.success);
    let app = app_version("2");
    let answers = vec![
        AppResponse {
            status: 503,
            delay: Duration::ZERO,
            body: "starting".into()
        };
        2
    ];
    assert!(h.sandbox.script_app(PROJECT, REGION, "slow", answers));
    let (events, o) = deploy(&h, deploy_request("slow", app.path())).await;
    assert!(o.success, "{o:?}");
    let probes = probes(&events);
    assert_eq!(
        probes.iter().map(|p| p.status_code).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    assert!(o.response_time_ms > 0.0);
}

#[tokio::test]
async fn revision_that_never_becomes_ready_is_reported_with_the_api_message() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("crashy", &example_app())).await;
    assert!(first.success);
    h.sandbox.revisions_not_ready(PROJECT, "crashy", 1);
    let app = app_version("2");
    let probes_before = h.sandbox.count("app.request");
    let (_, o) = deploy(&h, deploy_request("crashy", app.path())).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Deploy));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "REVISION_NOT_READY");
    assert!(
        err.message
            .contains("failed to start and listen on the port"),
        "{}",
        err.message
    );
    assert_deployd_named(&o.revision, "crashy");
    assert!(o.should_rollback);
    // No probe was sent to the revision that is not ready: the only one is
    // the rollback's check of the previous revision.
    assert!(o.rolled_back);
    assert_eq!(h.sandbox.count("app.request"), probes_before + 1);
}

#[tokio::test]
async fn an_operation_that_succeeds_before_the_revision_is_ready_is_not_trusted() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("eager", &example_app())).await;
    assert!(first.success);
    h.sandbox.next_rollout_succeeds_early(PROJECT, "eager");
    let app = app_version("2");
    let probes_before = h.sandbox.count("app.request");
    let (_, o) = deploy(&h, deploy_request("eager", app.path())).await;
    assert!(!o.success, "a finished operation is not a Ready service");
    assert_eq!(o.failed_stage, i32::from(Stage::Deploy));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "REVISION_NOT_READY");
    assert!(err.message.contains("not Ready"), "{}", err.message);
    assert!(err.message.contains(&first.revision), "{}", err.message);
    assert_deployd_named(&o.revision, "eager");
    // The operation did say done, successfully.
    let ops = changes(&h.sandbox, "run.projects.locations.services.patch");
    assert_eq!(ops, 1 + usize::from(o.rolled_back));
    // Nothing probed the revision that is not serving; the rollback's
    // check of the previous one is the only probe.
    assert!(o.rolled_back);
    assert_eq!(h.sandbox.count("app.request"), probes_before + 1);
    let svc = h
        .sandbox
        .service(PROJECT, REGION, "eager")
        .expect("service");
    assert!(
        svc["latestReadyRevision"]
            .as_str()
            .is_some_and(|r| r.ends_with(&first.revision)),
        "{svc}"
    );
}

#[tokio::test]
async fn one_deploy_at_a_time_per_service() {
    // Slow enough answers that the first deploy is surely still running.
    let h = Harness::start_with(deployd::sandbox::SandboxConfig {
        latency: std::time::Duration::from_millis(20),
        ..deployd::sandbox::SandboxConfig::fast()
    })
    .await;
    let mut client = h.client().await;
    let mut first = client
        .deploy(deploy_request("busy", &example_app()))
        .await
        .expect("accepted")
        .into_inner();
    let first_id = first
        .message()
        .await
        .expect("stream")
        .expect("an event")
        .deployment_id;

    // The same service while it runs: refused, naming the running deploy.
    let refused = client
        .deploy(deploy_request("busy", &example_app()))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Aborted);
    assert!(
        refused.message().contains(&first_id),
        "{}",
        refused.message()
    );
    assert!(refused
        .message()
        .contains("busy in demo-project/us-central1"));
    // Another service is not held up.
    let (_, other) = deploy(&h, deploy_request("other", &example_app())).await;
    assert!(other.success, "{other:?}");

    let mut rest = vec![];
    while let Some(e) = first.message().await.expect("stream") {
        rest.push(e);
    }
    assert!(outcome(&rest).success);
    // Ended: the service is free again.
    let (_, again) = deploy(&h, deploy_request("busy", &example_app())).await;
    assert!(again.success, "{again:?}");
    assert_eq!(
        counter(
            &h.metrics().await,
            "deployd_grpc_requests_total",
            r#"method="Deploy",code="ABORTED""#
        ),
        1.0
    );
}

#[tokio::test]
async fn disabled_api_fails_preflight_and_nothing_is_built() {
    let h = Harness::start().await;
    h.sandbox.with_project(PROJECT, |p| {
        p.enabled_apis.remove("cloudbuild.googleapis.com");
    });
    let (events, o) = deploy(&h, deploy_request("noapi", &example_app())).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight));
    let apis = checks(&events)
        .into_iter()
        .find(|c| c.name == "required_apis")
        .expect("check");
    assert!(!apis.ok);
    assert!(apis.detail.contains("cloudbuild.googleapis.com"));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "PREFLIGHT_FAILED");
    assert!(err.remediation.contains(
        &"gcloud services enable cloudbuild.googleapis.com --project=demo-project".to_string()
    ));
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
    assert_eq!(h.sandbox.count("storage.objects.insert"), 0);
}

#[tokio::test]
async fn missing_source_fails_in_the_source_stage() {
    let h = Harness::start().await;
    let (_, o) = deploy(
        &h,
        deploy_request("nosrc", std::path::Path::new("/nonexistent/app")),
    )
    .await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Source));
    assert_eq!(o.error.expect("failure").code, "SOURCE_UNAVAILABLE");
}

#[tokio::test]
async fn deploys_from_a_git_repository_at_a_tag() {
    let h = Harness::start().await;
    let repo = Repo::new();
    copy_dir(&example_app(), repo.path());
    let sha = repo.commit("v1");
    repo.git(&["tag", "v1"]);
    let srv = GitServer::start().await;
    let url = srv.publish("from-git", repo.path());
    let mut req = deploy_request("from-git", repo.path());
    req.source = Some(proto::Source {
        kind: Some(proto::source::Kind::GitUrl(url)),
        git_ref: "v1".into(),
        subdirectory: String::new(),
    });
    let (_, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    assert_eq!(o.source_commit, sha);
}

#[tokio::test]
async fn invalid_requests_are_refused_naming_the_field() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let base = deploy_request("valid", &example_app());
    let cases: Vec<(proto::DeployRequest, &str)> = vec![
        (
            proto::DeployRequest {
                target: Some(proto::Target {
                    project: "".into(),
                    ..target("svc")
                }),
                ..base.clone()
            },
            "target.project",
        ),
        (
            proto::DeployRequest {
                target: Some(target("Bad_Name")),
                ..base.clone()
            },
            "target.service",
        ),
        (
            proto::DeployRequest {
                target: Some(target("trailing-")),
                ..base.clone()
            },
            "target.service",
        ),
        (
            proto::DeployRequest {
                target: Some(proto::Target {
                    region: "mars".into(),
                    ..target("svc")
                }),
                ..base.clone()
            },
            "target.region",
        ),
        (
            proto::DeployRequest {
                source: None,
                ..base.clone()
            },
            "source",
        ),
        (
            proto::DeployRequest {
                source: Some(proto::Source {
                    kind: None,
                    git_ref: String::new(),
                    subdirectory: String::new(),
                }),
                ..base.clone()
            },
            "source",
        ),
        (
            proto::DeployRequest {
                target: None,
                ..base.clone()
            },
            "target",
        ),
        (
            proto::DeployRequest {
                build: Some(proto::BuildOptions {
                    machine_type: "HUGE".into(),
                    ..Default::default()
                }),
                ..base.clone()
            },
            "build.machine_type",
        ),
        (
            proto::DeployRequest {
                runtime: Some(proto::RuntimeSettings {
                    ingress: 42,
                    ..Default::default()
                }),
                ..base.clone()
            },
            "runtime.ingress",
        ),
    ];
    for (req, field) in cases {
        let status = client.deploy(req).await.expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = client
        .verify(proto::VerifyRequest {
            url: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("url"));
    let status = client
        .preflight(proto::PreflightRequest {
            target: Some(proto::Target {
                project: "x".into(),
                ..target("")
            }),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert!(status.message().starts_with("target.project"));
    // Nothing reached Google.
    assert!(h.sandbox.requests().is_empty());
}

/// A client that goes away (a short deadline, a proxy's idle timeout)
/// does not cancel its deployment: it runs to its outcome in the daemon.
#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_deploy() {
    let h = Harness::start().await;
    let mut stream = h
        .client()
        .await
        .deploy(deploy_request("walkaway", &example_app()))
        .await
        .expect("accepted")
        .into_inner();
    let id = stream
        .message()
        .await
        .expect("stream")
        .expect("event")
        .deployment_id;
    drop(stream);
    let d = ended(&h, &id, Duration::from_secs(30)).await;
    assert_eq!(
        d.state,
        i32::from(proto::DeploymentState::Succeeded),
        "{d:?}"
    );
    assert!(d.outcome.expect("outcome").success);
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        0
    );
}

/// GETs of Cloud Run (v2) operations the sandbox received.
fn cloud_run_operation_gets(h: &Harness) -> usize {
    h.sandbox
        .requests_of("operations.get")
        .into_iter()
        .filter(|r| r.path.starts_with("/v2/"))
        .count()
}

/// Cloud Run operations are long-polled with `:wait`: the answer comes as
/// the operation finishes, not at the next poll tick, and no GET is sent.
#[tokio::test]
async fn cloud_run_operations_are_long_polled() {
    let h = Harness::start().await;
    let (_, o) = deploy(&h, deploy_request("long-poll", &example_app())).await;
    assert!(o.success, "{o:?}");
    let waits = h
        .sandbox
        .requests_of("run.projects.locations.operations.wait");
    assert!(!waits.is_empty());
    assert!(waits.iter().all(|r| r.status == 200), "{waits:?}");
    let body: serde_json::Value = serde_json::from_slice(&waits[0].body).expect("json");
    assert_eq!(body["timeout"], "30s");
    let run_gets = cloud_run_operation_gets(&h);
    assert_eq!(run_gets, 0, "no Cloud Run operation is polled");
    // One call per operation: each was held until it was done.
    let rollouts = changes(&h.sandbox, "run.projects.locations.services.create")
        + changes(&h.sandbox, "run.projects.locations.services.patch");
    assert_eq!(waits.len(), rollouts, "{waits:?}");
    // Held until the operation was done: about the sandbox's op delay.
    let held = waits.iter().map(|r| r.duration).max().unwrap_or_default();
    assert!(held >= Duration::from_millis(20), "{held:?}");
}

/// A server without `:wait` (UNIMPLEMENTED) is polled instead.
#[tokio::test]
async fn without_a_long_poll_cloud_run_operations_are_polled() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "run.projects.locations.operations.wait".into(),
        remaining: 1,
        action: FaultAction::Error(InjectedError::new(
            501,
            "UNIMPLEMENTED",
            "Method not implemented.",
        )),
    });
    let (_, o) = deploy(&h, deploy_request("no-long-poll", &example_app())).await;
    assert!(o.success, "{o:?}");
    assert_eq!(h.sandbox.count("run.projects.locations.operations.wait"), 1);
    let run_gets = cloud_run_operation_gets(&h);
    assert!(run_gets >= 1, "the operation was polled instead");
}
