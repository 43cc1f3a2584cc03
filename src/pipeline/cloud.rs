//! The narrow interfaces the pipeline needs from the outside world: Google's
//! APIs ([`Cloud`]) and an HTTP prober ([`Prober`]). `crate::gcp` implements
//! `Cloud` against googleapis.com (or the sandbox); `crate::probe` implements
//! `Prober`. Types here are in domain terms, not wire shapes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::archive::Blob;
use super::error::CloudError;
use super::model::{RuntimeSettings, Target};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectState {
    Active,
    DeleteRequested,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub project_id: String,
    pub number: String,
    pub state: ProjectState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub email: String,
    pub disabled: bool,
}

/// An effective list-constraint policy, reduced to what deployd decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListPolicy {
    AllowAll,
    DenyAll,
    /// Allowed values, with any `is:` prefix removed.
    Allowed(Vec<String>),
    /// Denied values, with any `is:` prefix removed.
    Denied(Vec<String>),
}

impl ListPolicy {
    pub fn allows(&self, value: &str) -> bool {
        match self {
            ListPolicy::AllowAll => true,
            ListPolicy::DenyAll => false,
            ListPolicy::Allowed(v) => v.iter().any(|a| a == value),
            ListPolicy::Denied(v) => !v.iter().any(|d| d == value),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// e.g. "DOCKER".
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub name: String,
    pub project_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub generation: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStep {
    pub id: String,
    pub name: String,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
    pub wait_for: Vec<String>,
}

/// A Cloud Build request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub source_bucket: String,
    pub source_object: String,
    pub source_generation: String,
    pub steps: Vec<BuildStep>,
    pub images: Vec<String>,
    pub timeout: Duration,
    pub machine_type: String,
    /// `gs://bucket/prefix`; the log is `prefix/log-{id}.txt` in it.
    pub logs_bucket: String,
    pub tags: Vec<String>,
    /// Service account email the build runs as.
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    Pending,
    Queued,
    Working,
    Success,
    Failure,
    InternalError,
    Timeout,
    Cancelled,
    Expired,
    Unknown,
}

impl BuildStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            BuildStatus::Pending
                | BuildStatus::Queued
                | BuildStatus::Working
                | BuildStatus::Unknown
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub id: String,
    pub status: BuildStatus,
    pub status_name: String,
    pub status_detail: String,
    /// `failureInfo.type`, e.g. "USER_BUILD_STEP".
    pub failure_type: Option<String>,
    pub log_url: String,
    pub logs_bucket: String,
    /// Pushed images and their digests ("sha256:...").
    pub images: Vec<(String, String)>,
    /// Ids of the steps whose status is FAILURE.
    pub failed_steps: Vec<String>,
    pub tags: Vec<String>,
    /// From creation to the end, once ended.
    pub took: Option<Duration>,
}

/// What a Cloud Run service should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub target: Target,
    pub image: String,
    pub runtime: RuntimeSettings,
    pub labels: BTreeMap<String, String>,
    /// A name of our choosing for the new revision (needed to route traffic
    /// to it before it exists); Cloud Run names it when `None`.
    pub revision_name: Option<String>,
    /// Traffic after the rollout; empty means 100% to the latest revision.
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficTarget {
    /// Short revision name; `None` means "latest ready revision".
    pub revision: Option<String>,
    pub percent: u32,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunService {
    pub name: String,
    pub uri: String,
    pub urls: Vec<String>,
    /// Short names (the part after `/revisions/`).
    pub latest_ready_revision: Option<String>,
    pub latest_created_revision: Option<String>,
    pub traffic: Vec<TrafficTarget>,
    pub ready: bool,
    pub ready_message: Option<String>,
    /// Why it is not ready, as Cloud Run's condition says (a CommonReason
    /// such as CONTAINER_MISSING, or a revision reason).
    pub ready_reason: Option<String>,
    /// A rollout is still in progress: `ready` is not final yet.
    pub reconciling: bool,
    pub image: Option<String>,
    /// URLs of tagged traffic targets: (tag, uri).
    pub tag_urls: Vec<(String, String)>,
    /// Messages of the service's informational conditions (neither Ready
    /// nor its two parts), worth showing to whoever deploys: on the
    /// sandbox, whether the revision runs the app or a stand-in.
    pub notices: Vec<String>,
}

impl RunService {
    /// The revision serving 100% of traffic, whether pinned or as LATEST.
    pub fn serving_revision(&self) -> Option<String> {
        let full = self.traffic.iter().find(|t| t.percent == 100)?;
        full.revision
            .clone()
            .or_else(|| self.latest_ready_revision.clone())
    }
}

/// How a create or update of a Cloud Run service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Ready(RunService),
    /// The operation failed: usually the new revision could not start.
    Failed {
        message: String,
        service: Option<RunService>,
    },
}

/// `CloudError::reason` of [`Cloud::id_token`] when the daemon has no
/// identity to mint tokens with (a setup problem, not an API answer).
pub const NO_PROBE_IDENTITY: &str = "NO_PROBE_IDENTITY";

/// Google's APIs, as the pipeline uses them. Every method is one logical
/// step; the implementation makes the REST calls and waits for long-running
/// operations.
#[async_trait]
pub trait Cloud: Send + Sync + 'static {
    // Resource Manager
    async fn project(&self, project: &str) -> Result<Project, CloudError>;
    /// The subset of `permissions` the caller holds on the project.
    async fn test_project_permissions(
        &self,
        project: &str,
        permissions: &[&str],
    ) -> Result<Vec<String>, CloudError>;

    // Service Usage
    /// For each service name, whether it is ENABLED.
    async fn services_enabled(
        &self,
        project: &str,
        services: &[&str],
    ) -> Result<Vec<(String, bool)>, CloudError>;

    // IAM
    async fn service_account(
        &self,
        project: &str,
        email: &str,
    ) -> Result<Option<ServiceAccount>, CloudError>;
    async fn can_act_as(&self, project: &str, email: &str) -> Result<bool, CloudError>;

    // Org Policy
    async fn effective_list_policy(
        &self,
        project: &str,
        constraint: &str,
    ) -> Result<ListPolicy, CloudError>;

    // Artifact Registry
    async fn repository(
        &self,
        project: &str,
        region: &str,
        repository: &str,
    ) -> Result<Option<Repository>, CloudError>;
    /// Creates a Docker repository and waits for the operation.
    async fn create_repository(
        &self,
        project: &str,
        region: &str,
        repository: &str,
    ) -> Result<(), CloudError>;

    // Cloud Storage
    async fn bucket(&self, bucket: &str) -> Result<Option<Bucket>, CloudError>;
    async fn create_bucket(
        &self,
        project: &str,
        region: &str,
        bucket: &str,
    ) -> Result<(), CloudError>;
    async fn object(&self, bucket: &str, object: &str) -> Result<Option<StoredObject>, CloudError>;
    /// Uploads `data` (read from its file as it is sent, so a large
    /// archive is never held in memory).
    async fn upload_object(
        &self,
        bucket: &str,
        object: &str,
        data: &Blob,
    ) -> Result<StoredObject, CloudError>;
    /// Bytes of an object from `offset` on: `None` when the object does not
    /// exist yet, empty when nothing is new.
    async fn read_object_from(
        &self,
        bucket: &str,
        object: &str,
        offset: u64,
    ) -> Result<Option<Bytes>, CloudError>;

    // Cloud Build
    /// The service account a build that names none runs as (the email);
    /// `None` when the project has no default and every build must name one.
    async fn default_build_service_account(
        &self,
        project: &str,
    ) -> Result<Option<String>, CloudError>;
    async fn create_build(&self, project: &str, spec: &BuildSpec) -> Result<BuildInfo, CloudError>;
    async fn get_build(&self, project: &str, id: &str) -> Result<BuildInfo, CloudError>;
    /// Builds carrying `tag`, newest first.
    async fn find_builds(&self, project: &str, tag: &str) -> Result<Vec<BuildInfo>, CloudError>;
    async fn cancel_build(&self, project: &str, id: &str) -> Result<(), CloudError>;

    // Cloud Run
    async fn run_service(&self, target: &Target) -> Result<Option<RunService>, CloudError>;
    /// Creates or replaces the service and waits for the rollout.
    async fn deploy_service(&self, spec: &ServiceSpec, exists: bool)
        -> Result<Rollout, CloudError>;
    /// Asks Cloud Run whether it would accept `spec` (`validateOnly`):
    /// nothing is created or changed. An invalid spec is INVALID_ARGUMENT.
    async fn validate_service(&self, spec: &ServiceSpec, exists: bool) -> Result<(), CloudError>;
    /// Grants or revokes roles/run.invoker for allUsers.
    async fn set_public_invoker(&self, target: &Target, public: bool) -> Result<(), CloudError>;
    /// Changes only the traffic split (no new revision) and waits for it.
    async fn set_traffic(
        &self,
        target: &Target,
        traffic: &[TrafficTarget],
    ) -> Result<Rollout, CloudError>;

    // Identity
    /// A Google-signed identity token whose audience is `audience`, for
    /// probing services that refuse unauthenticated requests.
    async fn id_token(&self, audience: &str) -> Result<String, CloudError>;

    // Cloud Monitoring
    /// The requests `revision` served between `start` and `end`, as Cloud
    /// Monitoring counted them (`run.googleapis.com/request_count` and
    /// `request_latencies`).
    async fn revision_requests(
        &self,
        target: &Target,
        revision: &str,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
    ) -> Result<RevisionRequests, CloudError>;

    // Cloud Logging
    /// The newest `limit` lines `revision`'s containers logged since
    /// `since`, oldest first.
    async fn revision_logs(
        &self,
        target: &Target,
        revision: &str,
        since: std::time::SystemTime,
        limit: u32,
    ) -> Result<Vec<LogLine>, CloudError>;
    /// Where a person reads those logs (Logs Explorer, the filter filled in).
    fn logs_link(&self, target: &Target, revision: &str, since: std::time::SystemTime) -> String;
}

/// One line a revision's container logged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogLine {
    pub time: String,
    /// DEFAULT, INFO, ERROR...
    pub severity: String,
    /// stdout, stderr, requests, varlog/system...
    pub stream: String,
    pub text: String,
}

/// What users' requests to one revision looked like over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionRequests {
    /// Requests by response class: "2xx", "3xx", "4xx", "5xx".
    pub by_class: BTreeMap<String, u64>,
    /// Their latency histogram in ms: `latency_bounds_ms[i]` is the upper
    /// bound of bucket `i` (bucket 0 starts at 0, the last has no end).
    pub latency_bounds_ms: Vec<f64>,
    pub latency_counts: Vec<u64>,
}

impl RevisionRequests {
    pub fn total(&self) -> u64 {
        self.by_class.values().sum()
    }
}

/// PromQL instant queries against a Prometheus HTTP API.
#[async_trait]
pub trait PromQl: Send + Sync + 'static {
    /// The one number `query` evaluates to now; `None` when it returned no
    /// series. An error says why there is no answer (unreachable, a bad
    /// query, several series).
    async fn instant(&self, base_url: &str, query: &str) -> Result<Option<f64>, String>;
}

/// Why a probe got no acceptable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProbeErrorClass {
    Dns,
    Connect,
    Tls,
    Timeout,
    HttpStatus,
    BodyMismatch,
    /// A redirect to another host, not followed.
    Redirect,
    /// The URL's host now resolves to an address the policy refuses: not
    /// probed.
    Refused,
    Other,
}

impl ProbeErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeErrorClass::Dns => "dns",
            ProbeErrorClass::Connect => "connect",
            ProbeErrorClass::Tls => "tls",
            ProbeErrorClass::Timeout => "timeout",
            ProbeErrorClass::HttpStatus => "http_status",
            ProbeErrorClass::BodyMismatch => "body_mismatch",
            ProbeErrorClass::Redirect => "redirect",
            ProbeErrorClass::Refused => "refused",
            ProbeErrorClass::Other => "other",
        }
    }
}

/// One probe to send.
#[derive(Debug, Clone, Default)]
pub struct ProbeRequest<'a> {
    pub url: &'a str,
    pub timeout: Duration,
    pub expect_body: Option<&'a str>,
    pub headers: Vec<(String, String)>,
    /// Connect only to these addresses (the ones the URL policy approved),
    /// so a second DNS answer cannot point the probe elsewhere.
    pub pinned: Option<&'a [std::net::SocketAddr]>,
}

/// One HTTP request's result, as the prober saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResponse {
    pub status: Option<u16>,
    /// Time to response headers.
    pub headers_after: Duration,
    /// Time to the full body.
    pub body_after: Duration,
    pub body_contains_expected: bool,
    pub error: Option<(ProbeErrorClass, String)>,
    /// The URL that answered, after same-host redirects.
    pub final_url: String,
}

#[async_trait]
pub trait Prober: Send + Sync + 'static {
    async fn probe(&self, req: &ProbeRequest<'_>) -> ProbeResponse;
    /// The addresses a host name resolves to.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>>;
}
