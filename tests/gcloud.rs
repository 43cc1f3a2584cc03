//! Google's own CLI (gcloud 528) against the sandbox, proving the emulator
//! speaks the wire format a real Google client expects. `gcloud run` talks to
//! the regional v1 API and cannot be pointed at loopback, so Cloud Run is
//! covered by the deploy tests instead. `gcloud builds submit` tails the
//! build log from a fixed storage.googleapis.com URL, so it runs `--async`
//! here. Skips, saying so, where gcloud is not installed (fails in CI).

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;

fn gcloud_available() -> bool {
    outside_tool(
        "gcloud",
        &["--version"],
        "the Google Cloud CLI, preinstalled here",
    )
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
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE", &base)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM", &base)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_ORGPOLICY", &base)
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_LOGGING", &base)
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDRESOURCEMANAGER",
            &base,
        )
        .output()
        .expect("gcloud runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// gcloud off the async runtime: it blocks, and the sandbox answers on
/// that runtime. Returns (success, stdout, stderr).
async fn gcloud_off_runtime(h: &Arc<Harness>, args: &[&str]) -> (bool, String, String) {
    let h = h.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gcloud(&h, &args)
    })
    .await
    .expect("join")
}

/// A gcloud command that must succeed; returns its stdout and stderr.
async fn gcloud_ok(h: &Arc<Harness>, args: &[&str]) -> (String, String) {
    let (ok, out, err) = gcloud_off_runtime(h, args).await;
    assert!(ok, "gcloud {}: {err}", args.join(" "));
    (out, err)
}

/// A gcloud command's `--format=json` output.
async fn gcloud_json(h: &Arc<Harness>, args: &[&str]) -> serde_json::Value {
    let args = [args, &["--format=json"]].concat();
    let (out, _) = gcloud_ok(h, &args).await;
    serde_json::from_str(&out).expect("gcloud printed JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_reads_what_a_deploy_created() {
    if !gcloud_available() {
        return;
    }
    let h = Arc::new(Harness::start().await);
    let (_, o) = deploy(&h, deploy_request("hello", &example_app())).await;
    assert!(o.success, "{o:?}");

    let build = gcloud_json(&h, &["builds", "describe", &o.build_id]).await;
    assert_eq!(build["status"], "SUCCESS");
    assert_eq!(build["id"], o.build_id.as_str());
    assert_eq!(build["options"]["machineType"], "E2_HIGHCPU_8");
    assert_eq!(build["timeout"], "1200s");

    let (out, _) = gcloud_ok(&h, &["builds", "list", "--format=value(id)"]).await;
    assert!(out.contains(&o.build_id));

    let repo = gcloud_json(
        &h,
        &[
            "artifacts",
            "repositories",
            "describe",
            "deployd",
            "--location=us-central1",
        ],
    )
    .await;
    assert_eq!(repo["format"], "DOCKER");
    assert_eq!(
        repo["name"],
        "projects/demo-project/locations/us-central1/repositories/deployd"
    );

    let (out, _) = gcloud_ok(
        &h,
        &[
            "services",
            "list",
            "--enabled",
            "--format=value(config.name)",
        ],
    )
    .await;
    for api in [
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
    ] {
        assert!(out.lines().any(|l| l == api), "{api} in {out}");
    }
    assert!(h.sandbox.count("serviceusage.services.list") >= 1);

    // What preflight reads, read by gcloud: the project, the runtime
    // service account (through `projects/-`), the effective org policy.
    let project = gcloud_json(&h, &["projects", "describe", "demo-project"]).await;
    assert_eq!(project["projectNumber"], "100000000001");
    assert_eq!(project["lifecycleState"], "ACTIVE");
    let sa = gcloud_json(
        &h,
        &[
            "iam",
            "service-accounts",
            "describe",
            "100000000001-compute@developer.gserviceaccount.com",
        ],
    )
    .await;
    assert_eq!(sa["projectId"], "demo-project");
    let policy = gcloud_json(
        &h,
        &[
            "org-policies",
            "describe",
            "run.allowedIngress",
            "--effective",
            "--project=demo-project",
        ],
    )
    .await;
    assert_eq!(policy["spec"]["rules"][0]["allowAll"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_creates_a_repository_and_enables_an_api_through_operations() {
    if !gcloud_available() {
        return;
    }
    let h = Arc::new(Harness::start().await);
    h.sandbox.with_project(PROJECT, |p| {
        p.enabled_apis.remove("secretmanager.googleapis.com");
    });
    let (_, err) = gcloud_ok(
        &h,
        &[
            "artifacts",
            "repositories",
            "create",
            "images",
            "--repository-format=docker",
            "--location=europe-west4",
        ],
    )
    .await;
    assert!(err.contains("Created repository [images]"), "{err}");
    assert!(
        h.sandbox.count("operations.get") >= 1,
        "gcloud polled the operation"
    );

    gcloud_ok(&h, &["services", "enable", "secretmanager.googleapis.com"]).await;
    assert_eq!(
        h.sandbox.with_project(PROJECT, |p| p
            .enabled_apis
            .contains("secretmanager.googleapis.com")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_builds_submit_uploads_and_builds_in_the_sandbox() {
    if !gcloud_available() {
        return;
    }
    let h = Arc::new(Harness::start().await);
    gcloud_ok(
        &h,
        &[
            "artifacts",
            "repositories",
            "create",
            "apps",
            "--repository-format=docker",
            "--location=us-central1",
        ],
    )
    .await;

    // Google's own client: the staging bucket (looked up and created; the
    // second time found and listed by prefix to prove it is the project's),
    // a multipart upload of its tarball, then the build.
    let tag = "us-central1-docker.pkg.dev/demo-project/apps/hello:gcloud";
    let app = example_app().display().to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let submit = [
            "builds",
            "submit",
            "--tag",
            tag,
            "--async",
            "--format=value(id)",
            &app,
        ];
        let (out, _) = gcloud_ok(&h, &submit).await;
        ids.push(out.trim().to_string());
    }
    for (method, n) in [
        ("storage.buckets.get", 2),
        ("storage.buckets.insert", 1),
        ("storage.buckets.list", 1),
        ("storage.objects.insert", 2),
        ("cloudbuild.projects.locations.builds.create", 2),
    ] {
        assert_eq!(h.sandbox.count(method), n, "{method}");
    }
    let upload = &h.sandbox.requests_of("storage.objects.insert")[0];
    assert!(
        upload.query.contains("uploadType=multipart"),
        "{}",
        upload.query
    );
    let id = &ids[1];

    // The build runs the Dockerfile from gcloud's tarball and pushes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let build = loop {
        let build = gcloud_json(&h, &["builds", "describe", id]).await;
        if build["status"] != "QUEUED" && build["status"] != "WORKING" {
            break build;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build never finished: {build}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(build["status"], "SUCCESS", "{build}");
    assert_eq!(build["results"]["images"][0]["name"], tag);
    assert!(build["results"]["images"][0]["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
    // With no logsBucket in the request, Cloud Build's default holds the log.
    assert_eq!(
        build["logsBucket"],
        "gs://100000000001.cloudbuild-logs.googleusercontent.com"
    );
    let log = h
        .sandbox
        .object(
            "100000000001.cloudbuild-logs.googleusercontent.com",
            &format!("log-{id}.txt"),
        )
        .expect("build log");
    assert!(
        String::from_utf8_lossy(&log).contains("FROM"),
        "the Dockerfile was read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_cancels_a_running_build() {
    if !gcloud_available() {
        return;
    }
    let h = Arc::new(Harness::start().await);
    h.sandbox
        .fail_next_build(deployd::sandbox::faults::BuildFault::NeverFinishes);
    let app = example_app().display().to_string();
    let submit = [
        "builds",
        "submit",
        "--tag",
        "us-central1-docker.pkg.dev/demo-project/apps/hello:cancel",
        "--async",
        "--format=value(id)",
        &app,
    ];
    let (out, _) = gcloud_ok(&h, &submit).await;
    let id = out.trim().to_string();
    // The cancel call deployd makes on a deadline or a client's cancel,
    // made by Google's client.
    let (_, err) = gcloud_ok(&h, &["builds", "cancel", &id]).await;
    assert!(err.contains("Cancelled"), "{err}");
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        1
    );
    let build = gcloud_json(&h, &["builds", "describe", &id]).await;
    assert_eq!(build["status"], "CANCELLED", "{build}");
}

/// gcloud reads a failed revision's container logs from the sandbox's
/// Cloud Logging, as deployd quoted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_logging_read_finds_a_revisions_lines() {
    if !gcloud_available() {
        return;
    }
    let h = Arc::new(Harness::start().await);
    h.sandbox.revisions_not_ready(PROJECT, "logged", 1);
    h.sandbox
        .apply_faults(
            &serde_json::json!({"next_revision_logs": [{"service": "logged", "severity": "ERROR",
            "lines": ["ModuleNotFoundError: No module named 'flask'"]}]}),
        )
        .expect("applied");
    let (_, o) = deploy(&h, deploy_request("logged", &example_app())).await;
    assert!(!o.success);
    let filter = format!(
        "resource.type=\"cloud_run_revision\" AND resource.labels.revision_name=\"{}\"",
        o.revision
    );
    let entries = gcloud_json(&h, &["logging", "read", &filter, "--limit=10"]).await;
    let texts: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["textPayload"].as_str())
        .collect();
    assert!(
        texts.contains(&"ModuleNotFoundError: No module named 'flask'"),
        "{entries}"
    );
    assert!(
        texts.iter().any(|t| t.contains("STARTUP TCP probe failed")),
        "{entries}"
    );
    assert!(
        o.error
            .expect("failure")
            .message
            .contains("No module named 'flask'"),
        "deployd quoted the same line"
    );
}
