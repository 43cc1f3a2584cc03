//! Preflight and Verify over gRPC, the standard health and reflection
//! services, and the metrics endpoint.

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::AppResponse;

#[tokio::test]
async fn preflight_of_a_healthy_project_creates_what_is_missing() {
    let h = Harness::start().await;
    let (events, o) = preflight_run(&h).await;
    assert!(o.success, "{:?}", o.checks);
    let names: Vec<&str> = o.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "project_access",
            "required_apis",
            "permissions",
            "service_account",
            "artifact_registry",
            "build_bucket",
            "cloud_build",
            "network_policies"
        ]
    );
    // Each check was streamed as it completed, before the outcome.
    assert_eq!(checks(&events).len(), 8);
    let repo = o
        .checks
        .iter()
        .find(|c| c.name == "artifact_registry")
        .expect("check");
    assert!(repo.detail.starts_with("created"), "{}", repo.detail);
    assert_eq!(
        h.sandbox
            .count("artifactregistry.projects.locations.repositories.create"),
        1
    );
    assert_eq!(h.sandbox.count("storage.buckets.insert"), 1);
    // Preflight never builds.
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );

    // A second preflight finds both and creates nothing, in a bounded number
    // of calls: one per check, two for the runtime service account (exists,
    // actAs), two for the builder's (which account, exists).
    let before = h.sandbox.requests().len();
    let o = preflight(&h).await;
    assert!(o.success);
    assert_eq!(
        h.sandbox.requests().len() - before,
        10,
        "the README states 10"
    );
    assert_eq!(
        h.sandbox
            .count("artifactregistry.projects.locations.repositories.create"),
        1
    );
    assert_eq!(h.sandbox.count("storage.buckets.insert"), 1);
}

#[tokio::test]
async fn preflight_of_an_unknown_project_says_so() {
    let h = Harness::start().await;
    let stream = h
        .client()
        .await
        .preflight(proto::PreflightRequest {
            target: Some(proto::Target {
                project: "no-such-project".into(),
                region: REGION.into(),
                service: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let o = outcome(&collect(stream).await);
    assert!(!o.success);
    let p = o
        .checks
        .iter()
        .find(|c| c.name == "project_access")
        .expect("check");
    assert!(!p.ok);
    assert!(
        p.detail.contains("no-such-project does not exist"),
        "{}",
        p.detail
    );
    assert!(p
        .remediation
        .iter()
        .any(|r| r.contains("gcloud projects describe no-such-project")));
}

async fn verify(h: &Harness, url: &str, attempts: u32) -> (Vec<proto::Event>, proto::Outcome) {
    let req = proto::VerifyRequest {
        url: url.into(),
        health_path: "/healthz".into(),
        attempts,
        timeout_ms: 500,
        base_delay_ms: 10,
        ..Default::default()
    };
    verify_rpc(h, req).await
}

#[tokio::test]
async fn verify_of_a_healthy_and_an_unhealthy_url() {
    let h = Harness::start().await;
    let (_, d) = deploy(&h, deploy_request("target", &example_app())).await;
    assert!(d.success);

    let (events, o) = verify(&h, &d.url, 3).await;
    assert!(o.success && o.verified);
    assert!(o.response_time_ms > 0.0);
    let p = probes(&events);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].url, format!("{}/healthz", d.url));
    assert_eq!(p[0].status_code, 200);

    // 500 three times: three attempts, all reported, then failure.
    let answers = vec![
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "down".into()
        };
        3
    ];
    assert!(h.sandbox.script_app(PROJECT, REGION, "target", answers));
    let (events, o) = verify(&h, &d.url, 3).await;
    assert!(!o.success && !o.verified);
    let p = probes(&events);
    assert_eq!(
        p.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(p.iter().all(|p| p.status_code == 500));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "UNHEALTHY");
    assert!(err.message.contains("/healthz"));

    // A timeout counts as an attempt.
    let answers = vec![AppResponse {
        status: 200,
        delay: Duration::from_secs(2),
        body: "slow".into(),
    }];
    assert!(h.sandbox.script_app(PROJECT, REGION, "target", answers));
    let (events, o) = verify(&h, &d.url, 2).await;
    assert!(o.success);
    let p = probes(&events);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].error_class, "timeout", "{}", p[0].error);

    // Nothing listens here: a connection error on every attempt.
    let (events, o) = verify(&h, "http://127.0.0.1:9", 2).await;
    assert!(!o.success);
    assert!(probes(&events).iter().all(|p| p.error_class == "connect"));
}

#[tokio::test]
async fn health_and_reflection_answer_generic_clients() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let h = Harness::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.daemon.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "deployd.v1.Deployer".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    for v1alpha in [false, true] {
        let services = list_services(channel.clone(), v1alpha).await;
        assert!(
            services.contains(&"deployd.v1.Deployer".to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health".to_string()),
            "{services:?}"
        );
    }
}

/// The same call through either reflection version: their generated types
/// differ only in module path.
macro_rules! list_services_via {
    ($version:ident, $channel:expr) => {{
        use futures::StreamExt;
        use tonic_reflection::pb::$version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = ServerReflectionClient::new($channel)
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        match resp
            .next()
            .await
            .and_then(|r| r.ok())
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected {other:?}"),
        }
    }};
}

async fn list_services(channel: tonic::transport::Channel, v1alpha: bool) -> Vec<String> {
    if v1alpha {
        list_services_via!(v1alpha, channel)
    } else {
        list_services_via!(v1, channel)
    }
}
