//! Daemon configuration: plain data, resolved once from flags and `DEPLOYD_*`
//! environment variables (the names below) by the CLI, and built directly
//! by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pipeline::PipelineConfig;

pub const ENV_LISTEN: &str = "DEPLOYD_LISTEN";
pub const ENV_METRICS_LISTEN: &str = "DEPLOYD_METRICS_LISTEN";
/// Routes every Google API to one base URL (an emulator); no credentials.
pub const ENV_GCP_ENDPOINT: &str = "DEPLOYD_GCP_ENDPOINT";
/// First backoff delay of retried builds, preflight calls and health checks.
pub const ENV_RETRY_BASE_DELAY_MS: &str = "DEPLOYD_RETRY_BASE_DELAY_MS";
pub const ENV_POLL_INTERVAL_MS: &str = "DEPLOYD_POLL_INTERVAL_MS";
pub const ENV_WORK_DIR: &str = "DEPLOYD_WORK_DIR";
pub const ENV_CALLER_MEMBER: &str = "DEPLOYD_CALLER_MEMBER";
/// Uncompressed source bytes a deploy may send.
pub const ENV_MAX_SOURCE_BYTES: &str = "DEPLOYD_MAX_SOURCE_BYTES";
/// Archives above this size are uploaded in resumable chunks of this size.
pub const ENV_UPLOAD_CHUNK_BYTES: &str = "DEPLOYD_UPLOAD_CHUNK_BYTES";
/// Service account whose identity tokens probe private services.
pub const ENV_INVOKER_SERVICE_ACCOUNT: &str = "DEPLOYD_INVOKER_SERVICE_ACCOUNT";
/// The metadata server (`host[:port]`), as Google's client libraries read
/// it. With no invoker account, private services are probed with its
/// identity tokens: always on Google, against an endpoint only when set.
pub const ENV_METADATA_HOST: &str = "GCE_METADATA_HOST";
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// PEM bundle of certificate authorities health checks trust besides the
/// system's (services behind a private CA).
pub const ENV_PROBE_CA_FILE: &str = "DEPLOYD_PROBE_CA_FILE";
/// Hosts a Verify caller may have probed, comma-separated (`*.run.app`).
pub const ENV_VERIFY_ALLOWED_HOSTS: &str = "DEPLOYD_VERIFY_ALLOWED_HOSTS";
/// Directories local sources may come from, comma-separated; none: local
/// sources are refused (git URLs only).
pub const ENV_LOCAL_SOURCE_ROOTS: &str = "DEPLOYD_LOCAL_SOURCE_ROOTS";
/// Git hosts reachable on private or loopback addresses and over plain
/// http://, comma-separated.
pub const ENV_SOURCE_PRIVATE_HOSTS: &str = "DEPLOYD_SOURCE_PRIVATE_HOSTS";
/// `true`: ssh:// and scp-style git URLs are accepted.
pub const ENV_SOURCE_ALLOW_SSH: &str = "DEPLOYD_SOURCE_ALLOW_SSH";
/// Deadline of one preflight API call.
pub const ENV_CHECK_TIMEOUT_MS: &str = "DEPLOYD_CHECK_TIMEOUT_MS";
/// The deployment store: `sqlite:///ABSOLUTE/PATH` or `postgres://...`;
/// wins over the state directory.
pub const ENV_DATABASE_URL: &str = "DEPLOYD_DATABASE_URL";
/// Where the default SQLite store lives (`deployd.db` in it).
pub const ENV_STATE_DIR: &str = "DEPLOYD_STATE_DIR";
/// This daemon's name in deployment leases (default `host:port`).
pub const ENV_DAEMON_ID: &str = "DEPLOYD_DAEMON_ID";
/// Seconds a deployment's lease lasts without a heartbeat.
pub const ENV_LEASE_SECONDS: &str = "DEPLOYD_LEASE_SECONDS";
/// Days ended deployments are kept.
pub const ENV_HISTORY_DAYS: &str = "DEPLOYD_HISTORY_DAYS";
pub const ENV_TLS_CERT: &str = "DEPLOYD_TLS_CERT";
pub const ENV_TLS_KEY: &str = "DEPLOYD_TLS_KEY";
pub const ENV_CLIENT_CA: &str = "DEPLOYD_CLIENT_CA";
pub const ENV_OIDC_JWKS_URL: &str = "DEPLOYD_OIDC_JWKS_URL";
pub const ENV_OIDC_JWKS_FILE: &str = "DEPLOYD_OIDC_JWKS_FILE";
pub const ENV_OIDC_ISSUER: &str = "DEPLOYD_OIDC_ISSUER";
pub const ENV_OIDC_AUDIENCE: &str = "DEPLOYD_OIDC_AUDIENCE";
pub const ENV_API_TOKENS_FILE: &str = "DEPLOYD_API_TOKENS_FILE";
pub const ENV_POLICY: &str = "DEPLOYD_POLICY";
/// Hosts a Verify may reach on private or loopback addresses.
pub const ENV_VERIFY_PRIVATE_HOSTS: &str = "DEPLOYD_VERIFY_PRIVATE_HOSTS";
pub const ENV_PROMETHEUS_HOSTS: &str = "DEPLOYD_PROMETHEUS_HOSTS";
pub const ENV_CANARY_TIME_SCALE: &str = "DEPLOYD_CANARY_TIME_SCALE";
/// The bearer token client commands send.
pub const ENV_TOKEN: &str = "DEPLOYD_TOKEN";
pub const ENV_SERVER: &str = "DEPLOYD_SERVER";
pub const ENV_PROJECT: &str = "DEPLOYD_PROJECT";
pub const ENV_REGION: &str = "DEPLOYD_REGION";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Which Google the daemon talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// googleapis.com with Application Default Credentials.
    Google,
    /// Every API at this base URL, no credentials.
    Endpoint(String),
    /// An embedded sandbox started with the daemon.
    EmbeddedSandbox,
}

/// The daemon's own settings, and the pipeline's as one value.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    /// `None` disables the metrics endpoint (and the recorder).
    pub metrics_listen: Option<SocketAddr>,
    pub backend: Backend,
    /// Uploads larger than this go in resumable chunks of this size.
    pub upload_chunk_bytes: usize,
    /// Identity used to probe private services.
    pub invoker_service_account: Option<String>,
    /// Metadata server (`host[:port]`) for identity tokens when there is no
    /// invoker account; `None`: the default on Google, none elsewhere.
    pub metadata_host: Option<String>,
    /// CA bundle (PEM) health checks trust besides the system's roots.
    pub probe_ca_file: Option<PathBuf>,
    /// How long shutdown waits for running deploys to wind down.
    pub shutdown_grace: Duration,
    /// The store; `None`: SQLite in `state_dir`.
    pub database_url: Option<String>,
    /// `None`: the XDG state directory (`crate::store::default_state_dir`).
    pub state_dir: Option<PathBuf>,
    /// This daemon's lease name; `None`: `host:port`.
    pub daemon_id: Option<String>,
    pub lease: Duration,
    pub history_retention: Duration,
    /// TLS, authentication and policy of the gRPC API.
    pub auth: AuthConfig,
    /// TCP_NODELAY on accepted gRPC sockets. Off only to measure what
    /// Nagle costs (benches/rpc_latency.rs).
    pub tcp_nodelay: bool,
    pub pipeline: PipelineConfig,
}

/// Who may call the daemon, and over what. Files are read at start.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// PEM certificate chain and key: gRPC over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
    pub oidc: Option<crate::api::auth::oidc::OidcConfig>,
    /// `sha256:HEX PRINCIPAL` lines.
    pub api_tokens_file: Option<PathBuf>,
    /// YAML or TOML rules; with authentication and no policy, nothing is
    /// allowed.
    pub policy_file: Option<PathBuf>,
    /// Serve a non-loopback address without authentication.
    pub insecure_allow_unauthenticated: bool,
}

impl DaemonConfig {
    /// The store the daemon opens: the URL, else SQLite in the state dir.
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => crate::store::sqlite_url_in(
                &self
                    .state_dir
                    .clone()
                    .unwrap_or_else(crate::store::default_state_dir),
            ),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            backend: Backend::Google,
            upload_chunk_bytes: crate::gcp::storage::DEFAULT_CHUNK_BYTES,
            invoker_service_account: None,
            metadata_host: None,
            probe_ca_file: None,
            shutdown_grace: Duration::from_secs(30),
            database_url: None,
            state_dir: None,
            daemon_id: None,
            lease: Duration::from_secs(30),
            history_retention: Duration::from_secs(90 * 24 * 3600),
            auth: AuthConfig::default(),
            tcp_nodelay: true,
            pipeline: PipelineConfig::default(),
        }
    }
}
