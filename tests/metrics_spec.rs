//! Every metric documented in dashboards/README.md is exported after a
//! scripted workload (its own test binary: the recorder is process-wide).

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::{AppResponse, Fault, FaultAction, InjectedError};

#[tokio::test]
async fn every_documented_metric_is_exported_after_a_workload() {
    // A short lease, so the orphan below is taken over within a second.
    let h = Harness::start_config(|c| c.lease = Duration::from_secs(1)).await;
    // A deployment whose daemon died: taken over and finished.
    let id = orphan(&h, deploy_request("spec-orphan", &example_app()), "gone:1").await;
    let d = ended(&h, &id, Duration::from_secs(30)).await;
    assert_eq!(
        d.state,
        i32::from(proto::DeploymentState::Succeeded),
        "{d:?}"
    );
    assert_eq!(d.resumed, 1);
    // A retried build, a success, a rollback, a preflight failure, a Verify.
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 1,
        action: FaultAction::Error(InjectedError::rate_limited("cloudbuild.googleapis.com")),
    });
    // ... and a retried API call of the deploy stage (after preflight's
    // own read of the service).
    h.sandbox.inject_after(
        1,
        Fault {
            method: "run.projects.locations.services.get".into(),
            remaining: 1,
            action: FaultAction::Error(InjectedError::unavailable()),
        },
    );
    let (_, o) = deploy(&h, deploy_request("spec", &example_app())).await;
    assert!(o.success);
    h.sandbox.next_revision_answers(
        PROJECT,
        "spec",
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "x".into(),
        },
    );
    let app = app_version("2");
    let mut req = deploy_request("spec", app.path());
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    assert!(o.rolled_back);
    h.sandbox
        .with_project(PROJECT, |p| p.enabled_apis.remove("run.googleapis.com"));
    let (_, o) = deploy(&h, deploy_request("spec-noapi", &example_app())).await;
    assert!(!o.success);

    // A refused call (counted by the process-wide recorder).
    refuse_a_call_without_a_token().await;

    let text = h.metrics().await;
    let doc = std::fs::read_to_string(format!(
        "{}/dashboards/README.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("doc");
    let documented: Vec<(String, String)> = doc
        .lines()
        .filter(|l| l.starts_with("| `deployd_"))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().replace('`', "")).collect();
            (cells[1].clone(), cells[2].clone())
        })
        .collect();
    assert!(documented.len() >= 14, "{documented:?}");
    let mut missing = vec![];
    for (name, kind) in &documented {
        let sample = match kind.as_str() {
            "histogram" => format!("{name}_bucket"),
            _ => name.clone(),
        };
        let exported = text.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{sample}{{")) || l.starts_with(&format!("{sample} ")))
        });
        let typed = text.contains(&format!("# TYPE {name} {kind}"));
        if !exported || !typed {
            missing.push(format!(
                "{name} ({kind}): exported={exported} typed={typed}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not exported:\n{}",
        missing.join("\n")
    );
}
