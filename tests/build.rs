//! The build stage against the sandbox: archive rules, resumable upload,
//! retries told apart by structure, our own deadline, actionable failures.

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto::{self, Stage};
use deployd::sandbox::faults::{BuildFault, Fault, FaultAction, InjectedError};

#[tokio::test]
async fn large_source_is_uploaded_resumably_through_a_reset_chunk() {
    let h = Harness::start().await;
    let app = app_copy();
    // ~1 MiB that does not compress: four or five 256 KiB chunks.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..1_100_000)
        .map(|_| {
            // xorshift: bytes gzip cannot shrink.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(app.path().join("model.bin"), noise).expect("write");
    h.sandbox.inject(Fault {
        method: "storage.objects.insert.chunk".into(),
        remaining: 1,
        action: FaultAction::Reset,
    });
    let (_, o) = deploy(&h, deploy_request("bigsrc", app.path())).await;
    assert!(o.success, "{o:?}");
    // One session start, then chunks; the reset one was resumed, not fatal.
    assert_eq!(h.sandbox.count("storage.objects.insert"), 1);
    let chunks: Vec<u16> = h
        .sandbox
        .requests_of("storage.objects.insert.chunk")
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert!(chunks.len() >= 5, "{chunks:?}");
    assert_eq!(chunks.last(), Some(&200));
    assert!(chunks.contains(&308));
    // The object is whole, and the build pinned its generation.
    assert!(archive_names(&built_archive(&h)).contains(&"model.bin".to_string()));
    let generation = &h.sandbox.builds()[0]["source"]["storageSource"]["generation"];
    assert!(generation.as_str().is_some_and(|g| g.len() > 10));
}

#[tokio::test]
async fn gcloudignore_decides_what_is_uploaded() {
    let h = Harness::start().await;
    let app = app_copy();
    std::fs::write(
        app.path().join(".gcloudignore"),
        ".gcloudignore\n#!include:.gitignore\n*.secret\n!keep.secret\n",
    )
    .expect("write");
    std::fs::write(app.path().join(".gitignore"), "venv/\n").expect("write");
    std::fs::create_dir_all(app.path().join("venv/lib")).expect("mkdir");
    std::fs::write(app.path().join("venv/lib/big.so"), "x").expect("write");
    std::fs::write(app.path().join("db.secret"), "x").expect("write");
    std::fs::write(app.path().join("keep.secret"), "x").expect("write");
    let (events, o) = deploy(&h, deploy_request("ignored", app.path())).await;
    assert!(o.success, "{o:?}");
    assert_eq!(
        archive_names(&built_archive(&h)),
        vec![".gitignore", "Dockerfile", "keep.secret", "main.py"]
    );
    assert!(events.iter().any(|e| matches!(&e.kind, Some(proto::event::Kind::Progress(p)) if p.message.contains("following .gcloudignore"))));
}

#[tokio::test]
async fn unsafe_and_oversized_sources_are_refused_before_upload() {
    let h = Harness::start().await;
    let app = app_copy();
    std::os::unix::fs::symlink("/etc/passwd", app.path().join("passwd")).expect("symlink");
    let (_, o) = deploy(&h, deploy_request("unsafe", app.path())).await;
    let err = o.error.expect("failure");
    assert_eq!(err.code, "UNSAFE_SOURCE");
    assert!(
        err.message
            .contains("symlink passwd points outside the source tree (to /etc/passwd)"),
        "{}",
        err.message
    );

    let app = app_copy();
    std::fs::write(app.path().join("dump.sql"), vec![b'x'; 9 * 1024 * 1024]).expect("write");
    let (_, o) = deploy(&h, deploy_request("huge", app.path())).await;
    let err = o.error.expect("failure");
    assert_eq!(err.code, "SOURCE_TOO_LARGE");
    assert!(
        err.message
            .contains("over the 8 MiB limit; largest files: dump.sql (9 MiB)"),
        "{}",
        err.message
    );
    assert!(err.remediation.iter().any(|r| r.contains(".gcloudignore")));
    assert_eq!(h.sandbox.count("storage.objects.insert"), 0);
    assert_eq!(
        h.sandbox
            .requests_of("cloudbuild.projects.locations.builds.create")
            .len(),
        0
    );
}

#[tokio::test]
async fn permission_denied_on_create_is_one_attempt() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 1,
        action: FaultAction::Error(
            InjectedError::new(
                403,
                "PERMISSION_DENIED",
                "Permission 'cloudbuild.builds.create' denied on resource",
            )
            .reason("IAM_PERMISSION_DENIED"),
        ),
    });
    let (_, o) = deploy(&h, deploy_request("denied", &example_app())).await;
    assert_eq!(o.failed_stage, i32::from(Stage::Build));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "CLOUD_API_ERROR");
    assert!(!err.retriable);
    assert!(err.message.contains("after 1 attempt"), "{}", err.message);
    assert_eq!(
        h.sandbox
            .requests_of("cloudbuild.projects.locations.builds.create")
            .len(),
        1
    );
}

#[tokio::test]
async fn exhausted_quota_says_what_to_do_after_three_attempts() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 3,
        action: FaultAction::Error(InjectedError::rate_limited("cloudbuild.googleapis.com")),
    });
    let (_, o) = deploy(&h, deploy_request("quota", &example_app())).await;
    let err = o.error.expect("failure");
    assert!(err.retriable);
    assert!(
        err.message.contains("failed after 3 attempt(s)"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("RESOURCE_EXHAUSTED"),
        "{}",
        err.message
    );
    assert_eq!(err.remediation.len(), 3, "{:?}", err.remediation);
    assert!(err.remediation[0].contains("Wait"));
    assert!(err.remediation[1]
        .contains("https://console.cloud.google.com/iam-admin/quotas?project=demo-project"));
    assert!(err.remediation[2].contains("another project"));
    assert_eq!(
        h.sandbox
            .requests_of("cloudbuild.projects.locations.builds.create")
            .len(),
        3
    );
}

#[tokio::test]
async fn retry_info_from_the_api_is_honoured() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "cloudbuild.projects.locations.builds.create".into(),
        remaining: 1,
        action: FaultAction::Error(
            InjectedError::rate_limited("cloudbuild.googleapis.com")
                .retry_delay(Duration::from_millis(400)),
        ),
    });
    let (_, o) = deploy(&h, deploy_request("hinted", &example_app())).await;
    assert!(o.success);
    let c = h
        .sandbox
        .requests_of("cloudbuild.projects.locations.builds.create");
    let gap = c[1].at - c[0].at;
    // The policy alone would wait 20 ms.
    assert!(gap >= Duration::from_millis(400), "{gap:?}");
}

#[tokio::test]
async fn internal_error_build_is_retried_as_a_whole() {
    let h = Harness::start().await;
    h.sandbox.fail_next_build(BuildFault::Status {
        status: "INTERNAL_ERROR".into(),
        failure_type: None,
    });
    let before = counter(
        &h.metrics().await,
        "deployd_build_retries_total",
        "reason=\"BUILD_INTERNAL_ERROR\"",
    );
    let (events, o) = deploy(&h, deploy_request("internal", &example_app())).await;
    assert!(o.success, "{o:?}");
    assert_eq!(
        h.sandbox
            .requests_of("cloudbuild.projects.locations.builds.create")
            .len(),
        2
    );
    let retry = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(proto::event::Kind::Retry(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("retry event");
    assert_eq!(retry.operation, "build");
    assert!(retry.reason.contains("INTERNAL_ERROR"), "{}", retry.reason);

    // Progress is typed: the archive's digest and place, each attempt's
    // number and build, the image, as fields (not only in the message),
    // and they agree with what Cloud Build was asked and the outcome.
    let progress: Vec<proto::Progress> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(proto::event::Kind::Progress(p)) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let digest = progress
        .iter()
        .find(|p| p.message.starts_with("packed "))
        .map(|p| p.archive_sha256.clone())
        .expect("packed");
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    let builds = h.sandbox.builds();
    let storage = &builds[0]["source"]["storageSource"];
    let uri = format!(
        "gs://{}/{}",
        storage["bucket"].as_str().expect("bucket"),
        storage["object"].as_str().expect("object")
    );
    assert!(uri.contains(&digest), "{uri}");
    assert!(
        progress.iter().any(|p| p.archive_uri == uri),
        "{progress:#?}"
    );
    let attempts: Vec<(u32, u32)> = progress
        .iter()
        .filter(|p| p.message.starts_with("build attempt"))
        .map(|p| (p.attempt, p.max_attempts))
        .collect();
    assert_eq!(attempts, [(1, 3), (2, 3)]);
    let queued: Vec<(String, u32, bool)> = progress
        .iter()
        .filter(|p| p.message.contains(" queued"))
        .map(|p| {
            (
                p.build_id.clone(),
                p.attempt,
                p.log_url.starts_with("https://"),
            )
        })
        .collect();
    // The sandbox lists builds newest first, as Cloud Build does.
    let mut ids: Vec<String> = builds
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    ids.reverse();
    assert_eq!(
        queued,
        [(ids[0].clone(), 1, true), (ids[1].clone(), 2, true)],
        "{ids:?}"
    );
    let built = progress
        .iter()
        .find(|p| p.message.starts_with("built "))
        .expect("built");
    assert_eq!(
        (built.image.as_str(), built.build_id.as_str()),
        (o.image.as_str(), o.build_id.as_str())
    );
    let after = counter(
        &h.metrics().await,
        "deployd_build_retries_total",
        "reason=\"BUILD_INTERNAL_ERROR\"",
    );
    assert!(after >= before + 1.0);
}

#[tokio::test]
async fn a_build_that_never_finishes_is_cancelled_at_our_deadline() {
    let h = Harness::start().await;
    h.sandbox.fail_next_build(BuildFault::NeverFinishes);
    let mut req = deploy_request("stuck", &example_app());
    req.build = Some(proto::BuildOptions {
        timeout_seconds: 1,
        step_timeout_seconds: 1,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let (_, o) = deploy(&h, req).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(o.failed_stage, i32::from(Stage::Build));
    let err = o.error.expect("failure");
    assert_eq!(err.code, "BUILD_TIMEOUT");
    assert!(
        err.message
            .contains("did not finish within 1s; it was cancelled"),
        "{}",
        err.message
    );
    assert!(err
        .remediation
        .iter()
        .any(|r| r.contains("https://console.cloud.google.com/cloud-build/builds/")));
    assert_eq!(
        h.sandbox
            .requests_of("cloudbuild.projects.locations.builds.create")
            .len(),
        1
    );
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        1
    );
    assert_eq!(h.sandbox.builds()[0]["status"], "CANCELLED");
}

/// A daemon that stops hands its deployments over instead of cancelling
/// them: the build keeps running on Google, the stream says where to watch
/// the deployment next, and the store keeps it RUNNING with its lease given
/// back.
#[tokio::test]
async fn daemon_shutdown_hands_the_running_build_over() {
    let h = Harness::start().await;
    let mut stream = deploy_with_a_running_build(&h, "shutdown").await;
    let id = running_id(&h, "shutdown").await;
    h.shutdown.cancel();
    let end = loop {
        match stream.message().await {
            Ok(Some(e)) => {
                assert!(
                    !matches!(e.kind, Some(proto::event::Kind::Outcome(_))),
                    "a drained deployment has no outcome yet: {e:?}"
                );
            }
            Ok(None) => panic!("the stream must end with a status naming the deployment"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains(&format!("deployd watch {id}")),
        "{}",
        end.message()
    );
    // The lease is given back once the run has stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let rec = h
            .daemon
            .manager
            .store()
            .get(&id)
            .await
            .expect("store")
            .expect("kept");
        if rec.lease_until <= std::time::SystemTime::now() || std::time::Instant::now() > deadline {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rec.state, deployd::deployments::State::Running);
    assert!(
        rec.lease_until <= std::time::SystemTime::now(),
        "the lease was given back"
    );
    assert!(
        rec.progress
            .as_ref()
            .expect("progress")
            .pending_build
            .is_some(),
        "the build's id is recorded"
    );
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        0
    );
}

/// The sandbox's docker step refuses what Docker refuses: a COPY of a file
/// the context lacks fails the build with Docker's words, which reach the
/// deploy's log lines and outcome.
#[tokio::test]
async fn a_dockerfile_docker_would_refuse_fails_the_build() {
    let h = Harness::start().await;
    for (dockerfile, said) in [
        (
            "FROM python:3.12-slim\nCOPY requirements.txt .\nCMD [\"python\", \"main.py\"]\n",
            "\"/requirements.txt\": not found",
        ),
        (
            "FROM python:3.12-slim\nCOPY . .\nCMDD python main.py\n",
            "unknown instruction: CMDD",
        ),
    ] {
        let app = app_copy();
        std::fs::write(app.path().join("Dockerfile"), dockerfile).expect("write");
        let (events, o) = deploy(&h, deploy_request("refused", app.path())).await;
        assert!(!o.success, "{o:?}");
        assert_eq!(o.failed_stage, i32::from(proto::Stage::Build), "{o:?}");
        let err = o.error.expect("failure");
        assert_eq!(err.code, "BUILD_FAILED", "{err:?}");
        assert!(
            logs(&events).iter().any(|l| l.contains(said)),
            "{said} in {:?}",
            logs(&events)
        );
        assert!(
            err.message.contains(said),
            "the outcome quotes Docker: {err:?}"
        );
    }
}
