//! Google's own CLI (gcloud 528) against the sandbox, proving the emulator
//! speaks the wire format a real Google client expects. `gcloud run` talks to
//! the regional v1 API and cannot be pointed at loopback, so Cloud Run is
//! covered by the deploy tests instead. Skips, saying so, where gcloud is
//! not installed.

mod common;

use std::process::Command;

use common::*;

fn gcloud_available() -> bool {
    Command::new("gcloud")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs gcloud with every API it needs pointed at the sandbox.
fn gcloud(h: &Harness, args: &[&str]) -> (bool, String, String) {
    let config = tempfile::tempdir().expect("tempdir");
    let token = config.path().join("token");
    std::fs::write(&token, "sandbox-token").expect("token file");
    let base = format!("{}/", h.sandbox.base_url());
    let out = Command::new("gcloud")
        .args(args)
        .env("CLOUDSDK_CONFIG", config.path())
        .env("CLOUDSDK_CORE_PROJECT", PROJECT)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "1")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "1")
        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &token)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBUILD", &base)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_ARTIFACTREGISTRY", &base)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_SERVICEUSAGE", &base)
        .output()
        .expect("gcloud runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_reads_what_a_deploy_created() {
    if !gcloud_available() {
        eprintln!("SKIPPED: gcloud is not installed on this machine");
        return;
    }
    let h = Harness::start().await;
    let (_, o) = deploy(&h, deploy_request("hello", &example_app())).await;
    assert!(o.success, "{o:?}");

    // gcloud blocks; run it off the runtime that serves the sandbox.
    let h = std::sync::Arc::new(h);
    let run = |args: Vec<&'static str>| {
        let h = h.clone();
        tokio::task::spawn_blocking(move || gcloud(&h, &args))
    };

    let id = o.build_id.clone();
    let h2 = h.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        gcloud(&h2, &["builds", "describe", &id, "--format=json"])
    })
    .await
    .expect("join");
    assert!(ok, "gcloud builds describe: {err}");
    let build: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(build["status"], "SUCCESS");
    assert_eq!(build["id"], o.build_id.as_str());
    assert_eq!(build["options"]["machineType"], "E2_HIGHCPU_8");
    assert_eq!(build["timeout"], "1200s");

    let (ok, out, err) = run(vec!["builds", "list", "--format=value(id)"])
        .await
        .expect("join");
    assert!(ok, "gcloud builds list: {err}");
    assert!(out.contains(&o.build_id));

    let (ok, out, err) = run(vec![
        "artifacts",
        "repositories",
        "describe",
        "deployd",
        "--location=us-central1",
        "--format=json",
    ])
    .await
    .expect("join");
    assert!(ok, "gcloud artifacts repositories describe: {err}");
    let repo: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(repo["format"], "DOCKER");
    assert_eq!(
        repo["name"],
        "projects/demo-project/locations/us-central1/repositories/deployd"
    );

    let (ok, out, err) = run(vec![
        "services",
        "list",
        "--enabled",
        "--format=value(config.name)",
    ])
    .await
    .expect("join");
    assert!(ok, "gcloud services list: {err}");
    for api in [
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
    ] {
        assert!(out.lines().any(|l| l == api), "{api} in {out}");
    }
    assert!(h.sandbox.count("serviceusage.services.list") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_creates_a_repository_and_enables_an_api_through_operations() {
    if !gcloud_available() {
        eprintln!("SKIPPED: gcloud is not installed on this machine");
        return;
    }
    let h = std::sync::Arc::new(Harness::start().await);
    h.sandbox.with_project(PROJECT, |p| {
        p.enabled_apis.remove("secretmanager.googleapis.com");
    });
    let h2 = h.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        gcloud(
            &h2,
            &[
                "artifacts",
                "repositories",
                "create",
                "images",
                "--repository-format=docker",
                "--location=europe-west4",
            ],
        )
    })
    .await
    .expect("join");
    assert!(ok, "gcloud artifacts repositories create: {err}");
    assert!(err.contains("Created repository [images]"), "{err}");
    assert!(
        h.sandbox.count("operations.get") >= 1,
        "gcloud polled the operation"
    );

    let h2 = h.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        gcloud(&h2, &["services", "enable", "secretmanager.googleapis.com"])
    })
    .await
    .expect("join");
    assert!(ok, "gcloud services enable: {err}");
    assert_eq!(
        h.sandbox.with_project(PROJECT, |p| p
            .enabled_apis
            .contains("secretmanager.googleapis.com")),
        Some(true)
    );
}
