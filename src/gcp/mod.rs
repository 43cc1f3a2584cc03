//! The real Google Cloud client: reqwest + gcp_auth, one module per API,
//! wire types for the fields deployd uses, google.rpc.Status decoding and
//! long-running operations. Implements [`crate::pipeline::cloud::Cloud`].
//!
//! The same code talks to googleapis.com and to the sandbox; only
//! [`Endpoints`] and [`Credentials`] differ.

// Errors are the cold path and carry the decoded status flat, so callers
// can match on fields; boxing them would only obscure that.
#![allow(clippy::result_large_err)]

pub mod artifactregistry;
pub mod cloudbuild;
pub mod error;
pub mod http;
pub mod iam;
pub mod iamcredentials;
pub mod identity;
pub mod logging;
pub mod lro;
pub mod monitoring;
pub mod orgpolicy;
pub mod resourcemanager;
pub mod run;
pub mod serviceusage;
pub mod storage;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::GcpError;
pub use http::{Credentials, Endpoints, Transport};
pub use lro::PollPolicy;

use crate::pipeline::archive::Blob;
use crate::pipeline::cloud::{
    Bucket, BuildInfo, BuildSpec, BuildStatus, Cloud, ListPolicy, Project, ProjectState,
    Repository, RevisionRequests, Rollout, RunService, ServiceAccount, ServiceSpec, StoredObject,
    TrafficTarget,
};
use crate::pipeline::error::{CloudError, Code};
use crate::pipeline::model::Target;

pub struct GcpClient {
    t: Transport,
    poll: PollPolicy,
    /// Uploads larger than this are resumable, in chunks of this size.
    upload_chunk: usize,
    /// Service account whose identity tokens probe private services.
    invoker: Option<String>,
    /// Metadata server (`host[:port]`) asked for identity tokens when there
    /// is no invoker account.
    metadata_server: Option<String>,
}

impl GcpClient {
    pub fn new(t: Transport, poll: PollPolicy) -> Self {
        Self {
            t,
            poll,
            upload_chunk: storage::DEFAULT_CHUNK_BYTES,
            invoker: None,
            metadata_server: None,
        }
    }

    pub fn with_invoker(mut self, service_account: Option<String>) -> Self {
        self.invoker = service_account;
        self
    }

    pub fn with_metadata_server(mut self, host: Option<String>) -> Self {
        self.metadata_server = host;
        self
    }

    /// Rounds down to a multiple of 256 KiB, as Cloud Storage requires.
    pub fn with_upload_chunk(mut self, bytes: usize) -> Self {
        const QUANTUM: usize = 256 * 1024;
        self.upload_chunk = (bytes / QUANTUM).max(1) * QUANTUM;
        self
    }

    /// Production: Google's hosts and Application Default Credentials.
    pub async fn google(poll: PollPolicy) -> Result<Self, GcpError> {
        let provider = gcp_auth::provider().await.map_err(GcpError::Auth)?;
        let t = Transport::new(
            Endpoints::google(),
            Credentials::Google(provider),
            Duration::from_secs(60),
        )?;
        Ok(Self::new(t, poll))
    }

    /// Every API at `base` (an emulator); no credentials.
    pub fn emulator(base: &str, poll: PollPolicy) -> Result<Self, GcpError> {
        let t = Transport::new(
            Endpoints::single(base),
            Credentials::None,
            Duration::from_secs(60),
        )?;
        Ok(Self::new(t, poll))
    }
}

fn build_info(b: cloudbuild::Build) -> BuildInfo {
    let time = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    // Both by Cloud Build's clock, so no skew between it and ours.
    let took = match (time(&b.create_time), time(&b.finish_time)) {
        (Some(c), Some(f)) => (f - c).to_std().ok(),
        _ => None,
    };
    let status = match b.status.as_str() {
        "PENDING" => BuildStatus::Pending,
        "QUEUED" => BuildStatus::Queued,
        "WORKING" => BuildStatus::Working,
        "SUCCESS" => BuildStatus::Success,
        "FAILURE" => BuildStatus::Failure,
        "INTERNAL_ERROR" => BuildStatus::InternalError,
        "TIMEOUT" => BuildStatus::Timeout,
        "CANCELLED" => BuildStatus::Cancelled,
        "EXPIRED" => BuildStatus::Expired,
        _ => BuildStatus::Unknown,
    };
    BuildInfo {
        took,
        id: b.id,
        status,
        status_name: b.status,
        status_detail: b.status_detail,
        failure_type: b.failure_info.map(|f| f.kind).filter(|k| !k.is_empty()),
        log_url: b.log_url,
        logs_bucket: b.logs_bucket,
        tags: b.tags,
        images: b
            .results
            .map(|r| r.images.into_iter().map(|i| (i.name, i.digest)).collect())
            .unwrap_or_default(),
        failed_steps: b
            .steps
            .into_iter()
            .filter(|s| s.status == "FAILURE" || s.status == "TIMEOUT")
            .map(|s| s.id)
            .collect(),
    }
}

#[async_trait]
impl Cloud for GcpClient {
    async fn project(&self, project: &str) -> Result<Project, CloudError> {
        let p = resourcemanager::get_project(&self.t, project).await?;
        let state = match p.state.as_str() {
            "ACTIVE" => ProjectState::Active,
            "DELETE_REQUESTED" => ProjectState::DeleteRequested,
            other => ProjectState::Other(other.to_string()),
        };
        Ok(Project {
            number: p.number().to_string(),
            project_id: p.project_id,
            state,
        })
    }

    async fn test_project_permissions(
        &self,
        project: &str,
        permissions: &[&str],
    ) -> Result<Vec<String>, CloudError> {
        Ok(resourcemanager::test_permissions(&self.t, project, permissions).await?)
    }

    async fn services_enabled(
        &self,
        project: &str,
        services: &[&str],
    ) -> Result<Vec<(String, bool)>, CloudError> {
        let got = serviceusage::batch_get(&self.t, project, services).await?;
        Ok(services
            .iter()
            .map(|s| {
                let on = got
                    .iter()
                    .any(|g| g.name.rsplit('/').next() == Some(*s) && g.state == "ENABLED");
                (s.to_string(), on)
            })
            .collect())
    }

    async fn service_account(
        &self,
        project: &str,
        email: &str,
    ) -> Result<Option<ServiceAccount>, CloudError> {
        Ok(iam::get_service_account(&self.t, project, email)
            .await?
            .map(|sa| ServiceAccount {
                email: sa.email,
                disabled: sa.disabled,
            }))
    }

    async fn can_act_as(&self, project: &str, email: &str) -> Result<bool, CloudError> {
        Ok(iam::can_act_as(&self.t, project, email).await?)
    }

    async fn effective_list_policy(
        &self,
        project: &str,
        constraint: &str,
    ) -> Result<ListPolicy, CloudError> {
        Ok(orgpolicy::effective_list_policy(&self.t, project, constraint).await?)
    }

    async fn repository(
        &self,
        project: &str,
        region: &str,
        repository: &str,
    ) -> Result<Option<Repository>, CloudError> {
        Ok(artifactregistry::get(&self.t, project, region, repository)
            .await?
            .map(|r| Repository { format: r.format }))
    }

    async fn create_repository(
        &self,
        project: &str,
        region: &str,
        repository: &str,
    ) -> Result<(), CloudError> {
        Ok(
            artifactregistry::create_docker(&self.t, project, region, repository, &self.poll)
                .await?,
        )
    }

    async fn bucket(&self, bucket: &str) -> Result<Option<Bucket>, CloudError> {
        Ok(storage::get_bucket(&self.t, bucket).await?.map(|b| Bucket {
            name: b.name,
            project_number: b.project_number,
        }))
    }

    async fn create_bucket(
        &self,
        project: &str,
        region: &str,
        bucket: &str,
    ) -> Result<(), CloudError> {
        match storage::insert_bucket(&self.t, project, region, bucket).await {
            Ok(_) => Ok(()),
            // Cloud Storage answers a taken name with 409, which maps to ABORTED.
            Err(
                e @ GcpError::Api {
                    http_status: 409, ..
                },
            ) => {
                let mut c = CloudError::from(e);
                c.code = Code::AlreadyExists;
                Err(c)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn object(&self, bucket: &str, object: &str) -> Result<Option<StoredObject>, CloudError> {
        Ok(storage::get_object(&self.t, bucket, object)
            .await?
            .map(|o| StoredObject {
                size: o.size.parse().unwrap_or(0),
                generation: o.generation,
            }))
    }

    async fn upload_object(
        &self,
        bucket: &str,
        object: &str,
        data: &Blob,
    ) -> Result<StoredObject, CloudError> {
        let o = if data.len() > self.upload_chunk as u64 {
            storage::upload_resumable(&self.t, bucket, object, data, self.upload_chunk).await?
        } else {
            // At most one chunk: read whole for a simple upload.
            let bytes =
                storage::read_blob("storage.objects.insert", data, 0, data.len() as usize).await?;
            storage::upload(&self.t, bucket, object, bytes).await?
        };
        Ok(StoredObject {
            size: o.size.parse().unwrap_or(0),
            generation: o.generation,
        })
    }

    async fn read_object_from(
        &self,
        bucket: &str,
        object: &str,
        offset: u64,
    ) -> Result<Option<Bytes>, CloudError> {
        Ok(storage::read_from(&self.t, bucket, object, offset).await?)
    }

    async fn default_build_service_account(
        &self,
        project: &str,
    ) -> Result<Option<String>, CloudError> {
        Ok(cloudbuild::default_service_account(&self.t, project).await?)
    }

    async fn create_build(&self, project: &str, spec: &BuildSpec) -> Result<BuildInfo, CloudError> {
        Ok(build_info(
            cloudbuild::create(&self.t, project, spec).await?,
        ))
    }

    async fn get_build(&self, project: &str, id: &str) -> Result<BuildInfo, CloudError> {
        Ok(build_info(cloudbuild::get(&self.t, project, id).await?))
    }

    async fn find_builds(&self, project: &str, tag: &str) -> Result<Vec<BuildInfo>, CloudError> {
        Ok(cloudbuild::list_tagged(&self.t, project, tag)
            .await?
            .into_iter()
            .map(build_info)
            .collect())
    }

    async fn cancel_build(&self, project: &str, id: &str) -> Result<(), CloudError> {
        cloudbuild::cancel(&self.t, project, id).await?;
        Ok(())
    }

    async fn run_service(&self, target: &Target) -> Result<Option<RunService>, CloudError> {
        Ok(run::get(&self.t, target).await?)
    }

    async fn deploy_service(
        &self,
        spec: &ServiceSpec,
        exists: bool,
    ) -> Result<Rollout, CloudError> {
        Ok(run::apply(&self.t, spec, exists, &self.poll).await?)
    }

    async fn validate_service(&self, spec: &ServiceSpec, exists: bool) -> Result<(), CloudError> {
        Ok(run::validate(&self.t, spec, exists).await?)
    }

    async fn set_public_invoker(&self, target: &Target, public: bool) -> Result<(), CloudError> {
        Ok(run::set_public_invoker(&self.t, target, public).await?)
    }

    async fn set_traffic(
        &self,
        target: &Target,
        traffic: &[TrafficTarget],
    ) -> Result<Rollout, CloudError> {
        Ok(run::set_traffic(&self.t, target, traffic, &self.poll).await?)
    }

    async fn id_token(&self, audience: &str) -> Result<String, CloudError> {
        match (&self.invoker, &self.metadata_server) {
            (Some(sa), _) => Ok(iamcredentials::generate_id_token(&self.t, sa, audience).await?),
            (None, Some(host)) => Ok(iamcredentials::metadata_id_token(host, audience).await?),
            (None, None) => {
                let mut e = CloudError::new(
                    "iamcredentials.projects.serviceAccounts.generateIdToken",
                    Code::FailedPrecondition,
                    "the daemon has no identity to probe private services with: no invoker service account and no metadata server",
                );
                e.reason = Some(crate::pipeline::cloud::NO_PROBE_IDENTITY.into());
                Err(e)
            }
        }
    }

    async fn revision_requests(
        &self,
        target: &Target,
        revision: &str,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
    ) -> Result<RevisionRequests, CloudError> {
        Ok(monitoring::revision_requests(&self.t, target, revision, start, end).await?)
    }

    async fn revision_logs(
        &self,
        target: &Target,
        revision: &str,
        since: std::time::SystemTime,
        limit: u32,
    ) -> Result<Vec<crate::pipeline::cloud::LogLine>, CloudError> {
        Ok(logging::revision_logs(&self.t, target, revision, since, limit).await?)
    }

    fn logs_link(&self, target: &Target, revision: &str, since: std::time::SystemTime) -> String {
        logging::explorer_link(
            &target.project,
            &logging::revision_filter(target, revision, since),
        )
    }
}
