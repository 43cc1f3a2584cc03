//! What the deployment store keeps, in domain terms, and the narrow trait
//! it is reached through. `crate::store` implements it over SQL (SQLite or
//! PostgreSQL); nothing here knows SQL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::pipeline::error::FailureCode;
use crate::pipeline::event::{Event, Outcome, Stage};
use crate::pipeline::model::Target;
use crate::pipeline::Deployment;

/// Where a deployment stands, as its resource says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "RUNNING" => State::Running,
            "SUCCEEDED" => State::Succeeded,
            "FAILED" => State::Failed,
            "CANCELLED" => State::Cancelled,
            _ => return None,
        })
    }

    /// The state an outcome ends a deployment in: a cancellation is not a
    /// failure.
    pub fn of(outcome: &Outcome) -> State {
        match &outcome.error {
            _ if outcome.success => State::Succeeded,
            Some(f) if f.code == FailureCode::Cancelled.as_str() => State::Cancelled,
            _ => State::Failed,
        }
    }
}

/// A deployment as the store keeps it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub request_id: Option<String>,
    /// Digest of the request, to tell a repeated request from a different
    /// one under the same request_id.
    pub request_digest: String,
    pub target: Target,
    pub state: State,
    pub stage: Option<Stage>,
    pub caller: String,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub ended: Option<SystemTime>,
    /// The daemon that holds the lease; `None` once ended.
    pub owner: Option<String>,
    pub lease_until: SystemTime,
    pub cancel_requested: bool,
    /// How often a daemon resumed it.
    pub resumed: u32,
    /// The seq of its last kept event (0: none).
    pub last_seq: u64,
    /// The pipeline's progress, from which a run resumes; `None` when it
    /// cannot be read (written by another version, or damaged), which ends
    /// the deployment when a daemon claims it.
    pub progress: Option<Deployment>,
    pub outcome: Option<Outcome>,
}

/// A deployment to create, leased to `owner` until `lease_until`.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub request_id: Option<String>,
    pub request_digest: String,
    pub caller: String,
    pub owner: String,
    pub lease_until: SystemTime,
    pub progress: Deployment,
}

#[derive(Debug, Clone)]
pub enum Created {
    /// Recorded; the caller runs it.
    New,
    /// The request_id was seen before: this is that deployment.
    Existing(Box<Record>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub project: Option<String>,
    pub region: Option<String>,
    pub service: Option<String>,
    pub state: Option<State>,
}

/// Where a page of a listing starts: after this deployment (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_ms: i64,
    pub id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The service has a running deployment (one per service, across
    /// every daemon sharing the store).
    #[error("deployment {holder} of this service is running")]
    Busy { holder: String },
    /// This daemon no longer holds the deployment's lease.
    #[error("the lease of deployment {id} is held by another daemon")]
    LeaseLost { id: String },
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Backend(String),
}

/// The deployment store. Every write a run makes names its owner, and is
/// refused (`LeaseLost`) once another daemon holds the lease, so two
/// daemons never both write one deployment's history.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a new deployment, or finds the one with the same
    /// request_id. `Busy` when its service has one running.
    async fn create(&self, new: &NewDeployment) -> Result<Created, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// Newest first; the cursor of the next page when there is one.
    async fn list(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Record>, Option<Cursor>), StoreError>;
    /// Events with seq greater than `after_seq`, in order, at most `limit`.
    async fn events(&self, id: &str, after_seq: u64, limit: u32) -> Result<Vec<Event>, StoreError>;
    /// Keeps `events` (in seq order) and then `progress`, in one
    /// transaction, as `owner`: all or nothing. An outcome event, last,
    /// also ends the deployment.
    async fn write(
        &self,
        owner: &str,
        events: &[Event],
        progress: Option<&Deployment>,
    ) -> Result<(), StoreError>;
    /// Whether a write costs mostly per transaction (a database), so that
    /// gathering events into fewer writes pays.
    fn prefers_batches(&self) -> bool {
        true
    }
    /// Extends the leases `owner` holds on `ids`; returns the ones it still
    /// holds, each with whether a cancel was requested.
    async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        until: SystemTime,
    ) -> Result<Vec<(String, bool)>, StoreError>;
    /// Takes over running deployments whose lease has expired, never
    /// `owner`'s own (it may be running them on a lapsed lease), or with
    /// `own` (at start) also those `owner` held before it restarted;
    /// returns them, each with the owner it had.
    async fn claim(
        &self,
        owner: &str,
        own: bool,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<(Record, Option<String>)>, StoreError>;
    /// Gives the leases up now, for the next daemon to take.
    async fn release(&self, owner: &str, ids: &[String]) -> Result<(), StoreError>;
    /// Marks a running deployment to be cancelled; `None` when there is no
    /// such deployment.
    async fn request_cancel(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// Deletes deployments (and their events) that ended before `before`.
    async fn prune(&self, before: SystemTime) -> Result<u64, StoreError>;
}

/// The stage the last StageStarted event of `events` names: what a listing
/// shows between checkpoints.
pub fn last_stage_started(events: &[Event]) -> Option<Stage> {
    events.iter().rev().find_map(|e| match e.kind {
        crate::pipeline::event::EventKind::StageStarted => e.stage,
        _ => None,
    })
}

pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}
