//! What a run reports while it works, and how it ends.

use std::time::{Duration, SystemTime};

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Stage {
    Source,
    Analyze,
    Preflight,
    Build,
    Deploy,
    Verify,
    Rollback,
}

impl Stage {
    pub const DEPLOY_ORDER: [Stage; 6] = [
        Stage::Source,
        Stage::Analyze,
        Stage::Preflight,
        Stage::Build,
        Stage::Deploy,
        Stage::Verify,
    ];

    /// The stage named by [`Stage::as_str`].
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::DEPLOY_ORDER
            .into_iter()
            .chain([Stage::Rollback])
            .find(|st| st.as_str() == s)
    }

    /// Lowercase name used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Analyze => "analyze",
            Stage::Preflight => "preflight",
            Stage::Build => "build",
            Stage::Deploy => "deploy",
            Stage::Verify => "verify",
            Stage::Rollback => "rollback",
        }
    }
}

/// One preflight check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: Cow<'static, str>,
    pub ok: bool,
    pub inconclusive: bool,
    pub detail: String,
    pub remediation: Vec<String>,
    /// Not run, or its result set aside: a check it depends on failed.
    #[serde(default)]
    pub skipped: bool,
}

impl CheckResult {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name: Cow::Borrowed(name),
            ok: true,
            inconclusive: false,
            detail: detail.into(),
            remediation: vec![],
            skipped: false,
        }
    }

    /// A check that cannot say anything until the one it depends on passes.
    pub fn skipped(name: Cow<'static, str>, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            inconclusive: false,
            detail: detail.into(),
            remediation: vec![],
            skipped: true,
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, remediation: Vec<String>) -> Self {
        Self {
            name: Cow::Borrowed(name),
            ok: false,
            inconclusive: false,
            detail: detail.into(),
            remediation,
            skipped: false,
        }
    }

    pub fn inconclusive(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name: Cow::Borrowed(name),
            ok: false,
            inconclusive: true,
            detail: detail.into(),
            remediation: vec!["Run preflight again; if it persists, check the API's status page and your network path to Google.".into()],
            skipped: false,
        }
    }

    pub fn result_label(&self) -> &'static str {
        match (self.ok, self.inconclusive) {
            _ if self.skipped => "skipped",
            (true, _) => "pass",
            (false, true) => "inconclusive",
            (false, false) => "fail",
        }
    }
}

/// One health-check attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub attempt: u32,
    pub url: String,
    pub status: Option<u16>,
    /// Time to the full body.
    pub response_time: Duration,
    /// Time to response headers.
    pub headers_time: Duration,
    pub healthy: bool,
    pub error: Option<String>,
    pub error_class: Option<super::cloud::ProbeErrorClass>,
    pub final_url: String,
}

/// Latency of a run's probes, exact over its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeStats {
    pub attempts: u32,
    pub p50: Duration,
    pub p95: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub retriable: bool,
    pub remediation: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub success: bool,
    pub url: String,
    pub verified: bool,
    pub response_time: Option<Duration>,
    pub should_rollback: bool,
    pub error: Option<Failure>,
    pub checks: Vec<CheckResult>,
    pub revision: String,
    pub previous_revision: String,
    pub image: String,
    pub build_id: String,
    pub failed_stage: Option<Stage>,
    pub source_commit: String,
    /// The commit's committer time (Unix seconds), when known.
    #[serde(default)]
    pub source_commit_time: Option<i64>,
    pub rolled_back: bool,
    pub probe_stats: Option<ProbeStats>,
    pub final_url: String,
    #[serde(default)]
    pub canary_steps: Vec<super::canary::StepResult>,
    #[serde(default)]
    pub canary_aborted: bool,
    /// Set when an automatic rollback did not restore a healthy service.
    #[serde(default)]
    pub rollback_failure: Option<RollbackFailure>,
}

/// An automatic rollback that did not restore a healthy service: where
/// users are now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackFailure {
    /// Traffic was moved back to the previous revision, which then did not
    /// answer healthy; false when moving it failed.
    pub traffic_moved: bool,
    /// The revision users are on as the run ends.
    pub serving_revision: String,
    /// What failed: moving traffic, or the previous revision's health.
    pub error: Failure,
}

impl Outcome {
    /// The `result` label: success, cancelled, rolled_back or failure.
    pub fn result(&self) -> &'static str {
        result_of(
            self.success,
            self.error.as_ref().map(|f| f.code.as_str()),
            self.canary_aborted,
            self.rolled_back,
        )
    }
}

/// A run's result from what its outcome says (the domain's and the wire's).
pub fn result_of(
    success: bool,
    failure_code: Option<&str>,
    canary_aborted: bool,
    rolled_back: bool,
) -> &'static str {
    match failure_code {
        _ if success => "success",
        Some("CANCELLED") => "cancelled",
        _ if canary_aborted => "canary_aborted",
        _ if rolled_back => "rolled_back",
        _ => "failure",
    }
}

/// A progress line and, where a script follows the step (the archive, each
/// build attempt, the image), its facts as fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "ProgressRepr", into = "ProgressRepr")]
pub struct Progress {
    pub message: String,
    pub build: BuildFacts,
}

/// What a build progress line is about; each unset where it does not apply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuildFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The source archive's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_sha256: Option<String>,
    /// Where the archive is stored, `gs://BUCKET/OBJECT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_uri: Option<String>,
    /// The pushed image, by digest when Cloud Build reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// How the store keeps a progress event: a bare string (as every event
/// written before progress had fields, so those still read) unless it
/// carries facts.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProgressRepr {
    Text(String),
    Typed { message: String, build: BuildFacts },
}

impl From<ProgressRepr> for Progress {
    fn from(r: ProgressRepr) -> Self {
        match r {
            ProgressRepr::Text(message) => Progress {
                message,
                build: BuildFacts::default(),
            },
            ProgressRepr::Typed { message, build } => Progress { message, build },
        }
    }
}

impl From<&str> for Progress {
    fn from(message: &str) -> Self {
        Progress {
            message: message.into(),
            build: BuildFacts::default(),
        }
    }
}

impl From<Progress> for ProgressRepr {
    fn from(p: Progress) -> Self {
        if p.build == BuildFacts::default() {
            ProgressRepr::Text(p.message)
        } else {
            ProgressRepr::Typed {
                message: p.message,
                build: p.build,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    StageStarted,
    StageFinished {
        ok: bool,
        duration: Duration,
    },
    Progress(Progress),
    Log(String),
    Check(CheckResult),
    Probe(ProbeResult),
    Retry {
        operation: String,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// What analysis found; `dockerfile` is the generated one, if any.
    Plan {
        plan: Box<crate::analysis::BuildPlan>,
        dockerfile: Option<String>,
    },
    /// A canary step judged.
    CanaryStep(Box<super::canary::StepResult>),
    Outcome(Box<Outcome>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub deployment_id: String,
    /// From 1, without gaps, per run.
    pub seq: u64,
    pub stage: Option<Stage>,
    pub time: SystemTime,
    pub kind: EventKind,
}

/// Where a deployment's events and progress are kept: the deployment
/// store, behind this narrow interface so the pipeline knows nothing of it.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Keeps one event (its `seq` already set), retrying what a store may
    /// answer transiently. An error is final: the event was not kept and
    /// the run stops at its next checkpoint.
    async fn record(&self, event: &Event) -> Result<(), JournalError>;
    /// Keeps several events at once (a burst of log lines), all or none.
    async fn record_all(&self, events: &[Event]) -> Result<(), JournalError> {
        for e in events {
            self.record(e).await?;
        }
        Ok(())
    }
    /// Keeps the run's progress, so a restarted daemon resumes from it.
    async fn checkpoint(&self, d: &super::Deployment) -> Result<(), JournalError>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// Another daemon holds this deployment now: this run must stop.
    #[error("deployment {id} is now run by {owner}")]
    LeaseLost { id: String, owner: String },
    #[error("the deployment store failed: {0}")]
    Store(String),
}

#[derive(Clone)]
enum Sink {
    /// A client's stream (Preflight, Verify): nothing is kept.
    Channel(mpsc::Sender<Event>),
    /// Kept in the store, where streams follow it.
    Journal(Arc<dyn Journal>),
    None,
}

/// Hands a run's events to whoever listens, numbering them. A listener that
/// went away (a client that disconnected) does not stop the run: events are
/// then dropped and the run still finishes, logs and counts its outcome.
#[derive(Clone)]
pub struct Reporter {
    deployment_id: String,
    sink: Sink,
    /// The next event's seq; a lock, so seqs stay gap-free under failures.
    next_seq: Arc<tokio::sync::Mutex<u64>>,
}

impl Reporter {
    pub fn new(deployment_id: String, tx: mpsc::Sender<Event>) -> Self {
        Self::with_sink(deployment_id, Sink::Channel(tx), 1)
    }

    /// Events kept in `journal`, numbered from `next_seq` (1 for a new
    /// run; one past the last kept event for a resumed one).
    pub fn journaled(deployment_id: String, journal: Arc<dyn Journal>, next_seq: u64) -> Self {
        Self::with_sink(deployment_id, Sink::Journal(journal), next_seq)
    }

    /// A reporter nobody listens to (benches, nested runs).
    pub fn detached(deployment_id: String) -> Self {
        Self::with_sink(deployment_id, Sink::None, 1)
    }

    fn with_sink(deployment_id: String, sink: Sink, next_seq: u64) -> Self {
        Self {
            deployment_id,
            sink,
            next_seq: Arc::new(tokio::sync::Mutex::new(next_seq.max(1))),
        }
    }

    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    pub async fn emit(&self, stage: Option<Stage>, kind: EventKind) {
        if let Err(e) = self.try_emit(stage, kind).await {
            tracing::error!(deployment_id = %self.deployment_id, error = %e, "event not kept");
        }
    }

    /// Like `emit`, but says whether a journaled event was kept.
    pub async fn try_emit(
        &self,
        stage: Option<Stage>,
        kind: EventKind,
    ) -> Result<(), JournalError> {
        let mut next = self.next_seq.lock().await;
        let event = Event {
            deployment_id: self.deployment_id.clone(),
            seq: *next,
            stage,
            time: SystemTime::now(),
            kind,
        };
        match &self.sink {
            Sink::None => {}
            // A closed channel means the client left; the run goes on regardless.
            Sink::Channel(tx) => {
                let _ = tx.send(event).await;
            }
            Sink::Journal(j) => {
                j.record(&event).await?;
            }
        }
        *next += 1;
        Ok(())
    }

    /// Several events of one stage at once (log lines read together), kept
    /// in one write.
    pub async fn emit_all(&self, stage: Option<Stage>, kinds: Vec<EventKind>) {
        if kinds.is_empty() {
            return;
        }
        let mut next = self.next_seq.lock().await;
        let now = SystemTime::now();
        let events: Vec<Event> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                deployment_id: self.deployment_id.clone(),
                seq: *next + i as u64,
                stage,
                time: now,
                kind,
            })
            .collect();
        let n = events.len() as u64;
        match &self.sink {
            Sink::None => {}
            Sink::Channel(tx) => {
                for e in events {
                    let _ = tx.send(e).await;
                }
            }
            Sink::Journal(j) => {
                if let Err(e) = j.record_all(&events).await {
                    tracing::error!(deployment_id = %self.deployment_id, error = %e, "events not kept");
                    return;
                }
            }
        }
        *next += n;
    }

    /// Keeps the run's progress before it waits on something it changed
    /// outside; a no-op when nothing is kept.
    pub async fn checkpoint(&self, d: &super::Deployment) -> Result<(), JournalError> {
        match &self.sink {
            Sink::Journal(j) => j.checkpoint(d).await,
            _ => Ok(()),
        }
    }

    pub async fn progress(&self, stage: Stage, message: impl Into<String>) {
        self.build_progress(stage, message, BuildFacts::default())
            .await;
    }

    /// A progress line with the build facts it is about.
    pub async fn build_progress(
        &self,
        stage: Stage,
        message: impl Into<String>,
        build: BuildFacts,
    ) {
        self.emit(
            Some(stage),
            EventKind::Progress(Progress {
                message: message.into(),
                build,
            }),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Progress kept before it had fields reads as a message; one with
    /// facts round-trips; one without is kept as the bare string still.
    #[test]
    fn progress_reads_what_earlier_versions_kept() {
        let old: EventKind = serde_json::from_str(r#"{"Progress":"build attempt 1 of 3"}"#)
            .expect("an event kept before");
        assert_eq!(old, EventKind::Progress("build attempt 1 of 3".into()));
        let typed = EventKind::Progress(Progress {
            message: "build b1 queued".into(),
            build: BuildFacts {
                build_id: Some("b1".into()),
                attempt: Some(2),
                ..BuildFacts::default()
            },
        });
        let kept = serde_json::to_string(&typed).expect("serializes");
        assert_eq!(
            serde_json::from_str::<EventKind>(&kept).expect("reads back"),
            typed
        );
        assert_eq!(
            serde_json::to_string(&EventKind::Progress("plain".into())).expect("serializes"),
            r#"{"Progress":"plain"}"#
        );
    }
}
