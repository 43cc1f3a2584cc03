//! The pipeline's error types: what a cloud call can answer, and how a stage
//! fails. Every stage error becomes exactly one [`Failure`] in the outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use super::event::Failure;

/// Canonical error codes (google.rpc.Code), the structured part of every
/// Google API error and the basis of retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn from_name(name: &str) -> Option<Code> {
        Some(match name {
            "CANCELLED" => Code::Cancelled,
            "UNKNOWN" => Code::Unknown,
            "INVALID_ARGUMENT" => Code::InvalidArgument,
            "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
            "NOT_FOUND" => Code::NotFound,
            "ALREADY_EXISTS" => Code::AlreadyExists,
            "PERMISSION_DENIED" => Code::PermissionDenied,
            "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
            "FAILED_PRECONDITION" => Code::FailedPrecondition,
            "ABORTED" => Code::Aborted,
            "OUT_OF_RANGE" => Code::OutOfRange,
            "UNIMPLEMENTED" => Code::Unimplemented,
            "INTERNAL" => Code::Internal,
            "UNAVAILABLE" => Code::Unavailable,
            "DATA_LOSS" => Code::DataLoss,
            "UNAUTHENTICATED" => Code::Unauthenticated,
            _ => return None,
        })
    }

    /// From the gRPC code number carried in `Operation.error.code`.
    pub fn from_number(n: i64) -> Code {
        match n {
            1 => Code::Cancelled,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// For error bodies without a `status` (the Cloud Storage JSON API).
    pub fn from_http(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            408 => Code::DeadlineExceeded,
            409 => Code::Aborted,
            412 => Code::FailedPrecondition,
            416 => Code::OutOfRange,
            429 => Code::ResourceExhausted,
            499 => Code::Cancelled,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            500..=599 => Code::Internal,
            _ => Code::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A failed call to a Google API, in the terms the pipeline decides on.
/// The client layer fills it from the decoded google.rpc.Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{call}: {} {message}", code.name())]
pub struct CloudError {
    /// The API method, e.g. `cloudbuild.projects.locations.builds.create`.
    pub call: &'static str,
    pub code: Code,
    /// HTTP status when the error came over HTTP; `None` for transport
    /// failures and failed long-running operations.
    pub http_status: Option<u16>,
    /// `google.rpc.ErrorInfo.reason`, e.g. `SERVICE_DISABLED`.
    pub reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub message: String,
    /// `google.rpc.RetryInfo.retryDelay` when the API sent one.
    pub retry_delay: Option<Duration>,
    /// The request never got an HTTP answer (connect, reset, timeout).
    pub transport: bool,
}

impl CloudError {
    pub fn new(call: &'static str, code: Code, message: impl Into<String>) -> Self {
        Self {
            call,
            code,
            http_status: None,
            reason: None,
            metadata: BTreeMap::new(),
            message: message.into(),
            retry_delay: None,
            transport: false,
        }
    }

    pub fn is(&self, code: Code) -> bool {
        self.code == code
    }
}

/// `Failure.code`: a stable contract, documented (with the same words) on
/// `Failure.code` in the proto and listed in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCode {
    /// The source path or git repository could not be read.
    SourceUnavailable,
    /// The source is outside what the daemon allows.
    SourceNotAllowed,
    /// No app deployd can build was recognised.
    UnsupportedSource,
    /// The app was recognised but has no start command.
    NoStartCommand,
    /// A file or value of the source is refused (escaping symlink, unsafe name).
    UnsafeSource,
    /// The source is over the daemon's upload limit.
    SourceTooLarge,
    /// The source could not be packed.
    ArchiveFailed,
    /// The daemon ran out of file descriptors (retriable).
    DaemonResourcesExhausted,
    /// A preflight check failed; the checks say which and how to fix it.
    PreflightFailed,
    /// A Google API call failed after its retries.
    CloudApiError,
    /// Cloud Build ended the build unsuccessfully.
    BuildFailed,
    /// The build ran past its timeout and was cancelled.
    BuildTimeout,
    /// Cloud Run could not make the revision ready (it did not start or listen on $PORT).
    RevisionNotReady,
    /// The revision did not answer its health check.
    Unhealthy,
    /// The health check of a private service was refused (401/403).
    InvokerDenied,
    /// A private service cannot be probed: the daemon has no identity.
    NoProbeIdentity,
    /// The canary's analysis failed and the rollout was stopped.
    CanaryAborted,
    /// The run was cancelled (never counted as a failure).
    Cancelled,
    /// The daemon could not record the deployment's progress.
    StoreUnavailable,
    /// A deployment whose daemon died could not be resumed.
    ResumeImpossible,
}

impl FailureCode {
    pub const ALL: &'static [FailureCode] = &[
        FailureCode::SourceUnavailable,
        FailureCode::SourceNotAllowed,
        FailureCode::UnsupportedSource,
        FailureCode::NoStartCommand,
        FailureCode::UnsafeSource,
        FailureCode::SourceTooLarge,
        FailureCode::ArchiveFailed,
        FailureCode::DaemonResourcesExhausted,
        FailureCode::PreflightFailed,
        FailureCode::CloudApiError,
        FailureCode::BuildFailed,
        FailureCode::BuildTimeout,
        FailureCode::RevisionNotReady,
        FailureCode::Unhealthy,
        FailureCode::InvokerDenied,
        FailureCode::NoProbeIdentity,
        FailureCode::CanaryAborted,
        FailureCode::Cancelled,
        FailureCode::StoreUnavailable,
        FailureCode::ResumeImpossible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::SourceUnavailable => "SOURCE_UNAVAILABLE",
            FailureCode::SourceNotAllowed => "SOURCE_NOT_ALLOWED",
            FailureCode::UnsupportedSource => "UNSUPPORTED_SOURCE",
            FailureCode::NoStartCommand => "NO_START_COMMAND",
            FailureCode::UnsafeSource => "UNSAFE_SOURCE",
            FailureCode::SourceTooLarge => "SOURCE_TOO_LARGE",
            FailureCode::ArchiveFailed => "ARCHIVE_FAILED",
            FailureCode::DaemonResourcesExhausted => "DAEMON_RESOURCES_EXHAUSTED",
            FailureCode::PreflightFailed => "PREFLIGHT_FAILED",
            FailureCode::CloudApiError => "CLOUD_API_ERROR",
            FailureCode::BuildFailed => "BUILD_FAILED",
            FailureCode::BuildTimeout => "BUILD_TIMEOUT",
            FailureCode::RevisionNotReady => "REVISION_NOT_READY",
            FailureCode::Unhealthy => "UNHEALTHY",
            FailureCode::InvokerDenied => "INVOKER_DENIED",
            FailureCode::NoProbeIdentity => "NO_PROBE_IDENTITY",
            FailureCode::CanaryAborted => "CANARY_ABORTED",
            FailureCode::Cancelled => "CANCELLED",
            FailureCode::StoreUnavailable => "STORE_UNAVAILABLE",
            FailureCode::ResumeImpossible => "RESUME_IMPOSSIBLE",
        }
    }
}

/// How a stage failed. Each variant carries what a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("source {location} is not usable: {reason}")]
    Source { location: String, reason: String },

    #[error("source {location} is not allowed: {reason}")]
    SourceNotAllowed { location: String, reason: String },

    #[error("could not analyze the source in {dir}")]
    Analyze {
        dir: String,
        #[source]
        source: crate::analysis::AnalyzeError,
    },

    #[error("could not pack the source in {dir}")]
    Archive {
        dir: String,
        #[source]
        source: super::archive::ArchiveError,
    },

    #[error("{failed} of {total} preflight checks did not pass: {names}{skipped}")]
    PreflightFailed {
        failed: usize,
        total: usize,
        /// "; N skipped until it passes", or nothing.
        skipped: String,
        names: String,
        inconclusive_only: bool,
        remediation: Vec<String>,
    },

    #[error("{what} failed after {attempts} attempt(s)")]
    Cloud {
        what: String,
        attempts: u32,
        #[source]
        source: CloudError,
    },

    #[error("build {build_id} ended {status}: {detail}")]
    BuildFailed {
        build_id: String,
        status: String,
        detail: String,
        log_tail: Vec<String>,
        log_url: String,
        retriable: bool,
        attempts: u32,
    },

    #[error("build {build_id} did not finish within {timeout:?}; it was cancelled")]
    BuildTimedOut {
        build_id: String,
        timeout: Duration,
        log_url: String,
    },

    #[error("revision {revision} of {service} did not become ready: {message}")]
    RevisionNotReady {
        service: String,
        revision: String,
        message: String,
        /// Cloud Run's reason, when its condition gave one.
        reason: Option<String>,
    },

    #[error("{url} was not healthy after {attempts} attempt(s): {last_error}")]
    Unhealthy {
        url: String,
        attempts: u32,
        last_error: String,
    },

    #[error("cannot probe the private service {service}: {reason}")]
    NoProbeIdentity { service: String, reason: String },

    #[error("the canary was aborted at step {step} of {steps} ({percent}% of traffic on {revision}): {reason}")]
    CanaryAborted {
        revision: String,
        step: u32,
        steps: u32,
        percent: u32,
        reason: String,
    },

    #[error("cancelled before {stage} finished")]
    Cancelled { stage: &'static str },

    /// Progress could not be recorded, so the run stops before it changes
    /// anything it could not find again after a crash.
    #[error("could not record the deployment's progress")]
    Journal(#[source] super::event::JournalError),
}

impl StageError {
    /// The outcome's failure: a stable code, a message that names what
    /// failed, whether trying again may help, and what to do.
    pub fn to_failure(&self, project: &str) -> Failure {
        let message = error_chain(self);
        let (code, retriable, remediation): (FailureCode, bool, Vec<String>) = match self {
            StageError::Source { .. } => (FailureCode::SourceUnavailable, false, vec![
                "Check that the path exists and is readable by the daemon, or that the git URL and ref are right.".into(),
            ]),
            StageError::SourceNotAllowed { .. } => (FailureCode::SourceNotAllowed, false, vec![
                "Deploy from a git URL, or from a path under a root the daemon allows (deployd serve --local-source-root DIR).".into(),
            ]),
            StageError::Analyze { source, .. } => {
                use crate::analysis::AnalyzeError as A;
                match source {
                    A::UnsafeValue { .. } => (FailureCode::UnsafeSource, false, vec![
                        "Rename the value so it uses only letters, digits and ._/-:@, or add your own Dockerfile.".into(),
                    ]),
                    A::NotRecognized { .. } => (FailureCode::UnsupportedSource, false, vec![
                        "Add a Dockerfile, or a Procfile with a 'web:' line, at the root of the source (or point source.subdirectory at the app).".into(),
                    ]),
                    A::NoSuchDirectory { .. } => (FailureCode::SourceUnavailable, false, vec![
                        "Check source.subdirectory: it must name a directory of the source.".into(),
                    ]),
                    A::NoStart { .. } => (FailureCode::NoStartCommand, false, vec![
                        "Add a start script to package.json (scripts.start), a Procfile with a 'web:' line, or your own Dockerfile.".into(),
                    ]),
                    A::Io { source: e, .. } if out_of_descriptors(e) => daemon_out_of_descriptors(),
                    A::Io { .. } => (FailureCode::SourceUnavailable, false, vec![
                        "Check that every file under the source directory is readable.".into(),
                    ]),
                }
            }
            StageError::Archive { source, .. } => {
                use super::archive::ArchiveError as A;
                match source {
                    A::TooLarge { .. } => (FailureCode::SourceTooLarge, false, vec![
                        "Leave build output, dependencies and data out of the upload with a .gcloudignore (gitignore syntax; '#!include:.gitignore' reuses your .gitignore).".into(),
                        "Or raise the limit with DEPLOYD_MAX_SOURCE_BYTES.".into(),
                    ]),
                    A::SymlinkEscape { .. } | A::SpecialFile { .. } | A::PathEscape { .. } => (FailureCode::UnsafeSource, false, vec![
                        "Remove the file from the source tree, or list it in .gcloudignore.".into(),
                    ]),
                    A::BadPattern { .. } | A::BadDockerignore { .. } => (FailureCode::ArchiveFailed, false, vec![
                        "Fix the pattern in the ignore file.".into(),
                    ]),
                    A::IgnoreFileTooLarge { .. } => (FailureCode::ArchiveFailed, false, vec![
                        "Shorten the ignore file: directory patterns (build/, node_modules/) cover many files in one line.".into(),
                    ]),
                    A::BadInclude { .. } => (FailureCode::UnsafeSource, false, vec![
                        "Include only files of the source tree, by a relative path without '..' (#!include:.gitignore).".into(),
                    ]),
                    A::Io { source: e, .. } if out_of_descriptors(e) => daemon_out_of_descriptors(),
                    A::Io { .. } => (FailureCode::ArchiveFailed, false, vec![
                        "Check that every file under the source directory is readable.".into(),
                    ]),
                }
            }
            StageError::PreflightFailed { remediation, inconclusive_only, .. } => {
                (FailureCode::PreflightFailed, *inconclusive_only, remediation.clone())
            }
            StageError::Cloud { source, .. } => {
                let retriable = super::retry::classify_cloud(source).is_retriable();
                (FailureCode::CloudApiError, retriable, cloud_remediation(source, project))
            }
            StageError::BuildFailed { retriable, log_url, attempts, .. } => {
                let mut r = Vec::new();
                if *retriable {
                    r.push(format!("The build failed {attempts} time(s) for a reason on Google's side; wait a few minutes and deploy again."));
                } else {
                    r.push("Fix the failing build step (its last log lines are above) and deploy again.".into());
                }
                if !log_url.is_empty() {
                    r.push(format!("Full build log: {log_url}"));
                }
                (FailureCode::BuildFailed, *retriable, r)
            }
            StageError::BuildTimedOut { log_url, .. } => (FailureCode::BuildTimeout, true, vec![
                "Raise the build timeout (build.timeout_seconds) if the build is legitimately slow.".into(),
                format!("Full build log: {log_url}"),
            ]),
            // Cloud Run could not pull the image: no container ran.
            StageError::RevisionNotReady { reason: Some(r), .. } if matches!(r.as_str(), "CONTAINER_MISSING" | "CONTAINER_PERMISSION_DENIED" | "CONTAINER_IMAGE_UNAUTHORIZED" | "CONTAINER_IMAGE_AUTHORIZATION_CHECK_FAILED") => (FailureCode::RevisionNotReady, false, vec![
                "Cloud Run could not pull the image: check that it exists (gcloud artifacts docker images list, or the registry's own listing) and that the Cloud Run service agent may read it.".into(),
                format!("An image in another project's registry needs roles/artifactregistry.reader there for this project's Cloud Run service agent (shown with Google-provided grants at https://console.cloud.google.com/iam-admin/iam?project={project})."),
            ]),
            StageError::RevisionNotReady { .. } => (FailureCode::RevisionNotReady, false, vec![
                "Make sure the container listens on $PORT (8080 by default) and starts within the startup timeout.".into(),
                format!("Revision logs: https://console.cloud.google.com/run?project={project}"),
            ]),
            StageError::Unhealthy { .. } => (FailureCode::Unhealthy, false, vec![
                "The new revision does not answer its health check: see what it logged, fix it and deploy again.".into(),
            ]),
            StageError::NoProbeIdentity { .. } => (FailureCode::NoProbeIdentity, false, vec![
                "Give the daemon an identity: DEPLOYD_INVOKER_SERVICE_ACCOUNT (--invoker-service-account) naming an account with roles/run.invoker that the daemon may mint tokens for (roles/iam.serviceAccountTokenCreator), or run it on Google Cloud, where the metadata server provides one (GCE_METADATA_HOST elsewhere).".into(),
                "Or make the service public, if it is meant to be (allow_unauthenticated).".into(),
            ]),
            StageError::CanaryAborted { .. } => (FailureCode::CanaryAborted, false, vec![
                "The candidate served worse than its limits allow (see the canary step results and their measurements); fix it and deploy again.".into(),
                "If the limits are too strict for this service, loosen them in the request's analysis settings.".into(),
            ]),
            StageError::Cancelled { .. } => (FailureCode::Cancelled, true, vec![
                "Nothing is left running (a build in progress was cancelled); deploy again when ready.".into(),
            ]),
            StageError::Journal(_) => (FailureCode::StoreUnavailable, true, vec![
                "The daemon could not write to its deployment store (--database-url / --state-dir): check the database or disk, then deploy again.".into(),
            ]),
        };
        Failure {
            code: code.as_str().into(),
            message,
            retriable,
            remediation,
        }
    }
}

/// Concrete next steps for an API error, from its structured details.
pub fn cloud_remediation(e: &CloudError, project: &str) -> Vec<String> {
    match (e.code, e.reason.as_deref()) {
        (_, Some("SERVICE_DISABLED")) => {
            let service = e.metadata.get("service").cloned().unwrap_or_default();
            vec![
                format!(
                    "gcloud services enable {} --project={}",
                    super::shell::quote(&service),
                    super::shell::quote(project)
                ),
                format!("https://console.cloud.google.com/apis/library/{service}?project={project}"),
            ]
        }
        (Code::PermissionDenied, _) => {
            let permission = e
                .metadata
                .get("permission")
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            vec![format!(
                "Grant the caller the missing permission{permission} on project {project}: https://console.cloud.google.com/iam-admin/iam?project={project}"
            )]
        }
        (Code::ResourceExhausted, _) => vec![
            "Wait a few minutes and deploy again.".into(),
            format!("Request a quota increase: https://console.cloud.google.com/iam-admin/quotas?project={project}"),
            "Deploy to another project.".into(),
        ],
        (Code::Unavailable | Code::Internal | Code::DeadlineExceeded, _) => {
            vec!["Google's API was unavailable; deploy again in a few minutes.".into()]
        }
        // The API's own message (in the failure) names what to fix; the
        // project's logs hold the refused call.
        _ => vec![format!(
            "Fix what {} reports above, then deploy again; the call is in the project's logs: https://console.cloud.google.com/logs/query?project={project}",
            e.call
        )],
    }
}

/// `Display` of an error and its sources, joined: each layer adds context
/// without repeating its source in its own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// EMFILE or ENFILE: the daemon (or the machine) has no file descriptor
/// left. That is the daemon's resource problem, not the source's.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| {
        n == rustix::io::Errno::MFILE.raw_os_error() || n == rustix::io::Errno::NFILE.raw_os_error()
    })
}

fn daemon_out_of_descriptors() -> (FailureCode, bool, Vec<String>) {
    (
        FailureCode::DaemonResourcesExhausted,
        true,
        vec![
            "deployd ran out of file descriptors under load; deploy again in a moment.".into(),
            "If it recurs, raise the daemon's limit (systemd LimitNOFILE=, or ulimit -n before `deployd serve`); it raises its soft limit to the hard one at start.".into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes in the proto's comment on `Failure.code` and in the README
    /// are exactly the ones deployd gives.
    #[test]
    fn failure_codes_are_documented() {
        let ours: Vec<&str> = FailureCode::ALL.iter().map(|c| c.as_str()).collect();
        let proto = include_str!("../../proto/deployd/v1/deployd.proto");
        let listed: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("//   "))
            .filter_map(|l| l.split_once(": ").map(|(c, _)| c))
            .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
            .collect();
        assert_eq!(listed, ours, "proto's Failure.code list");
        let readme = include_str!("../../README.md");
        let line = readme
            .split("Failure codes (")
            .nth(1)
            .and_then(|r| r.split_once("):"))
            .and_then(|(_, r)| r.split("\n\n").next())
            .expect("the README's failure code paragraph");
        let in_readme: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        assert_eq!(in_readme, ours, "README's failure codes");
    }

    #[test]
    fn running_out_of_descriptors_is_the_daemons_problem_and_retriable() {
        let exhausted = |errno: rustix::io::Errno| StageError::Archive {
            dir: "/src/app".into(),
            source: super::super::archive::ArchiveError::Io {
                path: "(archive)".into(),
                source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
            },
        };
        for errno in [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE] {
            let f = exhausted(errno).to_failure("p");
            assert_eq!(f.code, "DAEMON_RESOURCES_EXHAUSTED");
            assert!(f.retriable);
        }
        let f = exhausted(rustix::io::Errno::ACCESS).to_failure("p");
        assert_eq!(f.code, "ARCHIVE_FAILED");
        assert!(!f.retriable);
    }
}
