//! The command line: `serve` runs the daemon; `deploy`, `preflight` and
//! `verify` are gRPC clients of it that render the event stream. With
//! `--sandbox`, a client command starts its own daemon and sandbox on
//! loopback first, so one process does the whole job.

mod canary;
mod client;
mod defaults;
mod render;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::api::auth::oidc::{JwksSource, OidcConfig};
use crate::api::proto;
use crate::config::*;
use crate::daemon;
use crate::pipeline::source::SourcePolicy;
use crate::pipeline::verify::UrlPolicy;
use crate::pipeline::PipelineConfig;
use crate::sandbox::{SandboxConfig, DEFAULT_PROJECT};
use crate::telemetry::{self, LogFormat};
use client::{Client, ClientCreds};

#[derive(Parser, Debug)]
#[command(
    name = "deployd",
    version,
    about = "Source to a running, verified Cloud Run service"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Deploy a source directory or git repository to Cloud Run.
    Deploy(Box<DeployArgs>),
    /// Check that a project is ready for deploys.
    Preflight(PreflightArgs),
    /// Probe a URL until it is healthy.
    Verify(VerifyArgs),
    /// Show what deployd would build from a source directory, and why.
    Analyze(AnalyzeArgs),
    /// Deployments the daemon has recorded, newest first.
    List(ListArgs),
    /// One deployment: its state, stage and outcome.
    Status(IdArgs),
    /// Follow a deployment's events (from the start, or after --after-seq).
    Watch(WatchArgs),
    /// Cancel a running deployment (its build is cancelled, traffic stays
    /// on a healthy revision).
    Cancel(IdArgs),
    /// A service's delivery performance (the four DORA keys) from the
    /// daemon's deployment history.
    Dora(DoraArgs),
    /// API tokens for --api-tokens-file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Steer a running sandbox (`deployd serve --sandbox`) from outside.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Apply a fault scenario (YAML or JSON, as --sandbox-faults reads) to
    /// the running sandbox at --sandbox-url; prints what it changed.
    Faults(SandboxFaultsArgs),
}

#[derive(Args, Debug)]
struct SandboxFaultsArgs {
    /// The scenario file (.yaml, .yml or .json).
    file: PathBuf,
    /// The sandbox's base URL, as `serve --sandbox` prints it
    /// (`sandbox: http://127.0.0.1:PORT`).
    #[arg(long, env = "DEPLOYD_SANDBOX_URL")]
    sandbox_url: String,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token for PRINCIPAL: the token on stdout (shown once), its
    /// line for the tokens file on stderr, or appended with --append-to.
    New(TokenNewArgs),
}

#[derive(Args, Debug)]
struct TokenNewArgs {
    /// The name the token authenticates as, as policies name it.
    principal: String,
    /// Append the token's line to this tokens file (created 0600).
    #[arg(long)]
    append_to: Option<PathBuf>,
}

/// A client of a running daemon (no --sandbox: its store is the daemon's).
#[derive(Args, Debug, Clone)]
struct Remote {
    #[arg(long, env = ENV_SERVER)]
    server: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    creds: ClientCreds,
}

#[derive(Args, Debug)]
struct IdArgs {
    /// The deployment id (printed by deploy, list).
    id: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct WatchArgs {
    id: String,
    /// Show only events after this seq.
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct ListArgs {
    #[arg(long, env = ENV_PROJECT)]
    project: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
struct DoraArgs {
    /// The Cloud Run service.
    #[arg(long)]
    service: String,
    #[command(flatten)]
    target: TargetArgs,
    /// The window, ending now (e.g. 30d, 2w, 12h).
    #[arg(long, default_value = "30d", value_parser = canary::parse_duration)]
    since: std::time::Duration,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Args, Debug)]
struct AnalyzeArgs {
    /// Source directory (omit with --git-url).
    #[arg(required_unless_present = "git_url")]
    path: Option<PathBuf>,
    /// The plan as JSON (with the generated Dockerfile).
    #[arg(long)]
    json: bool,
    /// Ask this daemon (its Analyze RPC) instead of analyzing here: it
    /// fetches the source under its own source policy.
    #[arg(long, env = ENV_SERVER)]
    server: Option<String>,
    /// A git repository to analyze (needs --server: the daemon clones it).
    #[arg(long, conflicts_with = "path", requires = "server")]
    git_url: Option<String>,
    /// Branch, tag or commit of --git-url.
    #[arg(long, requires = "git_url")]
    git_ref: Option<String>,
    /// Analyze this directory of the source (monorepos; needs --server).
    #[arg(long, requires = "server")]
    subdirectory: Option<String>,
    #[command(flatten)]
    creds: ClientCreds,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[arg(long, env = ENV_METRICS_LISTEN, default_value = DEFAULT_METRICS_LISTEN)]
    metrics_listen: SocketAddr,
    /// Serve against an embedded GCP sandbox instead of Google.
    #[arg(long, conflicts_with = "gcp_endpoint")]
    sandbox: bool,
    /// With --sandbox: where the sandbox listens (default: an ephemeral port).
    #[arg(long, requires = "sandbox")]
    sandbox_listen: Option<SocketAddr>,
    /// With --sandbox: a fault scenario (YAML or JSON) applied at start.
    #[arg(long, requires = "sandbox")]
    sandbox_faults: Option<PathBuf>,
    /// Send every Google API call to this base URL (an emulator); no credentials.
    #[arg(long, env = ENV_GCP_ENDPOINT)]
    gcp_endpoint: Option<String>,
    /// Accept local source paths under this directory (repeatable); without
    /// it the daemon takes git URLs only.
    #[arg(long = "local-source-root", env = ENV_LOCAL_SOURCE_ROOTS, value_delimiter = ',')]
    local_source_roots: Vec<PathBuf>,
    #[command(flatten)]
    auth: ServeAuth,
    #[command(flatten)]
    tuning: Tuning,
}

/// TLS, authentication and policy of `serve`.
#[derive(Args, Debug, Clone)]
struct ServeAuth {
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = ENV_TLS_CERT, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS);
    /// their identity is its URI or DNS SAN, or its CN.
    #[arg(long, env = ENV_CLIENT_CA, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// JWKS of the OIDC issuer whose ID tokens are accepted
    /// (https://www.googleapis.com/oauth2/v3/certs for Google's).
    #[arg(long, env = ENV_OIDC_JWKS_URL, conflicts_with = "oidc_jwks_file", requires_all = ["oidc_issuer", "oidc_audience"])]
    oidc_jwks_url: Option<String>,
    /// The issuer's JWKS as a file, re-read when a token names a key it lacks.
    #[arg(long, env = ENV_OIDC_JWKS_FILE, requires_all = ["oidc_issuer", "oidc_audience"])]
    oidc_jwks_file: Option<PathBuf>,
    /// The `iss` ID tokens must carry (Google: https://accounts.google.com).
    #[arg(long, env = ENV_OIDC_ISSUER)]
    oidc_issuer: Option<String>,
    /// The `aud` ID tokens must carry: what callers request their token for.
    #[arg(long, env = ENV_OIDC_AUDIENCE)]
    oidc_audience: Option<String>,
    /// Static API tokens, hashed: `sha256:HEX PRINCIPAL` lines (`deployd
    /// token new` makes them).
    #[arg(long, env = ENV_API_TOKENS_FILE)]
    api_tokens_file: Option<PathBuf>,
    /// Who may call which RPCs for which projects and services (YAML or
    /// TOML). With authentication on and no policy, every call is refused.
    #[arg(long, env = ENV_POLICY)]
    policy: Option<PathBuf>,
    /// Serve a non-loopback address without authentication: anyone who
    /// reaches it deploys with this daemon's Google credentials.
    #[arg(long)]
    insecure_allow_unauthenticated: bool,
}

impl ServeAuth {
    fn config(&self) -> AuthConfig {
        let jwks = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
            (Some(u), _) => Some(JwksSource::Url(u.clone())),
            (None, Some(f)) => Some(JwksSource::File(f.clone())),
            (None, None) => None,
        };
        AuthConfig {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            client_ca: self.client_ca.clone(),
            oidc: jwks.map(|j| {
                OidcConfig::new(
                    j,
                    self.oidc_issuer.clone().unwrap_or_default(),
                    self.oidc_audience.clone().unwrap_or_default(),
                )
            }),
            api_tokens_file: self.api_tokens_file.clone(),
            policy_file: self.policy.clone(),
            insecure_allow_unauthenticated: self.insecure_allow_unauthenticated,
        }
    }
}

/// Daemon settings shared by `serve` and the embedded mode.
#[derive(Args, Debug, Clone)]
struct Tuning {
    /// First backoff delay of retries, doubling after each.
    #[arg(long, env = ENV_RETRY_BASE_DELAY_MS, default_value_t = 2000)]
    retry_base_delay_ms: u64,
    /// How often running builds and operations are polled.
    #[arg(long, env = ENV_POLL_INTERVAL_MS)]
    poll_interval_ms: Option<u64>,
    /// Where git sources are cloned.
    #[arg(long, env = ENV_WORK_DIR)]
    work_dir: Option<PathBuf>,
    /// IAM member remediation commands grant roles to, e.g.
    /// user:me@example.com (default: the service account of the daemon's
    /// Application Default Credentials, when they name one).
    #[arg(long, env = ENV_CALLER_MEMBER)]
    caller_member: Option<String>,
    /// Deadline of one preflight API call.
    #[arg(long, env = ENV_CHECK_TIMEOUT_MS, default_value_t = 20_000)]
    check_timeout_ms: u64,
    /// Uncompressed source bytes a deploy may send.
    #[arg(long, env = ENV_MAX_SOURCE_BYTES, default_value_t = crate::pipeline::archive::DEFAULT_MAX_SOURCE_BYTES)]
    max_source_bytes: u64,
    /// Service account whose identity tokens probe private services.
    #[arg(long, env = ENV_INVOKER_SERVICE_ACCOUNT)]
    invoker_service_account: Option<String>,
    /// Metadata server (host[:port]) for identity tokens when no invoker
    /// account is set.
    #[arg(long, env = ENV_METADATA_HOST)]
    metadata_host: Option<String>,
    /// PEM bundle of CAs health checks trust besides the system's.
    #[arg(long, env = ENV_PROBE_CA_FILE)]
    probe_ca_file: Option<PathBuf>,
    /// Hosts a Verify caller may have probed, comma-separated.
    #[arg(long, env = ENV_VERIFY_ALLOWED_HOSTS, value_delimiter = ',', default_value = "*.run.app")]
    verify_allowed_hosts: Vec<String>,
    /// Hosts a Verify may reach on private or loopback addresses (Private
    /// Service Connect, internal ingress, an emulator), comma-separated;
    /// they are allowed hosts too. Link-local addresses never are.
    #[arg(long, env = ENV_VERIFY_PRIVATE_HOSTS, value_delimiter = ',')]
    verify_private_hosts: Vec<String>,
    /// Prometheus hosts a deploy's canary analysis may query
    /// (comma-separated; `*.corp.example` for subdomains).
    #[arg(long, env = ENV_PROMETHEUS_HOSTS, value_delimiter = ',')]
    prometheus_hosts: Vec<String>,
    /// Multiplies every canary duration (bakes, probe intervals,
    /// Monitoring's delay): 0.01 rehearses a 2-minute step in 1.2 s.
    #[arg(long, env = ENV_CANARY_TIME_SCALE, default_value_t = 1.0)]
    canary_time_scale: f64,
    /// Git hosts that may be reached on loopback or private addresses, and
    /// over plain http:// (comma-separated; `*.corp.example` for subdomains).
    #[arg(long, env = ENV_SOURCE_PRIVATE_HOSTS, value_delimiter = ',')]
    source_private_hosts: Vec<String>,
    /// Accept ssh:// and user@host:path git URLs.
    #[arg(long, env = ENV_SOURCE_ALLOW_SSH)]
    source_allow_ssh: bool,
    /// Resumable upload chunk size (a multiple of 256 KiB).
    #[arg(long, env = ENV_UPLOAD_CHUNK_BYTES, default_value_t = crate::gcp::storage::DEFAULT_CHUNK_BYTES)]
    upload_chunk_bytes: usize,
    /// The deployment store: sqlite:///ABSOLUTE/PATH or postgres://...
    /// (several daemons share a PostgreSQL one); wins over --state-dir.
    #[arg(long, env = ENV_DATABASE_URL)]
    database_url: Option<String>,
    /// Directory of the default SQLite store (default
    /// $XDG_STATE_HOME/deployd, or ~/.local/state/deployd; with --sandbox
    /// a temporary one).
    #[arg(long, env = ENV_STATE_DIR)]
    state_dir: Option<PathBuf>,
    /// This daemon's name in deployment leases (default host:port). A
    /// daemon restarted under the same name resumes its deployments at once.
    #[arg(long, env = ENV_DAEMON_ID)]
    daemon_id: Option<String>,
    /// Seconds a running deployment's lease lasts without a heartbeat;
    /// another daemon takes it over after that.
    #[arg(long, env = ENV_LEASE_SECONDS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_seconds: u64,
    /// Days ended deployments are kept before they are pruned.
    #[arg(long, env = ENV_HISTORY_DAYS, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36500))]
    history_days: u64,
    /// Seconds a stopping daemon waits for its runs to hand over.
    #[arg(long, env = "DEPLOYD_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,
}

/// Which daemon a client command talks to.
#[derive(Args, Debug, Clone)]
struct Connect {
    /// A running daemon.
    #[arg(long, env = ENV_SERVER, conflicts_with = "sandbox")]
    server: Option<String>,
    /// Start an embedded daemon and GCP sandbox in this process.
    #[arg(long)]
    sandbox: bool,
    /// With --sandbox: a fault scenario (YAML or JSON) applied before the
    /// run (see `deployd sandbox faults`).
    #[arg(long, requires = "sandbox")]
    sandbox_faults: Option<PathBuf>,
    /// One JSON object per event on stdout.
    #[arg(long)]
    json: bool,
    /// Stages, checks, probes and the outcome, without build log lines.
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
    /// Everything, each line with its event's time.
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten, next_help_heading = "Daemon connection")]
    creds: ClientCreds,
    /// Settings of the embedded daemon; refused with --server, whose
    /// daemon has its own.
    #[command(flatten, next_help_heading = "Embedded daemon (with --sandbox only)")]
    tuning: Tuning,
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Google Cloud project id. Without it: DEPLOYD_PROJECT,
    /// CLOUDSDK_CORE_PROJECT, the active gcloud configuration's
    /// core/project (with --sandbox: the sandbox's project).
    #[arg(long, env = ENV_PROJECT)]
    project: Option<String>,
    /// Cloud Run region. Without it: DEPLOYD_REGION, CLOUDSDK_RUN_REGION,
    /// the active gcloud configuration's run/region, else us-central1
    /// (said at the start of the run).
    #[arg(long, env = ENV_REGION)]
    region: Option<String>,
}

impl TargetArgs {
    /// The region, and where it came from when no flag or DEPLOYD_REGION
    /// named it.
    fn region_found(&self) -> defaults::Found {
        match &self.region {
            Some(r) => defaults::Found {
                value: r.clone(),
                from: String::new(),
            },
            None => defaults::Gcloud::from_process()
                .region()
                .unwrap_or_else(|| defaults::Found {
                    value: DEFAULT_REGION.into(),
                    from: "the default; set --region or `gcloud config set run/region`".into(),
                }),
        }
    }

    fn region(&self) -> String {
        self.region_found().value
    }
}

/// The region when nothing names one, as gcloud suggests for Cloud Run.
const DEFAULT_REGION: &str = "us-central1";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IngressArg {
    All,
    Internal,
    InternalAndCloudLoadBalancing,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RolloutArg {
    Direct,
    VerifyBeforeTraffic,
    Canary,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RollbackArg {
    Automatic,
    Recommend,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EgressArg {
    PrivateRangesOnly,
    AllTraffic,
}

#[derive(Args, Debug)]
struct DeployArgs {
    /// Source directory (omit with --git-url or --image).
    #[arg(required_unless_present_any = ["git_url", "image"])]
    path: Option<PathBuf>,
    /// Deploy a prebuilt container image instead of source, as `gcloud run
    /// deploy --image` does: no analysis and no build.
    #[arg(long, conflicts_with_all = ["path", "git_url", "subdirectory"], help_heading = "Source")]
    image: Option<String>,
    /// A git repository to deploy instead of a directory (https://; ssh
    /// only where the daemon allows it).
    #[arg(long, conflicts_with = "path", help_heading = "Source")]
    git_url: Option<String>,
    /// Branch, tag or commit of --git-url (default: its default branch).
    #[arg(long, requires = "git_url", help_heading = "Source")]
    git_ref: Option<String>,
    /// Deploy this directory of the source (monorepos).
    #[arg(long, help_heading = "Source")]
    subdirectory: Option<String>,
    /// Cloud Run service name (lowercase letters, digits and hyphens).
    #[arg(long)]
    service: String,
    #[command(flatten)]
    target: TargetArgs,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", value_parser = parse_kv, help_heading = "Revision")]
    env: Vec<(String, String)>,
    /// ENV=SECRET[:VERSION] from Secret Manager, repeatable.
    #[arg(long = "secret", value_parser = parse_kv, help_heading = "Revision")]
    secrets: Vec<(String, String)>,
    /// CPU limit, e.g. 1 or 2 (Cloud Run's default: 1).
    #[arg(long, help_heading = "Revision")]
    cpu: Option<String>,
    /// Memory limit, e.g. 512Mi or 2Gi (Cloud Run's default: 512Mi).
    #[arg(long, help_heading = "Revision")]
    memory: Option<String>,
    /// Instances kept warm (default 0).
    #[arg(long, help_heading = "Revision")]
    min_instances: Option<u32>,
    /// Most instances Cloud Run may start.
    #[arg(long, help_heading = "Revision")]
    max_instances: Option<u32>,
    /// Requests one instance serves at once (Cloud Run's default: 80).
    #[arg(long, help_heading = "Revision")]
    concurrency: Option<u32>,
    /// Request timeout in seconds.
    #[arg(long, help_heading = "Revision")]
    timeout: Option<u32>,
    /// Service account the revision runs as (default: Compute Engine's
    /// default account).
    #[arg(long, help_heading = "Revision")]
    service_account: Option<String>,
    /// Who may reach the service over the network.
    #[arg(long, value_enum, help_heading = "Revision")]
    ingress: Option<IngressArg>,
    /// Serverless VPC Access connector for outbound traffic.
    #[arg(long, help_heading = "Revision")]
    vpc_connector: Option<String>,
    /// Which outbound traffic goes through --vpc-connector.
    #[arg(long, value_enum, help_heading = "Revision")]
    vpc_egress: Option<EgressArg>,
    /// Make the service public (roles/run.invoker for allUsers).
    #[arg(long, help_heading = "Revision")]
    allow_unauthenticated: bool,
    /// The port the container listens on, sent as $PORT (default: the
    /// analyzed port, else 8080).
    #[arg(long, help_heading = "Revision")]
    port: Option<u32>,
    /// Cloud Build machine type (default E2_HIGHCPU_8).
    #[arg(long, help_heading = "Build")]
    machine_type: Option<String>,
    /// Build timeout in seconds (default 1200).
    #[arg(long, help_heading = "Build")]
    build_timeout: Option<u32>,
    /// Build attempts on transient failures (default 3).
    #[arg(long, help_heading = "Build")]
    build_attempts: Option<u32>,
    /// Artifact Registry repository for the image (default: deployd,
    /// created when missing).
    #[arg(long, help_heading = "Build")]
    repository: Option<String>,
    /// Service account the build runs as.
    #[arg(long, help_heading = "Build")]
    build_service_account: Option<String>,
    /// Path the health check probes.
    #[arg(long, default_value = "/", help_heading = "Verification")]
    health_path: String,
    /// Probe attempts before the revision is called unhealthy (default 5).
    #[arg(long, help_heading = "Verification")]
    health_attempts: Option<u32>,
    /// Timeout of one probe in milliseconds (default 30000).
    #[arg(long, help_heading = "Verification")]
    health_timeout_ms: Option<u32>,
    /// Text the answer's body must contain.
    #[arg(long, help_heading = "Verification")]
    expect_body: Option<String>,
    /// Accepted status codes, repeatable (default 200, 204, 301, 302).
    #[arg(long = "health-status", help_heading = "Verification")]
    health_statuses: Vec<u32>,
    /// NAME=VALUE header sent with every probe, repeatable.
    #[arg(long = "health-header", value_parser = parse_kv, help_heading = "Verification")]
    health_headers: Vec<(String, String)>,
    /// Caps the doubling backoff between probes, in milliseconds.
    #[arg(long, help_heading = "Verification")]
    health_max_delay_ms: Option<u32>,
    /// Path of the revision's HTTP startup probe (default: --health-path).
    #[arg(long, help_heading = "Verification")]
    startup_probe_path: Option<String>,
    /// Leave Cloud Run's default TCP startup check, which calls the revision
    /// ready as soon as its port is open.
    #[arg(
        long,
        conflicts_with = "startup_probe_path",
        help_heading = "Verification"
    )]
    no_startup_probe: bool,
    /// How the new revision receives traffic.
    #[arg(long, value_enum, default_value = "direct", help_heading = "Rollout")]
    rollout: RolloutArg,
    /// With --rollout canary: the new revision's share while it is verified
    /// (one step, no bake; --canary-steps for more).
    #[arg(long, conflicts_with = "canary_steps", help_heading = "Rollout")]
    canary_percent: Option<u32>,
    #[command(flatten)]
    canary: canary::CanaryArgs,
    /// What to do when the new revision is not healthy.
    #[arg(
        long,
        value_enum,
        default_value = "automatic",
        help_heading = "Rollout"
    )]
    rollback: RollbackArg,
    /// Idempotency key: sending the same deploy again with it follows the
    /// first deployment instead of starting another.
    #[arg(long)]
    request_id: Option<String>,
    /// Print the deployment id and return; it runs on in the daemon.
    #[arg(long, conflicts_with = "sandbox")]
    detach: bool,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
struct PreflightArgs {
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    service_account: Option<String>,
    #[arg(long, value_enum)]
    ingress: Option<IngressArg>,
    #[arg(long, value_enum)]
    vpc_egress: Option<EgressArg>,
    #[arg(long)]
    repository: Option<String>,
    /// Service account builds would run as.
    #[arg(long)]
    build_service_account: Option<String>,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    url: String,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long)]
    attempts: Option<u32>,
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[arg(long)]
    expect_body: Option<String>,
    /// Accepted status codes, repeatable (default 200, 204, 301, 302).
    #[arg(long = "status")]
    statuses: Vec<u32>,
    /// NAME=VALUE header sent with every probe, repeatable.
    #[arg(long = "header", value_parser = parse_kv)]
    headers: Vec<(String, String)>,
    /// Caps the doubling backoff.
    #[arg(long)]
    max_delay_ms: Option<u32>,
    #[command(flatten)]
    connect: Connect,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl Tuning {
    fn daemon_config(&self, backend: Backend) -> DaemonConfig {
        let d = DaemonConfig::default();
        let backend_is_sandbox = backend == Backend::EmbeddedSandbox;
        let poll = self
            .poll_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(match backend {
                // The sandbox finishes operations in fractions of a second.
                Backend::EmbeddedSandbox | Backend::Endpoint(_) => Duration::from_millis(100),
                Backend::Google => d.pipeline.poll_interval,
            });
        DaemonConfig {
            backend,
            upload_chunk_bytes: self.upload_chunk_bytes,
            invoker_service_account: self.invoker_service_account.clone().or_else(|| {
                // The sandbox's project has an invoker identity ready.
                backend_is_sandbox.then(|| crate::sandbox::invoker_service_account(DEFAULT_PROJECT))
            }),
            metadata_host: self.metadata_host.clone(),
            probe_ca_file: self.probe_ca_file.clone(),
            database_url: self.database_url.clone(),
            state_dir: self.state_dir.clone(),
            daemon_id: self.daemon_id.clone(),
            lease: Duration::from_secs(self.lease_seconds),
            history_retention: Duration::from_secs(self.history_days * 24 * 3600),
            shutdown_grace: Duration::from_secs(self.drain_seconds),
            pipeline: PipelineConfig {
                retry_base_delay: Duration::from_millis(self.retry_base_delay_ms),
                poll_interval: poll,
                work_dir: self.work_dir.clone().unwrap_or(d.pipeline.work_dir.clone()),
                // Empty: the daemon fills it from its credentials.
                caller_member: self.caller_member.clone().unwrap_or_default(),
                check_timeout: Duration::from_millis(self.check_timeout_ms),
                max_source_bytes: self.max_source_bytes,
                url_policy: UrlPolicy {
                    allowed_hosts: self
                        .verify_allowed_hosts
                        .iter()
                        .chain(&self.verify_private_hosts)
                        .cloned()
                        .chain(backend_is_sandbox.then(|| "127.0.0.1".to_string()))
                        .collect(),
                    // The sandbox's services listen on loopback.
                    private_ok_hosts: self
                        .verify_private_hosts
                        .iter()
                        .cloned()
                        .chain(backend_is_sandbox.then(|| "127.0.0.1".to_string()))
                        .collect(),
                },
                canary: crate::pipeline::CanaryConfig {
                    time_scale: self.canary_time_scale.clamp(0.0001, 1.0),
                    prometheus_hosts: self.prometheus_hosts.clone(),
                },
                sources: SourcePolicy {
                    private_hosts: self.source_private_hosts.clone(),
                    allow_ssh: self.source_allow_ssh,
                    ..SourcePolicy::default()
                },
                ..d.pipeline.clone()
            },
            ..d
        }
    }
}

fn ingress(i: Option<IngressArg>) -> i32 {
    match i {
        None => proto::Ingress::Unspecified,
        Some(IngressArg::All) => proto::Ingress::All,
        Some(IngressArg::Internal) => proto::Ingress::InternalOnly,
        Some(IngressArg::InternalAndCloudLoadBalancing) => proto::Ingress::InternalLoadBalancer,
    }
    .into()
}

fn egress(e: Option<EgressArg>) -> i32 {
    match e {
        None => proto::VpcEgress::Unspecified,
        Some(EgressArg::PrivateRangesOnly) => proto::VpcEgress::PrivateRangesOnly,
        Some(EgressArg::AllTraffic) => proto::VpcEgress::AllTraffic,
    }
    .into()
}

fn project(t: &TargetArgs, c: &Connect) -> anyhow::Result<String> {
    Ok(project_found(t, c)?.value)
}

/// The project, and where it came from when no flag or DEPLOYD_PROJECT
/// named it.
fn project_found(t: &TargetArgs, c: &Connect) -> anyhow::Result<defaults::Found> {
    let found = |value: &str, from: &str| defaults::Found {
        value: value.to_string(),
        from: from.to_string(),
    };
    match (&t.project, c.sandbox) {
        (Some(p), _) => Ok(found(p, "")),
        (None, true) => Ok(found(DEFAULT_PROJECT, "the sandbox's project")),
        (None, false) => defaults::Gcloud::from_process().project().with_context(|| {
            format!("no project: pass --project, set {ENV_PROJECT}, or `gcloud config set project PROJECT`")
        }),
    }
}

/// The run's opening line: what it acts on, and where each value came
/// from when no flag said it.
fn opening_line(doing: &str, service: &str, t: &TargetArgs, c: &Connect) -> anyhow::Result<String> {
    let (p, r) = (project_found(t, c)?, t.region_found());
    let from = |f: &defaults::Found| {
        if f.from.is_empty() {
            String::new()
        } else {
            format!(" (from {})", f.from)
        }
    };
    Ok(format!(
        "{doing} {service} in project {}{}, region {}{}",
        p.value,
        from(&p),
        r.value,
        from(&r)
    ))
}

/// The first daemon-tuning flag given on the command line of a client
/// command that does not run its own daemon (no --sandbox): it would be
/// ignored, so it is refused. Values from the environment are not, as one
/// shell may serve both a daemon and its clients.
fn tuning_without_sandbox(m: &clap::ArgMatches) -> Option<String> {
    let (name, sub) = m.subcommand()?;
    if !matches!(name, "deploy" | "preflight" | "verify") || sub.get_flag("sandbox") {
        return None;
    }
    let tuning = <Tuning as Args>::augment_args(clap::Command::new("tuning"));
    let found = tuning.get_arguments().find(|a| {
        sub.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
    });
    found.and_then(|a| a.get_long().map(str::to_string))
}

/// Runs the CLI; returns the process exit code.
pub async fn main() -> anyhow::Result<i32> {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(flag) = tuning_without_sandbox(&matches) {
        eprintln!(
            "deployd: --{flag} tunes the embedded daemon of --sandbox; a daemon reached with --server has its own settings (give them to `deployd serve`)"
        );
        return Ok(2);
    }
    // Client commands print the event stream; the embedded daemon's own logs
    // would only interleave with it.
    let level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let tracing = telemetry::init(cli.log_format, level)?;
    let code = run(cli.command).await;
    tracing.shutdown().await;
    code
}

async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Analyze(a) if a.server.is_some() => analyze_remote(a).await,
        Command::Analyze(a) => analyze(a),
        Command::Serve(a) => serve(a).await,
        Command::Deploy(a) => {
            let local_path = a.path.as_deref().map(daemon_path).transpose()?;
            let kind = match (local_path, &a.git_url, &a.image) {
                (Some(p), _, _) => proto::source::Kind::LocalPath(p),
                (None, Some(u), _) => proto::source::Kind::GitUrl(u.clone()),
                (None, None, Some(i)) => proto::source::Kind::Image(i.clone()),
                (None, None, None) => bail!("a source path, --git-url or --image is required"),
            };
            let secrets = a
                .secrets
                .iter()
                .map(|(env, spec)| {
                    let (secret, version) = spec.split_once(':').unwrap_or((spec, ""));
                    proto::SecretEnv {
                        env_name: env.clone(),
                        secret: secret.into(),
                        version: version.into(),
                    }
                })
                .collect();
            let canary = a.canary.request()?;
            let rollout = match (a.rollout, &canary) {
                (RolloutArg::VerifyBeforeTraffic, Some(_)) => {
                    bail!("--canary-steps need --rollout canary, not verify-before-traffic")
                }
                (_, Some(_)) => RolloutArg::Canary,
                (r, None) => r,
            };
            let (canary_steps, analysis) = canary.unwrap_or_default();
            let req = proto::DeployRequest {
                target: Some(proto::Target {
                    project: project(&a.target, &a.connect)?,
                    region: a.target.region(),
                    service: a.service.clone(),
                }),
                source: Some(proto::Source {
                    kind: Some(kind),
                    git_ref: a.git_ref.clone().unwrap_or_default(),
                    subdirectory: a.subdirectory.clone().unwrap_or_default(),
                }),
                runtime: Some(proto::RuntimeSettings {
                    env: a.env.iter().cloned().collect::<HashMap<_, _>>(),
                    secrets,
                    cpu: a.cpu.clone().unwrap_or_default(),
                    memory: a.memory.clone().unwrap_or_default(),
                    min_instances: a.min_instances.unwrap_or(0),
                    max_instances: a.max_instances.unwrap_or(0),
                    concurrency: a.concurrency.unwrap_or(0),
                    request_timeout_seconds: a.timeout.unwrap_or(0),
                    service_account: a.service_account.clone().unwrap_or_default(),
                    ingress: ingress(a.ingress),
                    vpc_egress: egress(a.vpc_egress),
                    vpc_connector: a.vpc_connector.clone().unwrap_or_default(),
                    allow_unauthenticated: a.allow_unauthenticated,
                    container_port: a.port.unwrap_or(0),
                }),
                build: Some(proto::BuildOptions {
                    machine_type: a.machine_type.clone().unwrap_or_default(),
                    timeout_seconds: a.build_timeout.unwrap_or(0),
                    step_timeout_seconds: 0,
                    max_attempts: a.build_attempts.unwrap_or(0),
                    repository: a.repository.clone().unwrap_or_default(),
                    service_account: a.build_service_account.clone().unwrap_or_default(),
                }),
                health_check: Some(proto::HealthCheck {
                    path: a.health_path.clone(),
                    attempts: a.health_attempts.unwrap_or(0),
                    timeout_ms: a.health_timeout_ms.unwrap_or(0),
                    accepted_statuses: a.health_statuses.clone(),
                    expect_body: a.expect_body.clone().unwrap_or_default(),
                    headers: a.health_headers.iter().cloned().collect(),
                    max_delay_ms: a.health_max_delay_ms.unwrap_or(0),
                    startup_probe: Some(proto::StartupProbe {
                        disabled: a.no_startup_probe,
                        path: a.startup_probe_path.clone().unwrap_or_default(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                rollback_policy: match a.rollback {
                    RollbackArg::Automatic => proto::RollbackPolicy::Automatic,
                    RollbackArg::Recommend => proto::RollbackPolicy::Recommend,
                }
                .into(),
                rollout_mode: match rollout {
                    RolloutArg::Direct => proto::RolloutMode::Direct,
                    RolloutArg::VerifyBeforeTraffic => proto::RolloutMode::VerifyBeforeTraffic,
                    RolloutArg::Canary => proto::RolloutMode::Canary,
                }
                .into(),
                canary_percent: a.canary_percent.unwrap_or(0),
                request_id: a.request_id.clone().unwrap_or_default(),
                canary_steps,
                analysis,
            };
            let opening = opening_line("deploying", &a.service, &a.target, &a.connect)?;
            // --detach prints only the id on stdout, for scripts.
            match (a.connect.json, a.detach) {
                (true, _) => {}
                (false, true) => eprintln!("{opening}"),
                (false, false) => println!("{opening}"),
            }
            let mut s = Session::connect(&a.connect).await?;
            let stream = match s.client.deploy(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => return Ok(refused(&status)),
            };
            if a.detach {
                return detach(stream).await;
            }
            s.follow(stream, true).await
        }
        Command::Preflight(a) => {
            let req = proto::PreflightRequest {
                target: Some(proto::Target {
                    project: project(&a.target, &a.connect)?,
                    region: a.target.region(),
                    service: a.service.clone(),
                }),
                service_account: a.service_account.clone().unwrap_or_default(),
                ingress: ingress(a.ingress),
                vpc_egress: egress(a.vpc_egress),
                repository: a.repository.clone().unwrap_or_default(),
                build_service_account: a.build_service_account.clone().unwrap_or_default(),
            };
            if !a.connect.json {
                println!(
                    "{}",
                    opening_line("checking", &a.service, &a.target, &a.connect)?
                );
            }
            let mut s = Session::connect(&a.connect).await?;
            match s.client.preflight(req).await {
                Ok(r) => s.follow(r.into_inner(), false).await,
                Err(status) => Ok(refused(&status)),
            }
        }
        Command::Verify(a) => {
            let req = proto::VerifyRequest {
                url: a.url.clone(),
                health_path: a.path.clone(),
                attempts: a.attempts.unwrap_or(0),
                timeout_ms: a.timeout_ms.unwrap_or(0),
                accepted_statuses: a.statuses.clone(),
                base_delay_ms: 0,
                expect_body: a.expect_body.clone().unwrap_or_default(),
                headers: a.headers.iter().cloned().collect(),
                max_delay_ms: a.max_delay_ms.unwrap_or(0),
            };
            let mut s = Session::connect(&a.connect).await?;
            match s.client.verify(req).await {
                Ok(r) => s.follow(r.into_inner(), false).await,
                Err(status) => Ok(refused(&status)),
            }
        }
        Command::List(a) => list(a).await,
        Command::Dora(a) => dora(a).await,
        Command::Sandbox(SandboxCommand::Faults(a)) => sandbox_faults(a).await,
        Command::Token(TokenCommand::New(a)) => token_new(a),
        Command::Status(a) => {
            let mut client = remote(&a.remote).await?;
            let req = proto::GetDeploymentRequest { id: a.id.clone() };
            match client.get_deployment(req).await {
                Ok(r) => {
                    let d = r.into_inner();
                    let mut out = std::io::stdout().lock();
                    if a.remote.json {
                        writeln!(out, "{}", render::canonical_json(&d))?;
                    } else {
                        render::deployment(&mut out, &d)?;
                    }
                    Ok(0)
                }
                Err(status) => Ok(refused(&status)),
            }
        }
        Command::Watch(a) => {
            let client = remote(&a.remote).await?;
            let mut s = Session {
                client,
                json: a.remote.json,
                detail: render::Detail::Normal,
                _embedded: None,
                _state: None,
                shutdown: CancellationToken::new(),
            };
            let req = proto::WatchDeploymentRequest {
                id: a.id.clone(),
                after_seq: a.after_seq,
            };
            match s.client.watch_deployment(req).await {
                Ok(r) => s.follow(r.into_inner(), false).await,
                Err(status) => Ok(refused(&status)),
            }
        }
        Command::Cancel(a) => {
            let mut client = remote(&a.remote).await?;
            let req = proto::CancelDeploymentRequest { id: a.id.clone() };
            match client.cancel_deployment(req).await {
                Ok(r) => {
                    let d = r.into_inner();
                    if a.remote.json {
                        println!("{}", render::canonical_json(&d));
                    } else {
                        println!(
                            "cancel requested for deployment {} (running on {}); follow it with: deployd watch {}",
                            d.id,
                            if d.owner.is_empty() { "no daemon yet" } else { &d.owner },
                            d.id
                        );
                    }
                    Ok(0)
                }
                Err(status) => Ok(refused(&status)),
            }
        }
    }
}

/// A refused call: its status on stderr, with its reason and each field
/// the request got wrong on a line of its own; exit code 2.
fn refused(s: &tonic::Status) -> i32 {
    use tonic_types::StatusExt;
    let details = s.get_error_details();
    let reason = details
        .error_info()
        .map(|i| format!(" ({})", i.reason))
        .unwrap_or_default();
    match details
        .bad_request()
        .filter(|b| b.field_violations.len() > 1)
    {
        Some(b) => {
            eprintln!(
                "deployd refused the request: {:?}{reason}: {} fields are invalid:",
                s.code(),
                b.field_violations.len()
            );
            for v in &b.field_violations {
                eprintln!("  {}: {}", v.field, v.description);
            }
        }
        None => eprintln!(
            "deployd refused the request: {:?}{reason}: {}",
            s.code(),
            s.message()
        ),
    }
    2
}

async fn remote(r: &Remote) -> anyhow::Result<Client> {
    let url = r
        .server
        .clone()
        .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"));
    client::connect(&url, &r.creds).await
}

/// `deployd token new`: the secret goes to stdout once; only its hash is
/// kept.
/// A fault scenario as JSON, from a YAML or JSON file.
fn read_scenario(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the scenario {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("the scenario {} is not valid JSON", path.display())),
        Some("yaml" | "yml") => serde_yaml_ng::from_str(&text)
            .with_context(|| format!("the scenario {} is not valid YAML", path.display())),
        _ => anyhow::bail!(
            "the scenario {} must end in .yaml, .yml or .json",
            path.display()
        ),
    }
}

async fn sandbox_faults(a: SandboxFaultsArgs) -> anyhow::Result<i32> {
    let doc = read_scenario(&a.file)?;
    let base = url::Url::parse(&a.sandbox_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--sandbox-url {:?} is not an http(s) URL such as http://127.0.0.1:8085",
                a.sandbox_url
            )
        })?;
    let endpoint = base
        .join("/__sandbox/faults")
        .context("building the control endpoint's URL")?;
    let resp = match reqwest::Client::new()
        .post(endpoint.clone())
        .json(&doc)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the sandbox at {base}: {e}; start one with `deployd serve --sandbox`");
            return Ok(2);
        }
    };
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        println!("{body}");
        Ok(0)
    } else {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        eprintln!("error: the sandbox refused the scenario ({status}): {message}");
        Ok(1)
    }
}

fn token_new(a: TokenNewArgs) -> anyhow::Result<i32> {
    crate::api::auth::tokens::valid_principal(&a.principal)
        .map_err(|m| anyhow::anyhow!("the principal {:?}: {m}", a.principal))?;
    let (token, line) = crate::api::auth::tokens::new_token(&a.principal);
    match &a.append_to {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "added a token for {} to {} (the daemon reads it at start)",
                a.principal,
                path.display()
            );
        }
        None => eprintln!("its line for --api-tokens-file:\n{line}"),
    }
    println!("{token}");
    Ok(0)
}

async fn list(a: ListArgs) -> anyhow::Result<i32> {
    let mut client = remote(&a.remote).await?;
    let state = a.state.map(|s| match s {
        StateArg::Running => proto::DeploymentState::Running,
        StateArg::Succeeded => proto::DeploymentState::Succeeded,
        StateArg::Failed => proto::DeploymentState::Failed,
        StateArg::Cancelled => proto::DeploymentState::Cancelled,
    });
    let req = proto::ListDeploymentsRequest {
        project: a.project.clone().unwrap_or_default(),
        region: a.region.clone().unwrap_or_default(),
        service: a.service.clone().unwrap_or_default(),
        state: state.unwrap_or(proto::DeploymentState::Unspecified).into(),
        page_size: a.limit.clamp(1, 1000),
        page_token: String::new(),
    };
    let page = match client.list_deployments(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(refused(&status)),
    };
    let mut out = std::io::stdout().lock();
    for d in &page.deployments {
        if a.remote.json {
            writeln!(out, "{}", render::canonical_json(d))?;
        } else {
            render::deployment_row(&mut out, d)?;
        }
    }
    if page.deployments.is_empty() && !a.remote.json {
        writeln!(out, "no deployments")?;
    }
    Ok(0)
}

async fn dora(a: DoraArgs) -> anyhow::Result<i32> {
    let Some(project) = a.target.project.clone() else {
        eprintln!("error: --project (or {ENV_PROJECT}) is required");
        return Ok(2);
    };
    let mut client = remote(&a.remote).await?;
    let req = proto::GetDeliveryMetricsRequest {
        target: Some(proto::Target {
            project,
            region: a.target.region(),
            service: a.service.clone(),
        }),
        window: Some(canary::proto_duration(a.since)),
    };
    let m = match client.get_delivery_metrics(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(refused(&status)),
    };
    let mut out = std::io::stdout().lock();
    if a.remote.json {
        writeln!(out, "{}", render::canonical_json(&m))?;
    } else {
        render::delivery(&mut out, &m)?;
    }
    Ok(0)
}

/// `deploy --detach`: the id of the deployment, which runs on without us.
async fn detach(mut stream: Events) -> anyhow::Result<i32> {
    match stream.message().await {
        Ok(Some(e)) => {
            println!("{}", e.deployment_id);
            eprintln!(
                "deployment {id} runs in the daemon; follow it with: deployd watch {id}",
                id = e.deployment_id
            );
            Ok(0)
        }
        Ok(None) => {
            eprintln!("the stream ended before the deployment was named");
            Ok(2)
        }
        Err(status) => Ok(refused(&status)),
    }
}

/// Local analysis: the same code the Analyze stage runs.
/// A local source as the daemon must be sent it: absolute and resolved,
/// since it shares no working directory with this command.
fn daemon_path(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::canonicalize(p)
        .with_context(|| format!("source directory {}", p.display()))?
        .display()
        .to_string())
}

/// `deployd analyze --server URL`: the daemon's Analyze RPC.
async fn analyze_remote(a: AnalyzeArgs) -> anyhow::Result<i32> {
    let kind = match (&a.path, &a.git_url) {
        (Some(p), _) => proto::source::Kind::LocalPath(daemon_path(p)?),
        (None, Some(u)) => proto::source::Kind::GitUrl(u.clone()),
        (None, None) => bail!("a source path or --git-url is required"),
    };
    let daemon = Remote {
        server: a.server.clone(),
        json: a.json,
        creds: a.creds.clone(),
    };
    let mut client = remote(&daemon).await?;
    let req = proto::AnalyzeRequest {
        source: Some(proto::Source {
            kind: Some(kind),
            git_ref: a.git_ref.clone().unwrap_or_default(),
            subdirectory: a.subdirectory.clone().unwrap_or_default(),
        }),
    };
    let r = match client.analyze(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(refused(&status)),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", render::canonical_json(&r))?;
    } else if let Some(f) = &r.error {
        drop(out);
        eprintln!("deployd: [{}] {}", f.code, f.message);
        for (i, step) in f.remediation.iter().enumerate() {
            eprintln!("  {}. {step}", i + 1);
        }
    } else if let Some(plan) = &r.plan {
        if !r.source_commit.is_empty() {
            writeln!(out, "source commit {}", r.source_commit)?;
        }
        render::plan(&mut out, plan)?;
    }
    Ok(if r.error.is_some() { 1 } else { 0 })
}

fn analyze(a: AnalyzeArgs) -> anyhow::Result<i32> {
    use crate::analysis::{self as analyze, dockerfile};
    let Some(path) = a.path.clone() else {
        bail!("a source path is required (or --server with --git-url)");
    };
    let path = path.as_path();
    // Said as it is, not as "no supported app found".
    if !path.is_dir() {
        let what = if path.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        eprintln!("deployd: {} {what}", path.display());
        return Ok(1);
    }
    let plan = match analyze::analyze(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("deployd: {e}");
            return Ok(1);
        }
    };
    let generated = dockerfile::render(&plan, path.join(".dockerignore").is_file());
    let text = generated
        .as_ref()
        .and_then(|g| g.dockerfile().map(str::to_string));
    let proto_plan = crate::api::convert::plan(&plan, text.as_deref());
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", render::canonical_json(&proto_plan))?;
    } else {
        render::plan(&mut out, &proto_plan)?;
    }
    Ok(0)
}

async fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    let backend = match (a.sandbox, &a.gcp_endpoint) {
        (true, _) => Backend::EmbeddedSandbox,
        (false, Some(url)) => Backend::Endpoint(url.clone()),
        (false, None) => Backend::Google,
    };
    let mut config = DaemonConfig {
        listen: a.listen,
        metrics_listen: Some(a.metrics_listen),
        auth: a.auth.config(),
        ..a.tuning.daemon_config(backend)
    };
    config.pipeline.sources.local_roots = a.local_source_roots.clone();
    let shutdown = CancellationToken::new();
    // A rehearsal runs the user's app, where this machine can.
    let mut sandbox_config = SandboxConfig {
        run_apps: true,
        ..SandboxConfig::default()
    };
    if let Some(addr) = a.sandbox_listen {
        sandbox_config.listen = addr;
    }
    // Read before anything starts: a bad scenario starts nothing.
    let scenario = a.sandbox_faults.as_deref().map(read_scenario).transpose()?;
    let running = daemon::start(config, sandbox_config, shutdown.clone()).await?;
    if let Some(sb) = &running.sandbox {
        if let Some(doc) = &scenario {
            let applied = sb
                .apply_faults(doc)
                .map_err(|e| anyhow::anyhow!("the sandbox refused the scenario: {e}"))?;
            eprintln!("sandbox faults applied: {applied}");
        }
        eprintln!("sandbox: {} (project {DEFAULT_PROJECT})", sb.base_url());
    }
    eprintln!(
        "deployd: gRPC on {}, metrics on {:?}",
        running.grpc, running.metrics
    );
    let stop = shutdown.clone();
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        // Deployments are not cancelled: they stop at their last recorded
        // step and the next daemon on this store resumes them.
        tracing::info!(
            signal,
            "draining: no new work; running deployments are handed to the next daemon"
        );
        stop.cancel();
    });
    running.done.await.context("daemon task")??;
    Ok(0)
}

type Events = tonic::Streaming<proto::Event>;

/// A client of a daemon: a remote one, or one embedded with its sandbox
/// (and, unless told otherwise, a temporary store) for `--sandbox`.
struct Session {
    client: Client,
    json: bool,
    detail: render::Detail,
    _embedded: Option<daemon::Running>,
    _state: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl Session {
    async fn connect(c: &Connect) -> anyhow::Result<Session> {
        let shutdown = CancellationToken::new();
        let mut embedded = None;
        let mut state = None;
        let url = if c.sandbox {
            let mut config = DaemonConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: None,
                ..c.tuning.daemon_config(Backend::EmbeddedSandbox)
            };
            // The embedded daemon serves this user only: their own files.
            config.pipeline.sources.local_roots = vec![PathBuf::from("/")];
            // A rehearsal keeps no history unless a store is named.
            if config.database_url.is_none() && config.state_dir.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("deployd-sandbox-state")
                    .tempdir()
                    .context("creating a temporary deployment store")?;
                config.state_dir = Some(dir.path().to_path_buf());
                state = Some(dir);
            }
            let scenario = c.sandbox_faults.as_deref().map(read_scenario).transpose()?;
            let sandbox_config = SandboxConfig {
                run_apps: true,
                ..SandboxConfig::default()
            };
            let running = daemon::start(config, sandbox_config, shutdown.clone()).await?;
            if let (Some(doc), Some(sb)) = (&scenario, &running.sandbox) {
                sb.apply_faults(doc)
                    .map_err(|e| anyhow::anyhow!("the sandbox refused the scenario: {e}"))?;
            }
            let url = format!("http://{}", running.grpc);
            embedded = Some(running);
            url
        } else {
            c.server
                .clone()
                .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"))
        };
        let client = client::connect(&url, &c.creds).await?;
        Ok(Session {
            client,
            json: c.json,
            detail: match (c.quiet, c.verbose) {
                (true, _) => render::Detail::Quiet,
                (_, true) => render::Detail::Verbose,
                _ => render::Detail::Normal,
            },
            _embedded: embedded,
            _state: state,
            shutdown,
        })
    }

    /// Renders the stream; exit code 0 only when the outcome says success.
    /// With `cancellable` (a Deploy), ctrl-c asks the daemon to cancel the
    /// deployment and goes on showing it until it ends; a second ctrl-c
    /// stops watching (the deployment goes on).
    async fn follow(&mut self, mut stream: Events, cancellable: bool) -> anyhow::Result<i32> {
        let mut interrupts =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("listening for ctrl-c")?;
        let mut stdout = std::io::stdout().lock();
        let mut success = None;
        let mut id = String::new();
        let mut cancel_sent = false;
        loop {
            let event = tokio::select! {
                m = stream.message() => m,
                _ = interrupts.recv() => {
                    if !cancellable || cancel_sent || id.is_empty() {
                        if !id.is_empty() {
                            eprintln!("stopped watching; deployment {id} goes on: deployd watch {id}");
                        }
                        self.shutdown.cancel();
                        return Ok(130);
                    }
                    match self.client.cancel_deployment(proto::CancelDeploymentRequest { id: id.clone() }).await {
                        Ok(_) => eprintln!("cancel requested for deployment {id}; showing it until it ends (ctrl-c again to stop watching)"),
                        Err(s) => eprintln!("could not cancel deployment {id}: {:?}: {}", s.code(), s.message()),
                    }
                    cancel_sent = true;
                    continue;
                }
            };
            let event = match event {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(status) => {
                    eprintln!(
                        "the stream ended: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                    self.shutdown.cancel();
                    return Ok(2);
                }
            };
            if id.is_empty() {
                id = event.deployment_id.clone();
            }
            if self.json {
                writeln!(stdout, "{}", render::canonical_json(&event))?;
            } else {
                render::human_at(&mut stdout, &event, self.detail)?;
            }
            stdout.flush()?;
            if let Some(proto::event::Kind::Outcome(o)) = &event.kind {
                success = Some(o.success);
            }
        }
        self.shutdown.cancel();
        Ok(match success {
            Some(true) => 0,
            Some(false) => 1,
            None => {
                eprintln!("the stream ended without an outcome");
                2
            }
        })
    }
}
