//! What a run reports while it works, and how it ends.

use std::time::{Duration, SystemTime};

use serde::Serialize;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub inconclusive: bool,
    pub detail: String,
    pub remediation: Vec<String>,
}

impl CheckResult {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            inconclusive: false,
            detail: detail.into(),
            remediation: vec![],
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, remediation: Vec<String>) -> Self {
        Self {
            name,
            ok: false,
            inconclusive: false,
            detail: detail.into(),
            remediation,
        }
    }

    pub fn inconclusive(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            inconclusive: true,
            detail: detail.into(),
            remediation: vec!["Run preflight again; if it persists, check the API's status page and your network path to Google.".into()],
        }
    }

    pub fn result_label(&self) -> &'static str {
        match (self.ok, self.inconclusive) {
            (true, _) => "pass",
            (false, true) => "inconclusive",
            (false, false) => "fail",
        }
    }
}

/// One health-check attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeStats {
    pub attempts: u32,
    pub p50: Duration,
    pub p95: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub retriable: bool,
    pub remediation: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    pub rolled_back: bool,
    pub probe_stats: Option<ProbeStats>,
    pub final_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum EventKind {
    StageStarted,
    StageFinished {
        ok: bool,
        duration: Duration,
    },
    Progress(String),
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
        plan: Box<super::analyze::BuildPlan>,
        dockerfile: Option<String>,
    },
    Outcome(Box<Outcome>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub deployment_id: String,
    pub stage: Option<Stage>,
    pub time: SystemTime,
    pub kind: EventKind,
}

/// Hands a run's events to whoever listens. A listener that went away (a
/// client that disconnected) does not stop the run: events are then dropped
/// and the run still finishes, logs and counts its outcome.
#[derive(Clone)]
pub struct Reporter {
    deployment_id: String,
    tx: Option<mpsc::Sender<Event>>,
}

impl Reporter {
    pub fn new(deployment_id: String, tx: mpsc::Sender<Event>) -> Self {
        Self {
            deployment_id,
            tx: Some(tx),
        }
    }

    /// A reporter nobody listens to (benches, nested runs).
    pub fn detached(deployment_id: String) -> Self {
        Self {
            deployment_id,
            tx: None,
        }
    }

    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    pub async fn emit(&self, stage: Option<Stage>, kind: EventKind) {
        let Some(tx) = &self.tx else { return };
        let event = Event {
            deployment_id: self.deployment_id.clone(),
            stage,
            time: SystemTime::now(),
            kind,
        };
        // A closed channel means the client left; the run goes on regardless.
        let _ = tx.send(event).await;
    }

    pub async fn progress(&self, stage: Stage, message: impl Into<String>) {
        self.emit(Some(stage), EventKind::Progress(message.into()))
            .await;
    }
}
