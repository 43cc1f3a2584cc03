//! Crash safety with real processes: the release binary's `serve` on a
//! SQLite store is killed with SIGKILL (or SIGTERM) in each stage, and a
//! new daemon on the same store and port (so the same default lease name)
//! finishes the deployment. The sandbox runs in the test process, so what
//! Google was asked survives the kill and is counted.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use deployd::api::proto::{self, deployer_client::DeployerClient, event::Kind, Stage};
use deployd::sandbox::faults::{AppResponse, Fault, FaultAction};
use deployd::sandbox::{Sandbox, SandboxConfig};
use rustix::process::Signal;
use tonic::transport::Channel;

/// A sandbox, a store and the port every daemon of the test listens on.
struct Rig {
    sandbox: Sandbox,
    state: tempfile::TempDir,
    port: u16,
}

impl Rig {
    async fn new(config: SandboxConfig) -> Rig {
        Rig {
            sandbox: Sandbox::start(config).await.expect("sandbox"),
            state: tempfile::tempdir().expect("state"),
            port: free_port(),
        }
    }

    /// `deployd serve` against the sandbox, on the rig's store and port.
    fn daemon(&self) -> ChildGuard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_deployd"))
            .env_remove("RUST_LOG")
            .args(["serve", "--gcp-endpoint", &self.sandbox.base_url()])
            .args(["--state-dir", &self.state.path().display().to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .args([
                "--local-source-root",
                "/",
                "--source-private-hosts",
                "127.0.0.1",
            ])
            .args(["--retry-base-delay-ms", "20", "--poll-interval-ms", "20"])
            .args(["--canary-time-scale", "0.01"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        let guard = ChildGuard::new(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    async fn client(&self) -> DeployerClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match DeployerClient::connect(format!("http://127.0.0.1:{}", self.port)).await {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("daemon.log")).unwrap_or_default()
    }
}

/// Returns once the sandbox has received `method`.
async fn called(sandbox: &Sandbox, method: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while changes(sandbox, method) == 0 {
        assert!(Instant::now() < deadline, "{method} was never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deploys `service`; once `method` has taken effect at Google but before
/// its answer arrives (it is held 5 s), kills the daemon, and has a new one
/// finish the deployment.
async fn kill_once_applied(
    rig: &Rig,
    method: &str,
    service: &str,
    stage: Stage,
) -> Vec<proto::Event> {
    // Preflight validates the revision with a create of its own first.
    let preflight_calls = u32::from(method == "run.projects.locations.services.create");
    rig.sandbox.inject_after(
        preflight_calls,
        Fault {
            method: method.into(),
            remaining: 1,
            action: FaultAction::SlowAfterApply(Duration::from_secs(5)),
        },
    );
    let first = rig.daemon();
    let (_stream, id) =
        deploy_until(rig, deploy_request(service, &example_app()), started(stage)).await;
    called(&rig.sandbox, method).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill_restart_and_finish(rig, first, &id, service).await
}

fn kill9(d: &mut ChildGuard) {
    signal(&d.child, Signal::KILL, false).expect("SIGKILL");
    let _ = d.child.wait();
}

/// Starts a deploy; returns its stream and id once `trigger` matches an
/// event.
async fn deploy_until(
    rig: &Rig,
    req: proto::DeployRequest,
    trigger: impl Fn(&proto::Event) -> bool,
) -> (tonic::Streaming<proto::Event>, String) {
    let mut stream = rig
        .client()
        .await
        .deploy(req)
        .await
        .expect("accepted")
        .into_inner();
    loop {
        let e = stream
            .message()
            .await
            .expect("stream")
            .expect("the trigger came before the end");
        if trigger(&e) {
            return (stream, e.deployment_id);
        }
    }
}

fn started(stage: Stage) -> impl Fn(&proto::Event) -> bool {
    move |e| e.stage == i32::from(stage) && matches!(e.kind, Some(Kind::StageStarted(_)))
}

/// The whole stored history of a deployment, read back through
/// WatchDeployment from seq 0 once it has ended.
async fn history(rig: &Rig, id: &str) -> (Vec<proto::Event>, proto::Outcome) {
    let watch = rig
        .client()
        .await
        .watch_deployment(proto::WatchDeploymentRequest {
            id: id.into(),
            after_seq: 0,
        })
        .await
        .expect("watch");
    let (events, outcome) =
        tokio::time::timeout(Duration::from_secs(90), run_to_outcome(watch.into_inner()))
            .await
            .unwrap_or_else(|_| panic!("deployment {id} did not end:\n{}", rig.log()));
    // Numbered from 1 without gaps, exactly one outcome, and it is last.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    let outcomes = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Outcome(_))))
        .count();
    assert_eq!(outcomes, 1);
    (events, outcome)
}

fn progress(events: &[proto::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Progress(p)) => Some(p.message.clone()),
            _ => None,
        })
        .collect()
}

async fn state_of(rig: &Rig, id: &str) -> proto::Deployment {
    rig.client()
        .await
        .get_deployment(proto::GetDeploymentRequest { id: id.into() })
        .await
        .expect("get")
        .into_inner()
}

/// Kill, restart, and check what every crash test checks: success, one
/// build, one revision, a contiguous history that says it resumed.
async fn kill_restart_and_finish(
    rig: &Rig,
    mut first: ChildGuard,
    id: &str,
    service: &str,
) -> Vec<proto::Event> {
    kill9(&mut first);
    let _second = rig.daemon();
    let (events, o) = history(rig, id).await;
    assert!(o.success, "{o:?}\n{:#?}\n{}", progress(&events), rig.log());
    let d = state_of(rig, id).await;
    assert_eq!(d.state, i32::from(proto::DeploymentState::Succeeded));
    assert_eq!(d.resumed, 1, "{d:?}\n{}", rig.log());
    assert_eq!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1,
        "one build per deployment"
    );
    assert_eq!(
        rig.sandbox.revisions(PROJECT, REGION, service).len(),
        1,
        "one revision per deployment"
    );
    assert!(
        progress(&events)
            .iter()
            .any(|m| m.starts_with("resumed after the daemon")),
        "{:?}",
        progress(&events)
    );
    events
}

#[tokio::test]
async fn kill_during_source_restarts_the_source_stage() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    let git = GitServer::start().await;
    let repo = Repo::new();
    copy_dir(&example_app(), repo.path());
    repo.git(&["add", "."]);
    repo.git(&["commit", "-qm", "app"]);
    let url = git.publish("app", repo.path());
    let mut req = deploy_request("src-kill", &example_app());
    req.source = Some(proto::Source {
        kind: Some(proto::source::Kind::GitUrl(url)),
        ..Default::default()
    });
    // A slow git host keeps the clone in flight when the daemon dies.
    git.set_delay(Duration::from_secs(2));
    let first = rig.daemon();
    let (_stream, id) = deploy_until(&rig, req, started(Stage::Source)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    git.set_delay(Duration::ZERO);
    assert_eq!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
    let events = kill_restart_and_finish(&rig, first, &id, "src-kill").await;
    assert!(progress(&events)
        .iter()
        .any(|m| m.contains("continuing at the source stage")));
}

#[tokio::test]
async fn kill_during_preflight_restarts_from_the_source() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    rig.sandbox.inject(Fault {
        method: "serviceusage.services.batchGet".into(),
        remaining: 1,
        action: FaultAction::Slow(Duration::from_secs(3)),
    });
    let first = rig.daemon();
    let (_stream, id) = deploy_until(
        &rig,
        deploy_request("pre-kill", &example_app()),
        started(Stage::Preflight),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_restart_and_finish(&rig, first, &id, "pre-kill").await;
}

#[tokio::test]
async fn kill_during_the_build_polls_the_same_build() {
    // Builds that take a second or two.
    let rig = Rig::new(SandboxConfig {
        build_line_delay: Duration::from_millis(40),
        ..SandboxConfig::fast()
    })
    .await;
    let first = rig.daemon();
    let (_stream, id) = deploy_until(
        &rig,
        deploy_request("build-kill", &example_app()),
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.message.contains("queued")),
    )
    .await;
    let events = kill_restart_and_finish(&rig, first, &id, "build-kill").await;
    assert!(
        progress(&events)
            .iter()
            .any(|m| m.contains("created before the restart")),
        "{:?}",
        progress(&events)
    );
}

/// The daemon dies after Cloud Build created the build but before the
/// answer (with its id) arrived: the next daemon finds it by its tags.
#[tokio::test]
async fn kill_between_build_created_and_recorded_finds_it_by_tag() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    let events = kill_once_applied(
        &rig,
        "cloudbuild.projects.locations.builds.create",
        "tag-kill",
        Stage::Build,
    )
    .await;
    assert!(
        progress(&events).iter().any(|m| m.contains("by its tags")),
        "{:?}",
        progress(&events)
    );
    assert!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.list")
            >= 1
    );
}

/// The daemon dies after Cloud Run accepted the create but before it heard
/// so: the next daemon finds the revision by the name it chose.
#[tokio::test]
async fn kill_during_the_deploy_operation_finds_the_revision_by_name() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    let events = kill_once_applied(
        &rig,
        "run.projects.locations.services.create",
        "op-kill",
        Stage::Deploy,
    )
    .await;
    assert_eq!(
        changes(&rig.sandbox, "run.projects.locations.services.create"),
        1,
        "the create is not sent twice"
    );
    assert!(
        progress(&events)
            .iter()
            .any(|m| m.contains("was created before the restart")),
        "{:?}",
        progress(&events)
    );
}

#[tokio::test]
async fn kill_during_verification_verifies_again() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    // Slow, healthy answers: the probe is in flight when the daemon dies.
    rig.sandbox.next_revision_answers(
        PROJECT,
        "verify-kill",
        AppResponse {
            status: 200,
            delay: Duration::from_millis(1500),
            body: "ok".into(),
        },
    );
    let mut req = deploy_request("verify-kill", &example_app());
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        timeout_ms: 5000,
        ..Default::default()
    });
    let first = rig.daemon();
    let (_stream, id) = deploy_until(&rig, req, started(Stage::Verify)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = kill_restart_and_finish(&rig, first, &id, "verify-kill").await;
    assert!(progress(&events)
        .iter()
        .any(|m| m.contains("continuing at the verify stage")));
}

/// Killed while a canary bakes its second step: the next daemon continues
/// at that step (the first is not judged again) and promotes the canary.
#[tokio::test]
async fn kill_during_a_canary_continues_at_its_step() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    let mut first = rig.daemon();
    let (_, good) = deploy(
        &rig.client().await,
        deploy_request("canary-kill", &example_app()),
    )
    .await;
    assert!(good.success);
    let app = app_version("2");
    let mut req = deploy_request("canary-kill", app.path());
    req.rollout_mode = proto::RolloutMode::Canary.into();
    // 1.2 s bakes at the daemon's time scale.
    req.canary_steps = [(10, 120), (30, 120), (60, 120), (100, 0)]
        .into_iter()
        .map(|(percent, seconds)| proto::CanaryStep {
            percent,
            bake: Some(prost_types::Duration { seconds, nanos: 0 }),
        })
        .collect();
    let (_stream, id) = deploy_until(
        &rig,
        req,
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.message.starts_with("canary step 2/4")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut first);
    let _second = rig.daemon();
    let (events, o) = history(&rig, &id).await;
    assert!(o.success, "{o:?}\n{}", rig.log());
    let judged: Vec<(u32, String)> = o
        .canary_steps
        .iter()
        .map(|r| (r.percent, r.action.clone()))
        .collect();
    assert_eq!(
        judged,
        [
            (10, "next".to_string()),
            (30, "next".to_string()),
            (60, "promote".to_string())
        ],
        "{:#?}",
        progress(&events)
    );
    assert!(progress(&events)
        .iter()
        .any(|m| m.contains("continuing at the verify stage")));
    let d = state_of(&rig, &id).await;
    assert_eq!(d.resumed, 1);
    let service = rig
        .sandbox
        .service(PROJECT, REGION, "canary-kill")
        .expect("service");
    assert_eq!(
        service["traffic"][0]["revision"],
        o.revision.as_str(),
        "{service}"
    );
    assert_eq!(service["traffic"][0]["percent"], 100);
}

/// Killed while traffic moves back to the previous revision: the next
/// daemon completes the rollback (and verifies it), and the deployment
/// ends FAILED with users on the healthy revision.
#[tokio::test]
async fn kill_during_rollback_completes_the_rollback() {
    let rig = Rig::new(SandboxConfig::fast()).await;
    let mut first = rig.daemon();
    let (_, good) = deploy(
        &rig.client().await,
        deploy_request("rb-kill", &example_app()),
    )
    .await;
    assert!(good.success);
    rig.sandbox.next_revision_answers(
        PROJECT,
        "rb-kill",
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "broken".into(),
        },
    );
    let app = app_version("2");
    let mut req = deploy_request("rb-kill", app.path());
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 2,
        ..Default::default()
    });
    let mut stream = rig
        .client()
        .await
        .deploy(req)
        .await
        .expect("accepted")
        .into_inner();
    let id = loop {
        let e = stream.message().await.expect("stream").expect("event");
        if let Some(Kind::Probe(p)) = &e.kind {
            assert!(!p.healthy);
            // The rollback's traffic change is slow: the daemon dies in it.
            rig.sandbox.inject(Fault {
                method: "run.projects.locations.services.patch".into(),
                remaining: 1,
                action: FaultAction::Slow(Duration::from_secs(5)),
            });
        }
        if started(Stage::Rollback)(&e) {
            break e.deployment_id;
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut first);
    let _second = rig.daemon();
    let (events, o) = history(&rig, &id).await;
    assert!(!o.success);
    assert!(o.rolled_back, "{o:?}\n{}", rig.log());
    assert_eq!(o.previous_revision, good.revision);
    assert!(progress(&events)
        .iter()
        .any(|m| m.contains("continuing with the rollback")));
    let service = rig
        .sandbox
        .service(PROJECT, REGION, "rb-kill")
        .expect("service");
    assert_eq!(
        service["traffic"][0]["revision"],
        good.revision.as_str(),
        "{service}"
    );
    assert_eq!(service["traffic"][0]["percent"], 100);
    assert_eq!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        2,
        "one build per deployment"
    );
    assert_eq!(rig.sandbox.revisions(PROJECT, REGION, "rb-kill").len(), 2);
    let d = state_of(&rig, &id).await;
    assert_eq!(d.state, i32::from(proto::DeploymentState::Failed));
}

/// SIGTERM mid-build: the daemon stops within its drain time and exits 0,
/// the client is told where to follow the deployment, and the next daemon
/// finishes it without a second build.
#[tokio::test]
async fn sigterm_mid_build_hands_over_to_the_next_daemon() {
    let rig = Rig::new(SandboxConfig {
        build_line_delay: Duration::from_millis(40),
        ..SandboxConfig::fast()
    })
    .await;
    let mut first = rig.daemon();
    let (mut stream, id) = deploy_until(
        &rig,
        deploy_request("term", &example_app()),
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.message.contains("queued")),
    )
    .await;
    let t = Instant::now();
    signal(&first.child, Signal::TERM, false).expect("SIGTERM");
    let end = loop {
        match stream.message().await {
            Ok(Some(e)) => assert!(!matches!(e.kind, Some(Kind::Outcome(_))), "{e:?}"),
            Ok(None) => panic!("the stream must say where the deployment went"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert!(
        end.message().contains(&format!("deployd watch {id}")),
        "{}",
        end.message()
    );
    // Waited for without blocking the runtime, which still has to close
    // this test's connection politely.
    let status = loop {
        if let Some(s) = first.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drained_in = t.elapsed();
    assert!(status.success(), "{status:?}\n{}", rig.log());
    // The drain time is 10 s by default; handing over takes far less.
    assert!(drained_in < Duration::from_secs(10), "{drained_in:?}");
    assert_eq!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        0,
        "the build is not cancelled"
    );
    let _second = rig.daemon();
    let (_, o) = history(&rig, &id).await;
    assert!(o.success, "{o:?}");
    assert_eq!(
        rig.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );
    eprintln!("SIGTERM to exit: {drained_in:?}");
}

async fn deploy(
    client: &DeployerClient<Channel>,
    req: proto::DeployRequest,
) -> (Vec<proto::Event>, proto::Outcome) {
    let stream = client.clone().deploy(req).await.expect("accepted");
    run_to_outcome(stream.into_inner()).await
}
