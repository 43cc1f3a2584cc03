//! Durable deployments: every Deploy becomes a record in the [`Store`],
//! runs detached from any client, keeps its events there (numbered, gap
//! free), and is leased by one daemon at a time. A daemon that starts
//! resumes the deployments it held and takes over those whose daemon's
//! lease expired; streams (Deploy, WatchDeployment) read the store, so they
//! follow a deployment wherever it runs.
//!
//! Domain code: it knows the pipeline and the store's trait, not SQL and
//! not gRPC.

pub mod delivery;
pub mod memory;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::pipeline::event::{Event, EventKind, Journal, JournalError, Reporter};
use crate::pipeline::model::{DeployRequest, Target};
use crate::pipeline::{Deployment, Pipeline};
use crate::telemetry::metrics;
pub use store::{Created, Cursor, Filter, NewDeployment, Record, State, Store, StoreError};

/// How the durable runs behave (not one deploy's settings).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This daemon's name in leases. A daemon that restarts under the same
    /// name resumes its deployments at once instead of after the lease.
    pub owner: String,
    /// How long a lease lasts without a heartbeat; another daemon takes a
    /// deployment over once it has expired.
    pub lease: Duration,
    /// How often a stream of a deployment run elsewhere reads the store.
    pub watch_poll: Duration,
    /// How long ended deployments are kept.
    pub retention: Duration,
    pub prune_every: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            owner: default_owner(None),
            lease: Duration::from_secs(30),
            watch_poll: Duration::from_millis(500),
            retention: Duration::from_secs(90 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
        }
    }
}

/// `host:port`, unique per listening daemon on a host: a second daemon
/// cannot bind the same port, so one that can is the only holder of that
/// name.
pub fn default_owner(port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    match port {
        Some(p) => format!("{host}:{p}"),
        None => format!("{host}:{}", std::process::id()),
    }
}

/// Events read from the store per query.
const PAGE: u32 = 256;
/// Deployments read per page of a service's history.
const HISTORY_PAGE: u32 = 500;
/// Deployments read at most for one service's delivery metrics.
pub const HISTORY_LIMIT: usize = 20_000;
/// Deployments taken over per heartbeat.
const CLAIM_BATCH: u32 = 32;
/// Events buffered per stream.
const STREAM_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("a deploy of {service} in {project}/{region} is already running (deployment {holder}); watch it with `deployd watch {holder}` or cancel it with `deployd cancel {holder}`", service = .target.service, project = .target.project, region = .target.region)]
    Busy { target: Target, holder: String },
    #[error("request_id {request_id:?} was used for deployment {id} with a different request; send a new request_id for a different deploy")]
    RequestMismatch { request_id: String, id: String },
    #[error("this daemon is shutting down and takes no new deployments; send it to another daemon or again after the restart")]
    Draining,
    #[error("the deployment store failed: {0}")]
    Store(#[source] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no deployment {0}")]
    NotFound(String),
    #[error("deployment {} has already ended ({})", .0.id, .0.state.as_str())]
    Ended(Box<Record>),
    #[error("the deployment store failed: {0}")]
    Store(#[source] StoreError),
}

/// Why a stream of events ended without an outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchEnd {
    #[error("deployd is shutting down; deployment {id} continues on the next daemon: watch it with `deployd watch {id}` (WatchDeployment id={id} after_seq={last_seq})")]
    Draining { id: String, last_seq: u64 },
    #[error("reading deployment {id} from the store failed: {error}")]
    Store { id: String, error: StoreError },
}

/// A deploy accepted: a new deployment, or the earlier one its request_id
/// named.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub attached: bool,
}

struct Run {
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
    /// Each event once it is kept, for streams of this daemon to follow
    /// without reading it back from the store.
    live: broadcast::Sender<Arc<Event>>,
    /// When the deployment was created (on this daemon or another).
    created: SystemTime,
}

/// The creation time of the oldest deployment in `runs`, for the alert on
/// a deployment stuck in progress.
fn publish_oldest(runs: &HashMap<String, Run>) {
    metrics::oldest_running(runs.values().map(|r| r.created).min());
}

/// Events a slow stream may fall behind the run before it reads the rest
/// from the store. A broadcast channel allocates all its slots up front,
/// for every running deployment: they hold `Arc`s, and not too many
/// (1,024 slots of 176-byte events were ~200 KiB per run, ~200 of the
/// 332 MiB peak of 1,000 concurrent deploys; `cargo bench --bench load`).
const LIVE_BUFFER: usize = 256;

pub struct Manager {
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
    config: ManagerConfig,
    runs: Mutex<HashMap<String, Run>>,
    tasks: TaskTracker,
    draining: CancellationToken,
}

/// What a run asks its writer to keep, in order.
enum Write {
    Event(Event),
    /// Everything before it, then this progress; answered once kept.
    Checkpoint(Box<Deployment>, oneshot::Sender<Result<(), JournalError>>),
}

/// A run's journal: events go to a writer task that keeps them in the
/// store (as many as are waiting, in one transaction) and only then
/// publishes them to the daemon's streams; a checkpoint waits until it and
/// everything before it is kept. So the run does not wait on the store
/// for each event, yet nothing is shown that a crash could take back.
struct StoreJournal {
    queue: mpsc::Sender<Write>,
    /// Set when the writer gave up; the run stops at its next checkpoint.
    failed: Arc<Mutex<Option<JournalError>>>,
}

fn journal_error(e: StoreError) -> JournalError {
    match e {
        StoreError::LeaseLost { id } => JournalError::LeaseLost {
            id,
            owner: "another daemon".into(),
        },
        other => JournalError::Store(other.to_string()),
    }
}

/// How long the writer gathers events before it keeps them; what a stream
/// waits at most for an event beyond its write.
const GATHER: Duration = Duration::from_millis(5);
/// Writes queued before the writer starts a transaction, at most.
const WRITE_BATCH: usize = 512;
/// Attempts at one transaction before the run is stopped.
const WRITE_ATTEMPTS: u32 = 5;

impl StoreJournal {
    fn failure(&self) -> Option<JournalError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stopped() -> JournalError {
        JournalError::Store("the journal writer has stopped".into())
    }
}

#[async_trait::async_trait]
impl Journal for StoreJournal {
    async fn record(&self, event: &Event) -> Result<(), JournalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.queue
            .send(Write::Event(event.clone()))
            .await
            .map_err(|_| Self::stopped())
    }

    async fn record_all(&self, events: &[Event]) -> Result<(), JournalError> {
        for e in events {
            self.record(e).await?;
        }
        Ok(())
    }

    async fn checkpoint(&self, d: &Deployment) -> Result<(), JournalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Write::Checkpoint(Box::new(d.clone()), done))
            .await
            .map_err(|_| Self::stopped())?;
        answer.await.unwrap_or_else(|_| Err(Self::stopped()))
    }
}

/// Keeps what the run queued, in order, batching what is waiting.
async fn write_journal(
    store: Arc<dyn Store>,
    owner: String,
    mut queue: mpsc::Receiver<Write>,
    live: broadcast::Sender<Arc<Event>>,
    failed: Arc<Mutex<Option<JournalError>>>,
) {
    let mut pending: Vec<Write> = Vec::new();
    let gather = store.prefers_batches();
    while let Some(first) = queue.recv().await {
        let mut flush = matches!(first, Write::Checkpoint(..));
        pending.push(first);
        // Events come in bursts (a stage ends, the next starts, it says
        // what it does): gathering for a moment keeps a burst in one
        // transaction. A checkpoint, which the run waits on, ends it.
        let until = tokio::time::Instant::now() + if gather { GATHER } else { Duration::ZERO };
        while !flush && pending.len() < WRITE_BATCH {
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(w)) => {
                    flush = matches!(w, Write::Checkpoint(..));
                    pending.push(w);
                }
                Ok(None) | Err(_) => break,
            }
        }
        while pending.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(w) => pending.push(w),
                Err(_) => break,
            }
        }
        // One transaction per checkpoint (with the events before it), and
        // one for the events after the last.
        let mut events = vec![];
        let mut writes = std::mem::take(&mut pending).into_iter().peekable();
        while writes.peek().is_some() {
            let mut checkpoint = None;
            for w in writes.by_ref() {
                match w {
                    Write::Event(e) => events.push(e),
                    Write::Checkpoint(d, done) => {
                        checkpoint = Some((d, done));
                        break;
                    }
                }
            }
            let progress = checkpoint.as_ref().map(|(d, _)| d.as_ref());
            let result = write_with_retries(store.as_ref(), &owner, &events, progress).await;
            match &result {
                Ok(()) => {
                    for e in events.drain(..) {
                        // No listener is fine: streams catch up from the store.
                        let _ = live.send(Arc::new(e));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the deployment's journal could not be kept; the run stops");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                }
            }
            if let Some((_, done)) = checkpoint {
                let _ = done.send(result.clone());
            }
            if result.is_err() {
                // Nothing after a lost write may be kept (seqs must stay
                // contiguous); waiting checkpoints hear why.
                for w in writes.by_ref() {
                    if let Write::Checkpoint(_, done) = w {
                        let _ = done.send(result.clone());
                    }
                }
                while let Some(w) = queue.recv().await {
                    if let Write::Checkpoint(_, done) = w {
                        let _ = done.send(result.clone());
                    }
                }
                return;
            }
        }
    }
}

async fn write_with_retries(
    store: &dyn Store,
    owner: &str,
    events: &[Event],
    progress: Option<&Deployment>,
) -> Result<(), JournalError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match store.write(owner, events, progress).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::LeaseLost { .. }) => return Err(journal_error(e)),
            Err(e) if attempt >= WRITE_ATTEMPTS => return Err(journal_error(e)),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "deployment store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// Resumes after which a deployment is given up: its daemons keep dying
/// while running it, and another try would likely do the same.
pub const MAX_RESUMES: u32 = 5;

/// The outcome of a deployment that cannot be resumed.
pub fn unresumable(id: &str, why: &str) -> crate::pipeline::event::Outcome {
    use crate::pipeline::event::{Failure, Outcome};
    Outcome {
        error: Some(Failure {
            code: crate::pipeline::error::FailureCode::ResumeImpossible.as_str().into(),
            message: format!("deployment {id} could not be resumed: {why}"),
            retriable: true,
            remediation: vec![
                format!("Check the daemon logs for deployment {id}, then deploy again; Cloud Run keeps serving what it served (see `deployd status {id}` for the last step recorded)."),
            ],
        }),
        ..Outcome::default()
    }
}

/// A stable digest of a request: the same request gives the same digest.
pub fn request_digest(req: &DeployRequest) -> String {
    // The domain request serializes deterministically (BTreeMaps, fixed
    // field order).
    let json = serde_json::to_vec(req).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes a run from the table when its task ends, however it ends.
struct RunGone {
    manager: Arc<Manager>,
    id: String,
}

impl Drop for RunGone {
    fn drop(&mut self) {
        let mut runs = self.manager.lock_runs();
        runs.remove(&self.id);
        publish_oldest(&runs);
    }
}

impl Manager {
    pub fn new(store: Arc<dyn Store>, pipeline: Arc<Pipeline>, config: ManagerConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            pipeline,
            config,
            runs: Mutex::default(),
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.config.owner
    }

    /// How long ended deployments are kept: as far back as history goes.
    pub fn retention(&self) -> Duration {
        self.config.retention
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_until(&self) -> SystemTime {
        SystemTime::now() + self.config.lease
    }

    /// Records a deploy and starts it, or attaches to the deployment its
    /// request_id names.
    pub async fn submit(
        self: &Arc<Self>,
        req: DeployRequest,
        request_id: Option<String>,
        caller: String,
        span: tracing::Span,
    ) -> Result<Submitted, SubmitError> {
        if self.draining.is_cancelled() {
            return Err(SubmitError::Draining);
        }
        let digest = request_digest(&req);
        let target = req.target.clone();
        let d = Deployment::new(uuid::Uuid::new_v4().to_string(), req);
        let new = NewDeployment {
            request_id: request_id.clone(),
            request_digest: digest.clone(),
            caller,
            owner: self.config.owner.clone(),
            lease_until: self.lease_until(),
            progress: d.clone(),
        };
        match self.store.create(&new).await {
            Ok(Created::New) => {
                let id = d.id.clone();
                span.record("deployment_id", id.as_str());
                self.spawn_run(d, 1, false, None, SystemTime::now(), span);
                Ok(Submitted {
                    id,
                    attached: false,
                })
            }
            Ok(Created::Existing(r)) if r.request_digest == digest => Ok(Submitted {
                id: r.id,
                attached: true,
            }),
            Ok(Created::Existing(r)) => Err(SubmitError::RequestMismatch {
                request_id: request_id.unwrap_or_default(),
                id: r.id,
            }),
            Err(StoreError::Busy { holder }) => Err(SubmitError::Busy { target, holder }),
            Err(e) => Err(SubmitError::Store(e)),
        }
    }

    /// Runs `d` here, detached from every client: it ends by keeping its
    /// outcome, or when the daemon drains or loses its lease.
    fn spawn_run(
        self: &Arc<Self>,
        d: Deployment,
        next_seq: u64,
        cancel_requested: bool,
        how: Option<&'static str>,
        created: SystemTime,
        span: tracing::Span,
    ) {
        let id = d.id.clone();
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let cancel = CancellationToken::new();
        if cancel_requested {
            cancel.cancel();
        }
        let (queue, writes) = mpsc::channel(WRITE_BATCH * 2);
        let failed = Arc::new(Mutex::new(None));
        // Tracked like the run, so a drain waits for what it queued.
        self.tasks.spawn(write_journal(
            self.store.clone(),
            self.config.owner.clone(),
            writes,
            live.clone(),
            failed.clone(),
        ));
        let journal = Arc::new(StoreJournal { queue, failed });
        let reporter = Reporter::journaled(id.clone(), journal, next_seq);
        let this = self.clone();
        let run_cancel = cancel.clone();
        let gone_id = id.clone();
        // Held while spawning, so the task's own removal comes after this
        // insert even when it ends at once.
        let mut runs = self.lock_runs();
        let task = self.tasks.spawn(
            async move {
                let _gone = RunGone {
                    manager: this.clone(),
                    id: gone_id,
                };
                let end = this.pipeline.deploy(d, reporter, run_cancel).await;
                if end.handed_over {
                    return;
                }
                if let Some(how) = how {
                    metrics::deployment_resumed(how, end.outcome.result());
                }
                this.observe_delivery(&end.deployment, &end.outcome).await;
            }
            .instrument(span),
        );
        runs.insert(
            id,
            Run {
                cancel,
                abort: task.abort_handle(),
                live,
                created,
            },
        );
        publish_oldest(&runs);
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.store.get(id).await
    }

    /// Ended deployments of `target`, newest first, from the newest down
    /// to the first that `enough` accepts (included), skipping `skip`; at
    /// most [`HISTORY_LIMIT`] are read.
    async fn history(
        &self,
        target: &Target,
        skip: Option<&str>,
        mut enough: impl FnMut(&Record, &delivery::Delivery) -> bool,
    ) -> Result<Vec<delivery::Delivery>, StoreError> {
        let filter = Filter {
            project: Some(target.project.clone()),
            region: Some(target.region.clone()),
            service: Some(target.service.clone()),
            state: None,
        };
        let mut found = vec![];
        let mut cursor = None;
        let mut read = 0;
        loop {
            let (page, next) = self
                .store
                .list(&filter, cursor.as_ref(), HISTORY_PAGE)
                .await?;
            for rec in &page {
                read += 1;
                if Some(rec.id.as_str()) == skip {
                    continue;
                }
                if let Some(d) = delivery::Delivery::of(rec) {
                    let stop = enough(rec, &d);
                    found.push(d);
                    if stop {
                        return Ok(found);
                    }
                }
            }
            match next {
                Some(c) if read < HISTORY_LIMIT => cursor = Some(c),
                _ => return Ok(found),
            }
        }
    }

    /// The four DORA keys of `target` over `[start, end)`, from the store.
    pub async fn delivery_metrics(
        &self,
        target: &Target,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<delivery::DeliveryMetrics, StoreError> {
        // Back past `start` to the last success before it, to know whether
        // the service was failing when the window began.
        let history = self
            .history(target, None, |rec, d| {
                rec.created < start && d.kind == delivery::Kind::Success
            })
            .await?;
        Ok(delivery::compute(&history, start, end))
    }

    /// The fleet's DORA series for a run that ended here: a change failure,
    /// or a success with its lead time and the restore it ended.
    async fn observe_delivery(&self, d: &Deployment, outcome: &crate::pipeline::event::Outcome) {
        let Some(kind) = delivery::kind(State::of(outcome), Some(d)) else {
            return;
        };
        let now = SystemTime::now();
        match kind {
            delivery::Kind::ChangeFailure => metrics::change_failure(),
            delivery::Kind::Success => {
                let this = delivery::Delivery {
                    id: d.id.clone(),
                    ended: now,
                    kind,
                    commit_time: d.source_commit_time.map(delivery::unix),
                };
                if let Some(lead) = this.lead_time() {
                    metrics::change_lead_time(lead);
                }
                let target = &d.request.target;
                match self
                    .history(target, Some(&d.id), |_, p| {
                        p.kind == delivery::Kind::Success
                    })
                    .await
                {
                    Ok(previous) => {
                        if let Some(t) = delivery::restored_by(&this, &previous) {
                            metrics::time_to_restore(t);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the service's history for time to restore failed")
                    }
                }
            }
            delivery::Kind::NotDelivered | delivery::Kind::Cancelled => {}
        }
    }

    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Record>, Option<Cursor>), StoreError> {
        self.store.list(filter, after, limit).await
    }

    /// Asks for a running deployment to be cancelled: at once when it runs
    /// here, at the owner's next heartbeat otherwise.
    pub async fn cancel(&self, id: &str) -> Result<Record, CancelError> {
        let rec = self
            .store
            .request_cancel(id)
            .await
            .map_err(CancelError::Store)?
            .ok_or_else(|| CancelError::NotFound(id.to_string()))?;
        if rec.state != State::Running {
            return Err(CancelError::Ended(Box::new(rec)));
        }
        if let Some(run) = self.lock_runs().get(id) {
            run.cancel.cancel();
        }
        Ok(rec)
    }

    /// The stored events after `after_seq`, then the live ones until the
    /// outcome. Wakes on this daemon's writes; polls for another's.
    pub fn watch(
        self: &Arc<Self>,
        id: String,
        after_seq: u64,
    ) -> impl Stream<Item = Result<Event, WatchEnd>> + Send + 'static {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            this.follow(id, after_seq, tx).await;
        });
        ReceiverStream::new(rx)
    }

    async fn follow(&self, id: String, mut last: u64, tx: mpsc::Sender<Result<Event, WatchEnd>>) {
        let draining = |last_seq| WatchEnd::Draining {
            id: id.clone(),
            last_seq,
        };
        loop {
            // Subscribed before the store is read, so nothing falls
            // between the two; seqs drop what both deliver.
            let live = self.lock_runs().get(&id).map(|r| r.live.subscribe());
            // What is kept already.
            loop {
                let batch = match self.store.events(&id, last, PAGE).await {
                    Ok(b) => b,
                    Err(error) => {
                        let _ = tx.send(Err(WatchEnd::Store { id, error })).await;
                        return;
                    }
                };
                let full = batch.len() == PAGE as usize;
                for e in batch {
                    last = e.seq;
                    let is_outcome = matches!(e.kind, EventKind::Outcome(_));
                    if tx.send(Ok(e)).await.is_err() {
                        return; // the client left; the run goes on
                    }
                    if is_outcome {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            match live {
                // Run here: follow it as it happens.
                Some(mut rx) => loop {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Ok(e) if e.seq <= last => continue,
                            Ok(e) if e.seq == last + 1 => {
                                last = e.seq;
                                let is_outcome = matches!(e.kind, EventKind::Outcome(_));
                                if tx.send(Ok(Arc::unwrap_or_clone(e))).await.is_err() {
                                    return;
                                }
                                if is_outcome {
                                    return;
                                }
                            }
                            // Fell behind, or the run stopped here: the
                            // store has the rest.
                            Ok(_) | Err(_) => break,
                        },
                        _ = self.draining.cancelled() => {
                            let _ = tx.send(Err(draining(last))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                    }
                },
                // Run elsewhere (or ended): read the store now and then.
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.watch_poll) => {}
                        _ = self.draining.cancelled() => {
                            let _ = tx.send(Err(draining(last))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                    }
                    // A deployment that ended has an outcome event; one that
                    // is gone (pruned) would otherwise be watched forever.
                    match self.store.get(&id).await {
                        Ok(Some(r)) if r.state != State::Running && r.last_seq <= last => return,
                        Ok(None) => return,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Resumes this daemon's own unfinished deployments and those whose
    /// daemon's lease expired, then keeps leases, cancels and history in
    /// order until the daemon drains. Awaited before the daemon serves:
    /// claiming "its own" deployments while requests already arrive would
    /// take (and count resumed) one this process just created.
    pub async fn start_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.claim_and_resume(true).await;
        let this = self.clone();
        tokio::spawn(async move {
            let beat =
                (this.config.lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(5));
            let mut heartbeat = tokio::time::interval(beat);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut prune = tokio::time::interval(this.config.prune_every);
            loop {
                tokio::select! {
                    _ = this.draining.cancelled() => return,
                    _ = heartbeat.tick() => {
                        this.renew().await;
                        this.claim_and_resume(false).await;
                    }
                    _ = prune.tick() => this.prune().await,
                }
            }
        })
    }

    async fn renew(&self) {
        let ids: Vec<String> = self.lock_runs().keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let held = match self
            .store
            .renew(&self.config.owner, &ids, self.lease_until())
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed; trying again at the next heartbeat");
                return;
            }
        };
        let runs = self.lock_runs();
        for id in &ids {
            match held.iter().find(|(h, _)| h == id) {
                Some((_, true)) => {
                    if let Some(run) = runs.get(id) {
                        if !run.cancel.is_cancelled() {
                            tracing::info!(deployment_id = %id, "cancel requested through the store");
                            run.cancel.cancel();
                        }
                    }
                }
                Some((_, false)) => {}
                // Ended just now, or taken over: stop writing it.
                None => {
                    if let Some(run) = runs.get(id) {
                        tracing::warn!(deployment_id = %id, "lease lost; another daemon runs this deployment now");
                        run.abort.abort();
                    }
                }
            }
        }
    }

    async fn claim_and_resume(self: &Arc<Self>, own: bool) {
        if self.draining.is_cancelled() {
            return;
        }
        let claimed = match self
            .store
            .claim(&self.config.owner, own, self.lease_until(), CLAIM_BATCH)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "looking for deployments to resume failed");
                return;
            }
        };
        for (rec, previous_owner) in claimed {
            if self.lock_runs().contains_key(&rec.id) {
                continue;
            }
            let how = if previous_owner.as_deref() == Some(self.config.owner.as_str()) {
                "resumed"
            } else {
                "taken_over"
            };
            tracing::info!(deployment_id = %rec.id, how, previous_owner = ?previous_owner,
                stage = ?rec.stage, "resuming deployment");
            // Progress this daemon cannot read (another version wrote it,
            // or it was damaged), and a deployment its daemons keep dying
            // in, end FAILED, saying so, rather than stay RUNNING forever.
            let why = match &rec.progress {
                None => Some("its recorded progress cannot be read (written by another version of deployd, or damaged)".to_string()),
                Some(_) if rec.resumed > MAX_RESUMES => Some(format!(
                    "it was resumed {} times without finishing (at the {} stage)",
                    rec.resumed - 1,
                    rec.stage.map(|s| s.as_str()).unwrap_or("first")
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                self.give_up(&rec, &why).await;
                continue;
            }
            let Some(mut d) = rec.progress else { continue };
            d.resumed = rec.resumed;
            let span = tracing::info_span!("resume", deployment_id = %rec.id, how);
            self.spawn_run(
                d,
                rec.last_seq + 1,
                rec.cancel_requested,
                Some(how),
                rec.created,
                span,
            );
        }
    }

    /// Ends a claimed deployment that cannot be resumed.
    async fn give_up(&self, rec: &Record, why: &str) {
        tracing::error!(deployment_id = %rec.id, reason = %why, "giving the deployment up");
        let mut outcome = unresumable(&rec.id, why);
        outcome.failed_stage = rec.stage;
        let event = Event {
            deployment_id: rec.id.clone(),
            seq: rec.last_seq + 1,
            stage: rec.stage,
            time: SystemTime::now(),
            kind: EventKind::Outcome(Box::new(outcome)),
        };
        if let Err(e) = self.store.write(&self.config.owner, &[event], None).await {
            tracing::warn!(deployment_id = %rec.id, error = %e, "could not end the deployment");
        }
    }

    async fn prune(&self) {
        let before = SystemTime::now()
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "deleted deployments past the retention"),
            Err(e) => tracing::warn!(error = %e, "pruning history failed"),
        }
    }

    /// Stops taking work, ends every stream with where to watch next, stops
    /// the runs (every step they made outside is already recorded) and
    /// hands their leases back for the next daemon, within `grace`.
    pub async fn drain(&self, grace: Duration) {
        self.draining.cancel();
        let ids: Vec<String> = {
            let runs = self.lock_runs();
            for run in runs.values() {
                run.abort.abort();
            }
            runs.keys().cloned().collect()
        };
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("runs did not stop within the drain time");
        }
        if !ids.is_empty() {
            match self.store.release(&self.config.owner, &ids).await {
                Ok(()) => tracing::info!(
                    deployments = ids.len(),
                    "drained: running deployments handed back for the next daemon"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "handing leases back failed; they expire on their own")
                }
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }
}
