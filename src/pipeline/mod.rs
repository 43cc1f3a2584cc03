//! The domain: a deployment, its stages, events, retry policy and errors.
//!
//! Knows nothing of tonic, prost, reqwest or axum. Reaches Google only
//! through [`cloud::Cloud`] and HTTP endpoints only through
//! [`cloud::Prober`]. A deployment's progress lives in [`Deployment`], plain
//! data that a store can persist and a restarted daemon could resume from.

// StageError carries what a person needs to act (log tail, links); it is
// built once per failed run, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod addr;
pub mod archive;
mod build;
mod calls;
pub mod canary;
pub mod cloud;
mod deploy;
mod deploy_checks;
pub mod dockerignore;
pub mod error;
pub mod event;
pub mod model;
pub mod naming;
mod preflight;
pub mod retry;
mod revision_logs;
pub mod rules;
pub mod shell;
pub mod source;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use build::{classify_build, relevant_lines};
pub use deploy::CANDIDATE_TAG;
pub use preflight::{CHECK_ORDER, REQUIRED_APIS, REQUIRED_PERMISSIONS};

use cloud::{Cloud, Prober, PromQl};
use error::{FailureCode, StageError};
use event::{EventKind, Failure, Outcome, Reporter, Stage};
use model::{
    AnalyzeRequest, DeployRequest, PreflightRequest, RollbackPolicy, RolloutMode, VerifyRequest,
};
use verify::{Approval, ProbeContext, UrlPolicy, UrlRefused, Verification};

use crate::telemetry::metrics;

/// Settings of the pipeline itself (not of one deploy).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// First backoff delay for retried builds and preflight calls; doubles.
    pub retry_base_delay: Duration,
    /// How often a running build is polled and its log read.
    pub poll_interval: Duration,
    /// Added to the build timeout before deployd gives up on a build.
    pub build_deadline_slack: Duration,
    /// Deadline of one preflight API call.
    pub check_timeout: Duration,
    /// Where git sources are cloned.
    pub work_dir: PathBuf,
    /// The IAM member in remediation commands, e.g. "user:me@example.com".
    pub caller_member: String,
    /// Uncompressed source bytes sent at most.
    pub max_source_bytes: u64,
    /// Which URLs a `Verify` caller may have probed.
    pub url_policy: UrlPolicy,
    /// Where sources may come from.
    pub sources: source::SourcePolicy,
    pub canary: CanaryConfig,
}

/// Daemon-wide settings of canary analysis.
#[derive(Debug, Clone)]
pub struct CanaryConfig {
    /// Multiplies every canary duration (bakes, extensions, probe
    /// intervals, Monitoring's delay): below 1 a rehearsal or a test runs
    /// the same steps in less time. 1 in production.
    pub time_scale: f64,
    /// Prometheus hosts a request's analysis may query.
    pub prometheus_hosts: Vec<String>,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            prometheus_hosts: vec![],
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            retry_base_delay: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            build_deadline_slack: Duration::from_secs(120),
            check_timeout: Duration::from_secs(20),
            work_dir: std::env::temp_dir().join("deployd"),
            caller_member: PLACEHOLDER_MEMBER.into(),
            max_source_bytes: archive::DEFAULT_MAX_SOURCE_BYTES,
            url_policy: UrlPolicy::default(),
            sources: source::SourcePolicy::default(),
            canary: CanaryConfig::default(),
        }
    }
}

/// The uploaded source archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveRef {
    pub bucket: String,
    pub object: String,
    pub generation: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    pub id: String,
    /// By digest when Cloud Build reported one.
    pub image: String,
    pub log_url: String,
    pub attempts: u32,
}

/// A build created on Cloud Build and not yet seen to end: a resumed run
/// polls it instead of creating another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingBuild {
    pub id: String,
    pub attempt: u32,
    pub log_url: String,
}

impl PendingBuild {
    /// What a progress event about this build says of it.
    pub fn facts(&self) -> event::BuildFacts {
        event::BuildFacts {
            build_id: Some(self.id.clone()),
            log_url: Some(self.log_url.clone()),
            attempt: Some(self.attempt),
            ..event::BuildFacts::default()
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Running(Stage),
    Succeeded,
    Failed(Stage),
}

/// A deployment's state, as data: what was asked, how far it got, and what
/// each stage produced. It is what the store keeps, and what a restarted
/// daemon resumes from: every change made outside is recorded here before
/// it is waited on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub request: DeployRequest,
    pub status: Status,
    pub source_commit: Option<String>,
    /// The commit's committer time (Unix seconds).
    #[serde(default)]
    pub source_commit_time: Option<i64>,
    pub checks: Vec<event::CheckResult>,
    pub archive: Option<ArchiveRef>,
    pub build: Option<BuildRecord>,
    /// The revision that served 100% before this deploy.
    pub previous_revision: Option<String>,
    pub revision: Option<String>,
    pub url: Option<String>,
    /// The rollout actually used (a first deploy is always direct).
    pub effective_rollout: RolloutMode,
    /// The candidate's tag URL, in the verify-first rollout modes.
    pub candidate_url: Option<String>,
    /// The stable revision's tag URL during a canary.
    #[serde(default)]
    pub stable_url: Option<String>,
    /// The canary's steps done and judged.
    #[serde(default)]
    pub canary: canary::CanaryProgress,
    pub verification: Option<Verification>,
    pub rolled_back: bool,
    /// What analysis found.
    pub plan: Option<crate::analysis::BuildPlan>,
    /// Files added to the build context (a generated Dockerfile...).
    pub generated: Vec<(String, String)>,
    /// Retries anywhere in the run; zero on a first-time success.
    pub retries: u32,
    pub failure: Option<Failure>,
    /// Build attempts started; each build carries tags naming this
    /// deployment and its attempt, so one whose creation was never
    /// recorded is found again ([`build_tags`]).
    pub build_attempts: u32,
    pub pending_build: Option<PendingBuild>,
    /// The name the new revision is created under, chosen before the
    /// Cloud Run request is sent.
    pub planned_revision: Option<String>,
    /// The Cloud Run create or patch was sent; `previous_revision` is final.
    pub rollout_sent: bool,
    pub rollback_started: bool,
    pub rollback_done: bool,
    /// The rollback moved traffic back to `previous_revision`.
    #[serde(default)]
    pub rollback_traffic_moved: bool,
    /// The rollback ended without a healthy service.
    #[serde(default)]
    pub rollback_failure: Option<event::RollbackFailure>,
    /// How often a daemon resumed this run after its previous one stopped.
    pub resumed: u32,
}

/// How a deploy run ended here.
pub struct RunEnd {
    pub outcome: Outcome,
    /// Its progress as last kept.
    pub deployment: Deployment,
    /// The store gave it to another daemon, which reports its end.
    pub handed_over: bool,
}

/// Where a resumed run picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// Run the stages from this one (an index into `Stage::DEPLOY_ORDER`).
    Stages(usize),
    /// The stages are over; the rollback is (still) to do.
    Rollback,
    /// Everything is done but reporting the outcome.
    Finish,
}

/// Tags of a deployment's build attempt, so a build whose creation was not
/// recorded (a crash right after it) is found instead of made again.
pub fn build_tags(deployment_id: &str, attempt: u32) -> [String; 2] {
    [deployment_tag(deployment_id), format!("attempt-{attempt}")]
}

/// The tag every build of a deployment carries (Cloud Build tags match
/// `^[\w][\w.-]{0,127}$`, which a UUID meets).
pub fn deployment_tag(deployment_id: &str) -> String {
    format!("deployment-{deployment_id}")
}

impl Deployment {
    /// The revision's runtime settings: the request's, with the port the
    /// analysis found when the request names none.
    pub fn revision_runtime(&self) -> model::RuntimeSettings {
        let mut rt = self.request.runtime.clone();
        if rt.container_port == 0 {
            if let Some(p) = self.plan.as_ref().filter(|p| p.port != 8080) {
                rt.container_port = p.port;
            }
        }
        rt
    }

    pub fn new(id: String, request: DeployRequest) -> Self {
        Self {
            id,
            effective_rollout: request.rollout,
            request,
            status: Status::Running(Stage::Source),
            source_commit: None,
            source_commit_time: None,
            checks: vec![],
            archive: None,
            build: None,
            previous_revision: None,
            revision: None,
            url: None,
            candidate_url: None,
            stable_url: None,
            canary: canary::CanaryProgress::default(),
            verification: None,
            rolled_back: false,
            plan: None,
            generated: vec![],
            retries: 0,
            failure: None,
            build_attempts: 0,
            pending_build: None,
            planned_revision: None,
            rollout_sent: false,
            rollback_started: false,
            rollback_done: false,
            rollback_traffic_moved: false,
            rollback_failure: None,
            resumed: 0,
        }
    }

    /// The stage running, or the last one that ran.
    pub fn stage(&self) -> Stage {
        if self.rollback_started && !self.rollback_done {
            return Stage::Rollback;
        }
        match self.status {
            Status::Running(s) | Status::Failed(s) => s,
            Status::Succeeded => Stage::Verify,
        }
    }

    /// Where a run of this progress continues. Stages before the build
    /// redo their work (nothing outside changed yet, apart from idempotent
    /// preflight creations); from the build on, recorded steps are found
    /// again rather than repeated.
    pub fn resume_point(&self) -> ResumePoint {
        let index = |s: Stage| {
            Stage::DEPLOY_ORDER
                .iter()
                .position(|o| *o == s)
                .unwrap_or(0)
        };
        match self.status {
            // The archive holds everything analysis produced; without it,
            // the source is needed again.
            Status::Running(Stage::Build) if self.archive.is_none() => ResumePoint::Stages(0),
            Status::Running(s @ (Stage::Build | Stage::Deploy | Stage::Verify)) => {
                ResumePoint::Stages(index(s))
            }
            Status::Running(_) => ResumePoint::Stages(0),
            Status::Failed(_)
                if self.request.rollback == RollbackPolicy::Automatic
                    && self.should_rollback()
                    && !self.rollback_done =>
            {
                ResumePoint::Rollback
            }
            Status::Failed(_) | Status::Succeeded => ResumePoint::Finish,
        }
    }

    /// Whether users were (or are) on a new revision that is not healthy
    /// while a healthy one served before.
    pub fn should_rollback(&self) -> bool {
        let failed_after_deploy = matches!(
            self.status,
            Status::Failed(Stage::Verify | Stage::Deploy | Stage::Rollback)
        );
        failed_after_deploy
            && self.revision.is_some()
            && self.previous_revision.is_some()
            && self.previous_revision != self.revision
            && self.effective_rollout != RolloutMode::VerifyBeforeTraffic
    }

    pub fn outcome(&self) -> Outcome {
        let verification = self.verification.as_ref();
        let verified = verification.is_some_and(|v| v.healthy);
        let failed_stage = match self.status {
            Status::Failed(s) => Some(s),
            _ => None,
        };
        Outcome {
            success: self.status == Status::Succeeded,
            url: self.url.clone().unwrap_or_default(),
            verified,
            response_time: verification.and_then(|v| v.response_time),
            should_rollback: self.should_rollback(),
            error: self.failure.clone(),
            checks: self.checks.clone(),
            revision: self.revision.clone().unwrap_or_default(),
            previous_revision: self.previous_revision.clone().unwrap_or_default(),
            image: self
                .build
                .as_ref()
                .map(|b| b.image.clone())
                .unwrap_or_default(),
            build_id: self
                .build
                .as_ref()
                .map(|b| b.id.clone())
                .unwrap_or_default(),
            failed_stage,
            source_commit: self.source_commit.clone().unwrap_or_default(),
            source_commit_time: self.source_commit_time,
            rolled_back: self.rolled_back,
            probe_stats: verification.and_then(|v| v.stats),
            final_url: verification
                .and_then(|v| v.final_url.clone())
                .unwrap_or_default(),
            canary_steps: self.canary.results.clone(),
            canary_aborted: self.canary.aborted,
            rollback_failure: self.rollback_failure.clone(),
        }
    }
}

/// The shared pipeline behind Deploy, Preflight and Verify.
pub struct Pipeline {
    cloud: Arc<dyn Cloud>,
    prober: Arc<dyn Prober>,
    promql: Arc<dyn PromQl>,
    config: PipelineConfig,
    /// Packing uses every core and an archive's temporary file lives until
    /// its upload ends; this bounds how many at once.
    archives: tokio::sync::Semaphore,
    /// How long recent builds took, to poll when the next is due to end.
    build_times: build::BuildTimes,
}

/// Archives packed or uploading at once, daemon-wide.
pub const MAX_CONCURRENT_ARCHIVES: usize = 8;

impl Pipeline {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        prober: Arc<dyn Prober>,
        promql: Arc<dyn PromQl>,
        config: PipelineConfig,
    ) -> Self {
        Self {
            cloud,
            prober,
            promql,
            config,
            archives: tokio::sync::Semaphore::new(MAX_CONCURRENT_ARCHIVES),
            build_times: build::BuildTimes::default(),
        }
    }

    /// Runs every stage in order, rolling back when the new revision is not
    /// healthy; always ends by emitting one outcome. `d` is a new
    /// deployment or one resumed from the store: a resumed run continues
    /// from its [`ResumePoint`], finding the build and revision it made
    /// instead of making them again.
    ///
    /// The one exception to "always an outcome": a run whose store says
    /// another daemon owns it now stops at once and reports nothing, since
    /// that daemon reports instead.
    pub async fn deploy(
        &self,
        mut d: Deployment,
        events: Reporter,
        cancel: CancellationToken,
    ) -> RunEnd {
        let req = &d.request;
        let span = tracing::info_span!("deployment", otel.name = "deploy", deployment_id = %d.id, project = %req.target.project,
            region = %req.target.region, service = %req.target.service, result = tracing::field::Empty,
            otel.status_code = tracing::field::Empty, otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty);
        let started = Instant::now();
        let started_wall = std::time::SystemTime::now();
        let _in_progress = metrics::InProgress::start();
        let lost = async {
            let resume = d.resume_point();
            if d.resumed > 0 {
                tracing::info!(?resume, resumed = d.resumed, "deploy resumed");
                events
                    .progress(d.stage(), resume_message(&d, resume))
                    .await;
            } else {
                tracing::info!("deploy started");
            }
            let mut workspace = None;
            // A prebuilt image is what a build would have produced: there
            // is no source to fetch, analyze or build.
            if let (Some(image), None) = (d.request.source.image(), &d.build) {
                d.build = Some(BuildRecord {
                    id: String::new(),
                    image: image.to_string(),
                    log_url: String::new(),
                    attempts: 0,
                });
            }
            if let ResumePoint::Stages(first) = resume {
                for stage in &Stage::DEPLOY_ORDER[first..] {
                    let stage = *stage;
                    if d.request.source.image().is_some()
                        && matches!(stage, Stage::Source | Stage::Analyze | Stage::Build)
                    {
                        continue;
                    }
                    if let Err(e) = self.timed_stage(stage, &mut d, &mut workspace, &events, &cancel).await {
                        if is_lease_lost(&e) {
                            return true;
                        }
                        tracing::warn!(stage = stage.as_str(), error = %error::error_chain(&e), "deploy failed");
                        let failure = self.failure(&d, &e);
                        let failure = self
                            .with_revision_logs(&mut d, &e, failure, started_wall, &events)
                            .await;
                        // A cancellation is the caller's choice, not a failure.
                        if !matches!(e, StageError::Cancelled { .. }) {
                            metrics::failure(stage.as_str(), &failure.code);
                        }
                        d.failure = Some(failure);
                        d.status = Status::Failed(stage);
                        self.explain_unverified_first_revision(&mut d);
                        break;
                    }
                }
                if let Status::Running(_) = d.status {
                    d.status = Status::Succeeded;
                }
                // The verdict is kept before anything reacts to it.
                if let Err(e) = events.checkpoint(&d).await {
                    if matches!(e, event::JournalError::LeaseLost { .. }) {
                        return true;
                    }
                    tracing::error!(error = %e, "the deploy's verdict was not recorded");
                }
            }
            if d.resume_point() == ResumePoint::Rollback {
                return self.automatic_rollback(&mut d, &mut workspace, &events, &cancel).await;
            }
            // Rollback left to the caller: say how, runnable.
            if d.request.rollback == RollbackPolicy::Recommend && d.should_rollback() {
                if let (Some(f), Some(prev)) = (d.failure.as_mut(), d.previous_revision.as_deref()) {
                    let t = &d.request.target;
                    f.remediation.insert(0, format!(
                        "Traffic is still on {}, which is not healthy (rollback policy: recommend). Roll back: gcloud run services update-traffic {} --region={} --project={} --to-revisions={}=100",
                        d.revision.as_deref().unwrap_or("the new revision"),
                        shell::quote(&t.service), shell::quote(&t.region), shell::quote(&t.project), shell::quote(prev)));
                }
            }
            false
        }
        .instrument(span.clone())
        .await;
        if lost {
            span.in_scope(|| {
                tracing::warn!("another daemon runs this deployment now; stopped here")
            });
            return RunEnd {
                outcome: d.outcome(),
                deployment: d,
                handed_over: true,
            };
        }

        let outcome = d.outcome();
        let result = outcome.result();
        metrics::deployment_finished(result, started.elapsed(), d.retries == 0);
        let failure = outcome
            .error
            .as_ref()
            .map(|f| (f.code.as_str(), f.message.as_str()));
        crate::telemetry::record_result(&span, result, failure);
        span.in_scope(|| {
            tracing::info!(result, url = %outcome.url, revision = %outcome.revision,
                should_rollback = outcome.should_rollback, rolled_back = outcome.rolled_back,
                elapsed_ms = started.elapsed().as_millis() as u64, "deploy finished")
        });
        events
            .emit(None, EventKind::Outcome(Box::new(outcome.clone())))
            .await;
        RunEnd {
            outcome,
            deployment: d,
            handed_over: false,
        }
    }

    /// Moves users back to the revision that served before; true when the
    /// store says another daemon owns the deployment now.
    async fn automatic_rollback(
        &self,
        d: &mut Deployment,
        workspace: &mut Option<source::Workspace>,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> bool {
        d.rollback_started = true;
        if let Err(event::JournalError::LeaseLost { .. }) = events.checkpoint(d).await {
            return true;
        }
        // Cancelling a deploy must not leave users on the broken
        // revision: the rollback runs even when the run was
        // cancelled, with its own bounded time after that.
        let rollback_cancel = CancellationToken::new();
        let _watchdog = {
            let (run, rb) = (cancel.clone(), rollback_cancel.clone());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                run.cancelled().await;
                tokio::time::sleep(ROLLBACK_AFTER_CANCEL).await;
                rb.cancel();
            }))
        };
        let rolled = self
            .timed_stage(Stage::Rollback, d, workspace, events, &rollback_cancel)
            .await;
        if let Err(e) = &rolled {
            if is_lease_lost(e) {
                return true;
            }
        }
        if let (Ok(()), Some(f)) = (&rolled, d.failure.as_mut()) {
            if d.rolled_back {
                f.remediation.insert(0, format!(
                    "Traffic is back on {}, which answered its health check; the new revision {} serves nothing.",
                    d.previous_revision.as_deref().unwrap_or("the previous revision"),
                    d.revision.as_deref().unwrap_or("(new)")));
            }
        }
        if let Err(e) = rolled {
            tracing::error!(error = %error::error_chain(&e), "rollback failed");
            self.explain_failed_rollback(d, &e);
        }
        d.rollback_done = true;
        matches!(
            events.checkpoint(d).await,
            Err(event::JournalError::LeaseLost { .. })
        )
    }

    /// A rollback that did not restore a healthy service: the outcome says
    /// where users are and why, and the first remedy fits that state. When
    /// traffic is back on the previous revision, moving it there again
    /// would change nothing: the remedy is a fixed deploy, or an older
    /// revision known to be healthy.
    fn explain_failed_rollback(&self, d: &mut Deployment, e: &StageError) {
        let t = &d.request.target;
        let (s, r, p) = (
            shell::quote(&t.service),
            shell::quote(&t.region),
            shell::quote(&t.project),
        );
        let new = d.revision.clone().unwrap_or_default();
        let prev = d.previous_revision.clone().unwrap_or_default();
        let moved = d.rollback_traffic_moved;
        let remedy = if moved {
            format!(
                "Automatic rollback moved traffic back to {prev}, but it does not answer its health check either, so the service is not healthy. Deploy a fixed version, or move traffic to an older revision you know is healthy (gcloud run revisions list --service={s} --region={r} --project={p}, then gcloud run services update-traffic {s} --region={r} --project={p} --to-revisions=REVISION=100)."
            )
        } else {
            format!(
                "Automatic rollback could not move traffic: users are still on {new}. Roll back by hand: gcloud run services update-traffic {s} --region={r} --project={p} --to-revisions={}=100",
                shell::quote(&prev)
            )
        };
        if let Some(f) = d.failure.as_mut() {
            f.remediation.insert(0, remedy);
        }
        d.rollback_failure = Some(event::RollbackFailure {
            traffic_moved: moved,
            serving_revision: if moved { prev } else { new },
            error: e.to_failure(&t.project),
        });
    }

    /// One stage with its started/finished events and duration metric.
    async fn timed_stage(
        &self,
        stage: Stage,
        d: &mut Deployment,
        workspace: &mut Option<source::Workspace>,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        if stage != Stage::Rollback {
            d.status = Status::Running(stage);
        }
        // What the build and the rollout produced is kept before the next
        // stage acts on it. Earlier stages change nothing outside that a
        // resumed run must find (it redoes them), and the build keeps its
        // own steps.
        if matches!(stage, Stage::Deploy | Stage::Verify) {
            events.checkpoint(d).await.map_err(StageError::Journal)?;
        }
        events.emit(Some(stage), EventKind::StageStarted).await;
        let t = Instant::now();
        let span = tracing::info_span!(
            "stage",
            otel.name = stage.as_str(),
            stage = stage.as_str(),
            deployment_id = %d.id,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty
        );
        let result = tokio::select! {
            r = self.run_stage(stage, d, workspace, events, cancel).instrument(span.clone()) => r,
            // Stages that own remote work (the build) cancel it themselves
            // first; this arm catches the rest.
            _ = cancelled_after_grace(cancel) => Err(StageError::Cancelled { stage: stage.as_str() }),
        };
        match &result {
            // Stopping when asked is not an error of the stage.
            Err(StageError::Cancelled { .. }) => {
                span.record("error.type", "CANCELLED");
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error::error_chain(e).as_str());
                span.record("error.type", self.failure(d, e).code.as_str());
            }
            Ok(()) => {}
        }
        span.in_scope(|| {
            tracing::info!(
                ok = result.is_ok(),
                duration_ms = t.elapsed().as_millis() as u64,
                "stage finished"
            )
        });
        metrics::stage_duration(stage, t.elapsed());
        events
            .emit(
                Some(stage),
                EventKind::StageFinished {
                    ok: result.is_ok(),
                    duration: t.elapsed(),
                },
            )
            .await;
        result
    }

    /// Cloud Run gives a service's first revision all traffic (it refuses a
    /// first revision without any), so when a first deploy fails after its
    /// revision became ready, that revision serves unverified and nothing
    /// older exists to go back to. The outcome says so, and how to stop it.
    fn explain_unverified_first_revision(&self, d: &mut Deployment) {
        let after_ready = matches!(d.status, Status::Failed(Stage::Deploy | Stage::Verify));
        if !after_ready || d.previous_revision.is_some() || d.url.is_none() {
            return;
        }
        let (Some(revision), Some(f)) = (d.revision.clone(), d.failure.as_mut()) else {
            return;
        };
        let t = &d.request.target;
        // Said before the revision's quoted log lines, if any follow.
        let (head, quoted) = f.message.split_once('\n').unwrap_or((&f.message, ""));
        let sep = if quoted.is_empty() { "" } else { "\n" };
        f.message = format!(
            "{head}; this was the first revision of {}, so Cloud Run routes all of its traffic to {revision}, unverified, and there is no earlier revision to roll back to{sep}{quoted}",
            t.service
        );
        let (s, r, p) = (
            shell::quote(&t.service),
            shell::quote(&t.region),
            shell::quote(&t.project),
        );
        // After the fix of the cause, which stays first.
        f.remediation.push(format!(
            "Until it is fixed, delete the unverified service: gcloud run services delete {s} --region={r} --project={p}"
        ));
        f.remediation.push(format!(
            "Or keep it but take it off the internet: gcloud run services update {s} --ingress=internal --region={r} --project={p}"
        ));
    }

    /// The outcome's failure, with what only the run knows added.
    fn failure(&self, d: &Deployment, e: &StageError) -> Failure {
        let t = &d.request.target;
        let mut f = e.to_failure(&t.project);
        let denied = d
            .verification
            .as_ref()
            .and_then(|v| v.last_status)
            .is_some_and(|s| s == 401 || s == 403);
        if matches!(e, StageError::Unhealthy { .. })
            && denied
            && !d.request.runtime.allow_unauthenticated
        {
            f.code = FailureCode::InvokerDenied.as_str().into();
            f.message = format!(
                "{}: the private service refused deployd's identity token; it lacks roles/run.invoker (permission run.routes.invoke) on {}",
                f.message, t.service
            );
            f.remediation = vec![format!(
                "gcloud run services add-iam-policy-binding {} --region={} --project={} --member=serviceAccount:DEPLOYD_INVOKER_SA --role=roles/run.invoker",
                shell::quote(&t.service), shell::quote(&t.region), shell::quote(&t.project)
            )];
        }
        f
    }

    async fn run_stage(
        &self,
        stage: Stage,
        d: &mut Deployment,
        workspace: &mut Option<source::Workspace>,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        match stage {
            Stage::Source => {
                let ws = source::fetch(
                    &d.request.source,
                    d.request.subdirectory.as_deref(),
                    &self.config.sources,
                    &self.config.work_dir,
                )
                .await?;
                d.source_commit = ws.commit.clone();
                d.source_commit_time = ws.commit_time;
                let mut msg = format!("source at {}", ws.dir.display());
                if let Some(c) = &ws.commit {
                    msg.push_str(&format!(" (commit {c})"));
                }
                events.progress(stage, msg).await;
                *workspace = Some(ws);
                Ok(())
            }
            Stage::Analyze => {
                let dir = workspace_dir(workspace)?;
                let (plan, generated) = analyze_dir(&dir).await?;
                let text = generated
                    .as_ref()
                    .and_then(|g| g.dockerfile().map(str::to_string));
                events
                    .progress(
                        stage,
                        match &text {
                            Some(_) => format!(
                                "no Dockerfile: generated one for a {} app",
                                plan.language.as_str()
                            ),
                            None => "using the app's own Dockerfile".to_string(),
                        },
                    )
                    .await;
                events
                    .emit(
                        Some(stage),
                        EventKind::Plan {
                            plan: Box::new(plan.clone()),
                            dockerfile: text,
                        },
                    )
                    .await;
                d.generated = generated.map(|g| g.files).unwrap_or_default();
                d.plan = Some(plan);
                Ok(())
            }
            Stage::Preflight => {
                let req = preflight::request_for_deploy(&d.request);
                let (mut checks, own) = tokio::join!(
                    self.run_checks(&req, events, cancel),
                    self.verification_checks(d, events, cancel)
                );
                if checks.iter().all(|c| c.ok) {
                    checks.push(self.revision_check(d, events, cancel).await);
                }
                checks.extend(own);
                checks.sort_by_key(|c| CHECK_ORDER.iter().position(|n| *n == c.name));
                d.checks = checks;
                preflight_verdict(&d.checks)
            }
            Stage::Build => {
                // A resumed build needs no source: the archive was uploaded.
                let dir = workspace.as_ref().map(|w| w.dir.clone());
                self.stage_build(d, dir.as_deref(), events, cancel).await
            }
            Stage::Deploy => self.stage_deploy(d, events, cancel).await,
            Stage::Verify => {
                // A candidate is verified through its tag URL, before (or
                // with little) traffic; a direct rollout at the service URL.
                let url = d
                    .candidate_url
                    .clone()
                    .or_else(|| d.url.clone())
                    .unwrap_or_default();
                let id_token = if d.request.runtime.allow_unauthenticated {
                    None
                } else {
                    let audience = d.url.clone().unwrap_or_default();
                    let service = d.request.target.service.clone();
                    let minted = self
                        .cloud_call(
                            stage,
                            || format!("minting an identity token to probe the private service {service}"),
                            &mut d.retries,
                            events,
                            cancel,
                            |_| self.cloud.id_token(&audience),
                        )
                        .await;
                    Some(minted.map_err(|e| match e {
                        StageError::Cloud { source, .. }
                            if source.reason.as_deref() == Some(cloud::NO_PROBE_IDENTITY) =>
                        {
                            StageError::NoProbeIdentity {
                                service: service.clone(),
                                reason: source.message,
                            }
                        }
                        other => other,
                    })?)
                };
                let ctx = ProbeContext {
                    id_token,
                    policy: None,
                    origin: metrics::ProbeOrigin::Deploy,
                    stage: Stage::Verify,
                };
                // The gate of consecutive answers is for a candidate that
                // has no traffic yet; a Direct revision already serves.
                let mut spec = d.request.health.clone();
                if d.effective_rollout == RolloutMode::Direct {
                    spec.consecutive_successes = 1;
                }
                let token = ctx.id_token.clone();
                let v =
                    verify::verify(self.prober.as_ref(), &url, &spec, ctx, events, cancel).await;
                d.retries += v.attempts.saturating_sub(1);
                let healthy = v.healthy;
                // Stopped by cancellation, not judged unhealthy.
                if !healthy && cancel.is_cancelled() {
                    d.verification = Some(v);
                    return Err(StageError::Cancelled { stage: "verify" });
                }
                let unhealthy = StageError::Unhealthy {
                    url: verify::health_url(&url, &d.request.health.path),
                    attempts: v.attempts,
                    last_error: v.last_error.clone().unwrap_or_default(),
                };
                d.verification = Some(v);
                if !healthy {
                    return Err(unhealthy);
                }
                if let RolloutMode::Canary { .. } = d.effective_rollout {
                    self.run_canary(d, token, events, cancel).await?;
                }
                if d.effective_rollout != RolloutMode::Direct {
                    self.promote(d, events, cancel).await?;
                }
                Ok(())
            }
            Stage::Rollback => self.stage_rollback(d, events, cancel).await,
        }
    }

    /// A Deploy's source and analyze stages alone: the source fetched under
    /// the daemon's source policy, analyzed, the Dockerfile generated when
    /// the app has none. Nothing is uploaded or built.
    pub async fn analyze(&self, req: &AnalyzeRequest) -> Result<Analysis, Failure> {
        let run = async {
            let ws = source::fetch(
                &req.source,
                req.subdirectory.as_deref(),
                &self.config.sources,
                &self.config.work_dir,
            )
            .await?;
            let (plan, generated) = analyze_dir(&ws.dir).await?;
            Ok(Analysis {
                dockerfile: generated
                    .as_ref()
                    .and_then(|g| g.dockerfile().map(str::to_string)),
                plan,
                commit: ws.commit,
            })
        };
        run.await.map_err(|e: StageError| {
            tracing::info!(error = %error::error_chain(&e), "analyze failed");
            // No project: remediation never names one for these stages.
            e.to_failure("")
        })
    }

    /// Preflight alone. Creates the repository and bucket when missing.
    pub async fn preflight(
        &self,
        req: PreflightRequest,
        events: Reporter,
        cancel: CancellationToken,
    ) -> Outcome {
        let span = tracing::info_span!("preflight", deployment_id = %events.deployment_id(), project = %req.target.project);
        let t = Instant::now();
        events
            .emit(Some(Stage::Preflight), EventKind::StageStarted)
            .await;
        let checks = self
            .run_checks(&req, &events, &cancel)
            .instrument(span.clone())
            .await;
        let verdict = preflight_verdict(&checks);
        metrics::stage_duration(Stage::Preflight, t.elapsed());
        events
            .emit(
                Some(Stage::Preflight),
                EventKind::StageFinished {
                    ok: verdict.is_ok(),
                    duration: t.elapsed(),
                },
            )
            .await;
        let success = verdict.is_ok();
        let outcome = Outcome {
            success,
            checks,
            error: verdict.err().map(|e| e.to_failure(&req.target.project)),
            failed_stage: (!success).then_some(Stage::Preflight),
            ..Outcome::default()
        };
        span.in_scope(|| tracing::info!(success = outcome.success, "preflight finished"));
        events
            .emit(None, EventKind::Outcome(Box::new(outcome.clone())))
            .await;
        outcome
    }

    /// What only the daemon's settings can refuse in a valid request.
    pub fn admit(&self, req: &DeployRequest) -> Result<(), model::InvalidRequest> {
        if let Some(a) = &req.analysis {
            a.check_prometheus_host(&self.config.canary.prometheus_hosts)?;
        }
        Ok(())
    }

    /// Checks a caller-supplied URL against the policy before anything is
    /// probed; each attempt is authorized again when it is made.
    pub async fn authorize_verify_url(&self, url: &str) -> Result<Approval, UrlRefused> {
        self.config
            .url_policy
            .authorize(url, self.prober.as_ref())
            .await
    }

    /// Verification of a caller's URL, connecting only to addresses the
    /// policy approves at each attempt.
    pub async fn verify(
        &self,
        req: VerifyRequest,
        events: Reporter,
        cancel: CancellationToken,
    ) -> Outcome {
        let t = Instant::now();
        events
            .emit(Some(Stage::Verify), EventKind::StageStarted)
            .await;
        let ctx = ProbeContext {
            id_token: None,
            policy: Some(&self.config.url_policy),
            origin: metrics::ProbeOrigin::VerifyRpc,
            stage: Stage::Verify,
        };
        let v = verify::verify(
            self.prober.as_ref(),
            &req.url,
            &req.health,
            ctx,
            &events,
            &cancel,
        )
        .await;
        // Not a deploy stage: its time is the Verify call's duration.
        events
            .emit(
                Some(Stage::Verify),
                EventKind::StageFinished {
                    ok: v.healthy,
                    duration: t.elapsed(),
                },
            )
            .await;
        let error = (!v.healthy).then(|| {
            StageError::Unhealthy {
                url: verify::health_url(&req.url, &req.health.path),
                attempts: v.attempts,
                last_error: v.last_error.clone().unwrap_or_default(),
            }
            .to_failure("")
        });
        let outcome = Outcome {
            success: v.healthy,
            url: req.url.clone(),
            verified: v.healthy,
            response_time: v.response_time,
            failed_stage: (!v.healthy).then_some(Stage::Verify),
            error,
            probe_stats: v.stats,
            final_url: v.final_url.clone().unwrap_or_default(),
            ..Outcome::default()
        };
        tracing::info!(deployment_id = %events.deployment_id(), url = %req.url, healthy = v.healthy, attempts = v.attempts, "verify finished");
        events
            .emit(None, EventKind::Outcome(Box::new(outcome.clone())))
            .await;
        outcome
    }
}

fn workspace_dir(ws: &Option<source::Workspace>) -> Result<PathBuf, StageError> {
    ws.as_ref()
        .map(|w| w.dir.clone())
        .ok_or_else(|| StageError::Source {
            location: "(none)".into(),
            reason: "the source stage did not run".into(),
        })
}

/// Fails closed: any failed or inconclusive check stops the deploy.
fn preflight_verdict(checks: &[event::CheckResult]) -> Result<(), StageError> {
    let failed: Vec<&event::CheckResult> = checks.iter().filter(|c| !c.ok && !c.skipped).collect();
    let skipped = checks.iter().filter(|c| c.skipped).count();
    if failed.is_empty() && skipped == 0 {
        return Ok(());
    }
    Err(StageError::PreflightFailed {
        failed: failed.len(),
        total: checks.len(),
        skipped: match skipped {
            0 => String::new(),
            n => format!("; {n} skipped until it passes"),
        },
        names: failed
            .iter()
            .map(|c| c.name.as_ref())
            .collect::<Vec<_>>()
            .join(", "),
        inconclusive_only: failed.iter().all(|c| c.inconclusive),
        remediation: preflight::gather_remediation(checks),
    })
}

fn is_lease_lost(e: &StageError) -> bool {
    matches!(
        e,
        StageError::Journal(event::JournalError::LeaseLost { .. })
    )
}

/// What a resumed run tells its watchers first.
fn resume_message(d: &Deployment, resume: ResumePoint) -> String {
    let from = match resume {
        ResumePoint::Stages(i) => format!(
            "continuing at the {} stage",
            Stage::DEPLOY_ORDER[i].as_str()
        ),
        ResumePoint::Rollback => "continuing with the rollback".into(),
        ResumePoint::Finish => "its outcome was decided; reporting it".into(),
    };
    let found = match (&d.pending_build, d.rollout_sent, &d.planned_revision) {
        (Some(b), _, _) => format!("; build {} is polled, not created again", b.id),
        (None, true, Some(r)) => format!("; revision {r} is looked up, not created again"),
        _ => String::new(),
    };
    format!(
        "resumed after the daemon running this deployment stopped (resume #{}): {from}{found}",
        d.resumed
    )
}

/// How long a rollback may still take once its run was cancelled.
/// The member remediation commands name when the daemon's credentials do
/// not say who it is.
pub const PLACEHOLDER_MEMBER: &str = "user:YOUR_EMAIL";

/// What an Analyze call found.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub plan: crate::analysis::BuildPlan,
    /// The generated Dockerfile; `None` when the app has its own.
    pub dockerfile: Option<String>,
    pub commit: Option<String>,
}

/// The analysis of a fetched source (on a blocking thread: it reads files)
/// and the files generated for it when it has no Dockerfile.
async fn analyze_dir(
    dir: &std::path::Path,
) -> Result<
    (
        crate::analysis::BuildPlan,
        Option<crate::analysis::dockerfile::Generated>,
    ),
    StageError,
> {
    let owned = dir.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || crate::analysis::analyze(&owned))
        .await
        .map_err(|e| StageError::Source {
            location: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|source| StageError::Analyze {
            dir: dir.display().to_string(),
            source,
        })?;
    let generated = crate::analysis::dockerfile::render(&plan, dir.join(".dockerignore").is_file());
    Ok((plan, generated))
}

const ROLLBACK_AFTER_CANCEL: Duration = Duration::from_secs(60);

/// Resolves shortly after cancellation, giving stages that clean up remote
/// work (cancelling a build) the chance to do so and report it themselves.
async fn cancelled_after_grace(cancel: &CancellationToken) {
    cancel.cancelled().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
}
