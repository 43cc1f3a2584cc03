//! Test harness: a sandbox and a daemon on ephemeral loopback ports, the
//! daemon reaching the sandbox through the real HTTP client (exactly as it
//! would reach Google), and a real tonic client.
#![allow(dead_code)]

mod git;
pub mod pki;
#[allow(unused_imports)]
pub use git::{GitServer, Repo};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deployd::api::proto::{self, deployer_client::DeployerClient, event::Kind};
use deployd::config::{Backend, DaemonConfig};
use deployd::daemon::{self, Running};
use deployd::pipeline::source::SourcePolicy;
use deployd::pipeline::verify::UrlPolicy;
use deployd::pipeline::PipelineConfig;
use deployd::sandbox::{Sandbox, SandboxConfig, DEFAULT_PROJECT};
use rustix::process::{Pid, Signal};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const PROJECT: &str = DEFAULT_PROJECT;
pub const REGION: &str = "us-central1";

pub struct Harness {
    pub sandbox: Sandbox,
    pub daemon: Running,
    pub shutdown: CancellationToken,
    /// The daemon's SQLite store lives here.
    pub state: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(SandboxConfig::fast()).await
    }

    /// Without a metrics endpoint (and so without the global recorder).
    pub async fn start_without_metrics() -> Harness {
        Self::build(SandboxConfig::fast(), false).await
    }

    pub async fn start_with(sandbox_config: SandboxConfig) -> Harness {
        Self::build(sandbox_config, true).await
    }

    /// Without a metrics endpoint, with the daemon's config adjusted by `f`
    /// (benches that start several daemons in one process).
    pub async fn start_quiet(f: impl FnOnce(&mut DaemonConfig)) -> Harness {
        Self::build_with(SandboxConfig::fast(), false, f).await
    }

    /// With the daemon's config adjusted by `f`.
    pub async fn start_config(f: impl FnOnce(&mut DaemonConfig)) -> Harness {
        Self::build_with(SandboxConfig::fast(), true, f).await
    }

    /// Quiet, with this sandbox and the daemon's config adjusted by `f`.
    pub async fn start_full(
        sandbox_config: SandboxConfig,
        f: impl FnOnce(&mut DaemonConfig),
    ) -> Harness {
        Self::build_with(sandbox_config, false, f).await
    }

    async fn build(sandbox_config: SandboxConfig, with_metrics: bool) -> Harness {
        Self::build_with(sandbox_config, with_metrics, |_| {}).await
    }

    async fn build_with(
        sandbox_config: SandboxConfig,
        with_metrics: bool,
        f: impl FnOnce(&mut DaemonConfig),
    ) -> Harness {
        let sandbox = Sandbox::start(sandbox_config)
            .await
            .expect("sandbox starts");
        let state = tempfile::tempdir().expect("state dir");
        let config = DaemonConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: with_metrics.then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            backend: Backend::Endpoint(sandbox.base_url()),
            // Small chunks, so tests exercise resumable uploads.
            upload_chunk_bytes: 256 * 1024,
            invoker_service_account: Some(deployd::sandbox::invoker_service_account(PROJECT)),
            metadata_host: None,
            probe_ca_file: None,
            pipeline: PipelineConfig {
                // Backoff scaled down 100x: 20 ms, 40 ms, 80 ms...
                retry_base_delay: Duration::from_millis(20),
                poll_interval: Duration::from_millis(10),
                build_deadline_slack: Duration::ZERO,
                check_timeout: Duration::from_millis(300),
                work_dir: std::env::temp_dir().join("deployd-tests"),
                caller_member: "user:dev@example.com".into(),
                max_source_bytes: 8 * 1024 * 1024,
                url_policy: UrlPolicy {
                    allowed_hosts: vec!["*.run.app".into(), "127.0.0.1".into(), "localhost".into()],
                    // Only the sandbox's own address may be loopback.
                    private_ok_hosts: vec!["127.0.0.1".into()],
                },
                // The shipped git limits; loopback allowed for GitServer.
                sources: SourcePolicy {
                    local_roots: vec![std::path::PathBuf::from("/")],
                    private_hosts: vec!["127.0.0.1".into()],
                    ..SourcePolicy::default()
                },
                // Canary time 100x faster: a 2 m bake takes 1.2 s.
                canary: deployd::pipeline::CanaryConfig {
                    time_scale: 0.01,
                    prometheus_hosts: vec!["127.0.0.1".into()],
                },
            },
            shutdown_grace: Duration::from_secs(10),
            database_url: Some(deployd::store::sqlite_url_in(state.path())),
            state_dir: None,
            daemon_id: None,
            lease: Duration::from_secs(30),
            history_retention: Duration::from_secs(90 * 24 * 3600),
            auth: Default::default(),
            tcp_nodelay: true,
        };
        let mut config = config;
        f(&mut config);
        let shutdown = CancellationToken::new();
        let daemon = daemon::start(config, SandboxConfig::fast(), shutdown.clone())
            .await
            .expect("daemon starts");
        Harness {
            sandbox,
            daemon,
            shutdown,
            state,
        }
    }

    pub async fn client(&self) -> DeployerClient<Channel> {
        DeployerClient::connect(format!("http://{}", self.daemon.grpc))
            .await
            .expect("client connects")
    }

    pub async fn metrics(&self) -> String {
        let addr = self.daemon.metrics.expect("metrics endpoint");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn example_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello")
}

pub fn target(service: &str) -> proto::Target {
    proto::Target {
        project: PROJECT.into(),
        region: REGION.into(),
        service: service.into(),
    }
}

/// deployd names a deploy's revision `{service}-{8 hex of the deployment id}`,
/// so a resumed run can find it.
pub fn assert_deployd_named(revision: &str, service: &str) {
    let suffix = revision
        .strip_prefix(&format!("{service}-"))
        .unwrap_or_else(|| panic!("{revision} is not a revision of {service}"));
    assert!(
        suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );
}

/// Records a deployment of `req` as if a daemon named `owner` had started
/// it and died before doing anything: its lease already expired, so a
/// live daemon on the store takes it over.
pub async fn orphan(h: &Harness, req: proto::DeployRequest, owner: &str) -> String {
    orphan_until(
        h,
        req,
        owner,
        std::time::SystemTime::now() - Duration::from_secs(1),
    )
    .await
}

/// Like [`orphan`], with the lease valid until `lease_until`.
pub async fn orphan_until(
    h: &Harness,
    req: proto::DeployRequest,
    owner: &str,
    lease_until: std::time::SystemTime,
) -> String {
    use deployd::deployments::NewDeployment;
    let domain = deployd::api::convert::deploy_request(req, Duration::from_millis(20))
        .expect("valid request");
    let d = deployd::pipeline::Deployment::new(uuid::Uuid::new_v4().to_string(), domain);
    let id = d.id.clone();
    let new = NewDeployment {
        request_id: None,
        request_digest: deployd::deployments::request_digest(&d.request),
        caller: "test".into(),
        owner: owner.into(),
        lease_until,
        progress: d,
    };
    h.daemon
        .manager
        .store()
        .create(&new)
        .await
        .expect("recorded");
    id
}

/// The id of the running deployment of `service`, from the store.
pub async fn running_id(h: &Harness, service: &str) -> String {
    let filter = deployd::deployments::Filter {
        service: Some(service.into()),
        ..Default::default()
    };
    let (listed, _) = h
        .daemon
        .manager
        .store()
        .list(&filter, None, 1)
        .await
        .expect("list");
    listed
        .first()
        .expect("a deployment of the service")
        .id
        .clone()
}

/// Polls GetDeployment until the deployment has ended.
pub async fn ended(h: &Harness, id: &str, within: Duration) -> proto::Deployment {
    let mut client = h.client().await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let d = client
            .get_deployment(proto::GetDeploymentRequest { id: id.into() })
            .await
            .expect("get")
            .into_inner();
        if d.state != i32::from(proto::DeploymentState::Running) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment {id} still running: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deploy of `dir` with fast health checks.
pub fn deploy_request(service: &str, dir: &Path) -> proto::DeployRequest {
    proto::DeployRequest {
        target: Some(target(service)),
        source: Some(proto::Source {
            kind: Some(proto::source::Kind::LocalPath(dir.display().to_string())),
            git_ref: String::new(),
            subdirectory: String::new(),
        }),
        runtime: Some(proto::RuntimeSettings {
            allow_unauthenticated: true,
            ..Default::default()
        }),
        build: None,
        health_check: Some(proto::HealthCheck {
            timeout_ms: 2000,
            ..Default::default()
        }),
        rollback_policy: 0,
        rollout_mode: 0,
        canary_percent: 0,
        request_id: String::new(),
        canary_steps: vec![],
        analysis: None,
    }
}

/// Every event of a stream, in order.
pub async fn collect(stream: tonic::Streaming<proto::Event>) -> Vec<proto::Event> {
    let mut stream = stream;
    let mut events = vec![];
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("stream makes progress")
        .expect("stream ok")
    {
        events.push(e);
    }
    events
}

/// A child process ended when the guard drops, so that a failing test
/// leaves nothing running (a leftover holding the test's output open would
/// stall CI). With `group`, the process group it leads is ended too.
pub struct ChildGuard {
    pub child: std::process::Child,
    group: bool,
}

impl ChildGuard {
    pub fn new(child: std::process::Child) -> Self {
        Self {
            child,
            group: false,
        }
    }

    /// For a child started with `process_group(0)` whose own children
    /// (npm's, gunicorn's workers) must end with it.
    pub fn group(child: std::process::Child) -> Self {
        Self { child, group: true }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.group {
            let _ = signal(&self.child, Signal::TERM, true);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an outside tool answers `program args` successfully. CI
/// installs every such tool (.ci/run), so under `CI=true` its absence fails
/// the test; elsewhere the test skips, saying how to install it.
pub fn outside_tool(program: &str, args: &[&str], install: &str) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {program} ({install}; see .ci/run)"
        );
        eprintln!("SKIPPED: {program} is not usable here ({install})");
    }
    ok
}

/// Starts a deploy whose build never finishes and returns its stream once
/// the build's log is flowing, i.e. with the remote build running.
pub async fn deploy_with_a_running_build(
    h: &Harness,
    service: &str,
) -> tonic::Streaming<proto::Event> {
    h.sandbox
        .fail_next_build(deployd::sandbox::faults::BuildFault::NeverFinishes);
    let mut stream = h
        .client()
        .await
        .deploy(deploy_request(service, &example_app()))
        .await
        .expect("accepted")
        .into_inner();
    while let Some(e) = stream.message().await.expect("stream") {
        if matches!(e.kind, Some(Kind::Log(_))) {
            break;
        }
    }
    stream
}

/// A Verify RPC the daemon accepts: its events and outcome.
pub async fn verify_rpc(
    h: &Harness,
    req: proto::VerifyRequest,
) -> (Vec<proto::Event>, proto::Outcome) {
    let stream = h.client().await.verify(req).await.expect("accepted");
    run_to_outcome(stream.into_inner()).await
}

pub async fn deploy(h: &Harness, req: proto::DeployRequest) -> (Vec<proto::Event>, proto::Outcome) {
    let stream = h.client().await.deploy(req).await.expect("deploy accepted");
    run_to_outcome(stream.into_inner()).await
}

/// Every event of a run's stream, and its outcome.
pub async fn run_to_outcome(
    stream: tonic::Streaming<proto::Event>,
) -> (Vec<proto::Event>, proto::Outcome) {
    let events = collect(stream).await;
    let o = outcome(&events);
    (events, o)
}

/// The single outcome, which must be the last event.
pub fn outcome(events: &[proto::Event]) -> proto::Outcome {
    let outcomes: Vec<&proto::Outcome> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Outcome(o)) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 1, "exactly one outcome event");
    assert!(
        matches!(
            events.last().and_then(|e| e.kind.as_ref()),
            Some(Kind::Outcome(_))
        ),
        "the outcome is the last event"
    );
    let o = outcomes[0].clone();
    // A failed run says what failed, why, and what to do.
    if !o.success {
        let f = o
            .error
            .as_ref()
            .expect("a failed outcome carries its failure");
        assert!(!f.code.is_empty() && !f.message.is_empty(), "{f:?}");
        assert!(
            !f.remediation.is_empty(),
            "{} has no remediation: {}",
            f.code,
            f.message
        );
    }
    o
}

pub fn checks(events: &[proto::Event]) -> Vec<proto::Check> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Check(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub fn probes(events: &[proto::Event]) -> Vec<proto::Probe> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Probe(p)) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

pub fn logs(events: &[proto::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Log(l)) => Some(l.line.clone()),
            _ => None,
        })
        .collect()
}

/// Stage names in the order they started.
pub fn stages_started(events: &[proto::Event]) -> Vec<i32> {
    events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::StageStarted(_))))
        .map(|e| e.stage)
        .collect()
}

/// A copy of the example app in a temp dir the test may change.
pub fn app_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["Dockerfile", "main.py"] {
        std::fs::copy(example_app().join(f), dir.path().join(f)).expect("copy example");
    }
    dir
}

/// The example app at another version: a new source, so a new image and
/// revision.
pub fn app_version(version: &str) -> tempfile::TempDir {
    let dir = app_copy();
    std::fs::write(dir.path().join("VERSION"), version).expect("write VERSION");
    dir
}

/// Sum of a counter's samples whose labels contain `labels` (e.g. `result="success"`).
pub fn counter(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `sig` to a child or, with `group`, to the process group it leads.
/// kill(2) through rustix, not `kill(1)`: procps-ng 4.0.2 reads
/// `kill -TERM -45678` as process group 4, and `-1…` as every process on
/// the machine, which once took the CI runner down with the test.
pub fn signal(child: &std::process::Child, sig: Signal, group: bool) -> std::io::Result<()> {
    let pid = Pid::from_child(child);
    // The group of init would be every process, as above.
    if pid.is_init() {
        return Err(std::io::Error::other("refusing to signal init"));
    }
    let sent = if group {
        rustix::process::kill_process_group(pid, sig)
    } else {
        rustix::process::kill_process(pid, sig)
    };
    sent.map_err(std::io::Error::from)
}

/// A `deployd serve` process started from `cmd` (the binary, with any
/// environment the test wants) with `args` added, listening on free
/// loopback ports; returns once its gRPC port accepts connections.
pub struct Served {
    pub guard: ChildGuard,
    pub grpc: u16,
    pub metrics: u16,
    /// Holds the daemon's default store (XDG_STATE_HOME) until dropped.
    pub state: tempfile::TempDir,
    /// The daemon's TMPDIR, where an embedded sandbox runs revisions.
    pub tmp: PathBuf,
}

impl Drop for Served {
    /// Stops the daemon, then checks that no revision's process outlived
    /// it (an embedded sandbox runs apps natively under its TMPDIR).
    fn drop(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
        if !std::thread::panicking() {
            assert_none_left_under(&self.tmp);
        }
    }
}

/// `output()` of a one-shot command (`deploy --sandbox` runs its own
/// sandbox) with a TMPDIR of its own, checking that no process it started
/// is left once it exits.
pub trait OutputChecked {
    fn output_checked(&mut self) -> std::process::Output;
}

impl OutputChecked for std::process::Command {
    fn output_checked(&mut self) -> std::process::Output {
        let tmp = tempfile::tempdir().expect("TMPDIR");
        let out = self.env("TMPDIR", tmp.path()).output().expect("runs");
        assert_none_left_under(tmp.path());
        out
    }
}

pub fn serve(mut cmd: std::process::Command, args: &[&str]) -> Served {
    // The default store location, under a directory of this test's own.
    let state = tempfile::tempdir().expect("state dir");
    if !cmd.get_envs().any(|(k, _)| k == "XDG_STATE_HOME") {
        cmd.env("XDG_STATE_HOME", state.path());
    }
    let log = state.path().join("serve.stderr");
    let tmp = match cmd.get_envs().find(|(k, _)| *k == "TMPDIR") {
        Some((_, Some(dir))) => PathBuf::from(dir),
        _ => {
            let dir = state.path().join("tmp");
            std::fs::create_dir(&dir).expect("TMPDIR");
            cmd.env("TMPDIR", &dir);
            dir
        }
    };
    // A port picked free can be taken by a parallel test before serve binds
    // it: then pick again (and otherwise show what serve said).
    for _ in 0..3 {
        let (grpc, metrics) = (free_port(), free_port());
        let stderr = std::fs::File::create(&log).expect("stderr file");
        let mut attempt = std::process::Command::new(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => attempt.env(k, v),
                None => attempt.env_remove(k),
            };
        }
        attempt
            .args(cmd.get_args())
            .arg("serve")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        if let Some(dir) = cmd.get_current_dir() {
            attempt.current_dir(dir);
        }
        let mut guard = attempt.spawn().map(ChildGuard::new).expect("serve starts");
        match listening(grpc, &mut guard.child) {
            Ok(()) => {
                return Served {
                    guard,
                    grpc,
                    metrics,
                    state,
                    tmp,
                }
            }
            Err(status) => {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                if !said.contains("in use") {
                    panic!("serve exited before listening on {grpc}: {status}\n{said}");
                }
            }
        }
    }
    panic!("serve found no free port in 3 tries")
}

/// Waits until `child` listens on loopback `port`; its exit status if it
/// exits first; fails after 30 s.
fn listening(port: u16, child: &mut std::process::Child) -> Result<(), std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listened on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until `child` accepts connections on loopback `port`; fails at
/// once if it exits first, and after 30 s.
pub fn wait_for_port(port: u16, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the process exited before listening on {port}: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listened on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read").flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

/// Entry paths of a .tar.gz, in order.
pub fn archive_names(bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    a.entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

/// A Preflight of the sandbox's project, to its outcome.
/// A Preflight of the default project: its events and outcome.
pub async fn preflight_run(h: &Harness) -> (Vec<proto::Event>, proto::Outcome) {
    let stream = h
        .client()
        .await
        .preflight(proto::PreflightRequest {
            target: Some(target("")),
            ..Default::default()
        })
        .await
        .expect("accepted");
    run_to_outcome(stream.into_inner()).await
}

pub async fn preflight(h: &Harness) -> proto::Outcome {
    preflight_run(h).await.1
}

/// The source archive the first build fetched, as the sandbox stores it.
pub fn built_archive(h: &Harness) -> Vec<u8> {
    let build = &h.sandbox.builds()[0];
    let src = &build["source"]["storageSource"];
    h.sandbox
        .object(
            src["bucket"].as_str().unwrap_or_default(),
            src["object"].as_str().unwrap_or_default(),
        )
        .expect("the built archive is in the bucket")
}

/// Starts a daemon taking API tokens and makes a call without one, which
/// it refuses (for workloads that need a refusal in the metrics).
pub async fn refuse_a_call_without_a_token() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    let (_, line) = deployd::api::auth::tokens::new_token("workload");
    std::fs::write(&tokens, line).expect("tokens");
    let guarded = Harness::start_quiet(|c| c.auth.api_tokens_file = Some(tokens)).await;
    let refused = guarded
        .client()
        .await
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unauthenticated)
    );
}

/// A bench setting from the environment (ROUNDS=5 ...), else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of timings (benches).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// For tests of what verification catches: without a startup probe, a
/// revision that answers badly still becomes ready (with one, Cloud Run and
/// the sandbox hold it back before verification).
pub fn no_startup_probe() -> Option<proto::StartupProbe> {
    Some(proto::StartupProbe {
        disabled: true,
        ..Default::default()
    })
}

/// Calls of `method` that changed something: preflight's `validateOnly`
/// creates and patches (Cloud Run's verdict on the revision) left out.
pub fn changes(sandbox: &Sandbox, method: &str) -> usize {
    sandbox
        .requests_of(method)
        .iter()
        .filter(|r| !r.query.contains("validateOnly=true"))
        .count()
}

/// A real Prometheus on loopback (Debian's), stopped when dropped.
pub struct Prometheus {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts one whose configuration `config` writes (given the data
    /// directory, for rule files) and waits until it is ready.
    pub async fn start(config: impl FnOnce(&Path) -> String) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config(dir.path());
        std::fs::write(dir.path().join("prometheus.yml"), text).expect("write");
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("{url}/-/ready"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Prometheus {
            child,
            url,
            _dir: dir,
        }
    }
}

/// Processes whose working directory is under `dir`: the sandbox runs each
/// revision's process in a directory of its own under its TMPDIR.
pub fn processes_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .map(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .unwrap_or_default()
                .replace('\0', " ")
        })
        .collect()
}

/// Waits (10 s at most) until no process runs under `dir`: a sandbox's
/// revisions stop with it.
pub fn assert_none_left_under(dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_under(dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {:?}",
            processes_under(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
