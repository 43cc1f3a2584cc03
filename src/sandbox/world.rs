//! The emulator's state: projects with their APIs, permissions, service
//! accounts, policies, repositories and services; global buckets; builds
//! and operations that progress with time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use serde_json::Value;

use super::faults::{AppResponse, BuildFault};

pub const ALL_APIS: &[&str] = &[
    "cloudbuild.googleapis.com",
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "orgpolicy.googleapis.com",
    "storage.googleapis.com",
    "serviceusage.googleapis.com",
    "monitoring.googleapis.com",
    "logging.googleapis.com",
];

/// Every permission the emulator checks; a new project's caller holds all.
pub const ALL_PERMISSIONS: &[&str] = &[
    "resourcemanager.projects.get",
    "serviceusage.services.get",
    "serviceusage.services.list",
    "serviceusage.services.enable",
    "run.services.get",
    "run.services.list",
    "run.services.create",
    "run.services.update",
    "run.services.getIamPolicy",
    "run.services.setIamPolicy",
    "run.revisions.get",
    "run.revisions.list",
    "run.operations.get",
    "cloudbuild.builds.create",
    "cloudbuild.builds.get",
    "cloudbuild.builds.list",
    "cloudbuild.builds.update",
    "cloudbuild.operations.get",
    "artifactregistry.repositories.get",
    "artifactregistry.repositories.list",
    "artifactregistry.repositories.create",
    "storage.buckets.get",
    "storage.buckets.create",
    "storage.buckets.list",
    "storage.objects.create",
    "storage.objects.get",
    "storage.objects.delete",
    "iam.serviceAccounts.actAs",
    "iam.serviceAccounts.getOpenIdToken",
    "run.routes.invoke",
    "iam.serviceAccounts.get",
    "orgpolicy.policy.get",
    "monitoring.timeSeries.list",
    "logging.logEntries.list",
];

#[derive(Debug, Clone)]
pub struct ProjectState {
    pub id: String,
    pub number: String,
    /// ACTIVE or DELETE_REQUESTED.
    pub lifecycle: String,
    pub enabled_apis: BTreeSet<String>,
    pub permissions: BTreeSet<String>,
    /// email -> disabled.
    pub service_accounts: BTreeMap<String, bool>,
    /// What Cloud Build's getDefaultServiceAccount answers: the compute
    /// default (projects created since 2024), the legacy
    /// `{number}@cloudbuild.gserviceaccount.com`, or none.
    pub default_build_service_account: Option<String>,
    /// Service accounts the caller may not act as, despite project grants.
    pub act_as_denied: BTreeSet<String>,
    /// constraint (without "constraints/") -> Policy.spec JSON.
    pub policies: BTreeMap<String, Value>,
    /// (location, repository id) -> repository.
    pub repositories: BTreeMap<(String, String), Repository>,
    /// (location, service id) -> service.
    pub services: BTreeMap<(String, String), Service>,
}

impl ProjectState {
    pub fn new(id: &str, number: &str) -> Self {
        Self {
            id: id.into(),
            number: number.into(),
            lifecycle: "ACTIVE".into(),
            enabled_apis: ALL_APIS.iter().map(|s| s.to_string()).collect(),
            permissions: ALL_PERMISSIONS.iter().map(|s| s.to_string()).collect(),
            service_accounts: BTreeMap::from([
                (
                    format!("{number}-compute@developer.gserviceaccount.com"),
                    false,
                ),
                (super::invoker_service_account(id), false),
            ]),
            default_build_service_account: Some(format!(
                "{number}-compute@developer.gserviceaccount.com"
            )),
            act_as_denied: BTreeSet::new(),
            policies: BTreeMap::new(),
            repositories: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub format: String,
    pub description: String,
    pub create_time: String,
    /// tag -> digest ("sha256:...").
    pub tags: BTreeMap<String, String>,
    /// image name -> digests pushed.
    pub digests: BTreeSet<String>,
}

/// A source archive's files and the SHA-256 of its bytes.
/// A process that started, or why it did not.
pub type NativeStart = Result<super::native::Process, super::native::NotStarted>;

#[derive(Debug)]
pub struct Unpacked {
    pub files: Vec<(String, Vec<u8>)>,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct Object {
    pub generation: i64,
    pub data: Vec<u8>,
    pub content_type: String,
    pub updated: String,
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub project_number: String,
    pub location: String,
    pub create_time: String,
    pub objects: BTreeMap<String, Object>,
}

/// What happens when an operation finishes.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Nothing beyond returning `response`.
    None,
    /// Finish a Cloud Run create/patch: make the revision, route traffic.
    RunRollout {
        project: String,
        location: String,
        service: String,
    },
    /// Finish a traffic-only Cloud Run patch: no new revision.
    RunTraffic {
        project: String,
        location: String,
        service: String,
    },
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub done_at: Instant,
    pub done: bool,
    pub metadata: Value,
    pub response: Option<Value>,
    /// gRPC code and message.
    pub error: Option<(i32, String)>,
    pub effect: Effect,
    /// When a caller first saw it done (the end of its detection lag).
    pub seen_done: Option<Instant>,
    /// Waiting for its revision's process to listen (or fail to).
    /// Processes the operation waits for, starting.
    pub native_pending: u32,
}

/// A scheduled build: its log lines appear over time, then it ends.
#[derive(Debug, Clone)]
pub struct Build {
    /// What was built, for the sandbox to run.
    pub context: Option<std::sync::Arc<Unpacked>>,
    pub id: String,
    pub project: String,
    pub request: Value,
    pub create_time: String,
    pub start_at: Instant,
    pub finish_at: Option<Instant>,
    pub lines: Vec<(Instant, String)>,
    pub written_lines: usize,
    pub final_status: String,
    pub status_detail: String,
    pub failure_type: Option<String>,
    pub failed_step: Option<usize>,
    pub cancelled: bool,
    pub finished: bool,
    /// Images to push on success: (image:tag, digest).
    pub pushes: Vec<(String, String)>,
    pub logs_bucket: String,
    pub log_object: String,
    /// When a `builds.get` first reported it finished.
    pub seen_done: Option<Instant>,
}

/// How a revision's answers go wrong, on top of what it answers: a share
/// of its requests fail with `error_status`, and every one is slower.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Misbehaviour {
    pub error_rate: f64,
    pub error_status: u16,
    pub added_latency: std::time::Duration,
}

/// One request a revision served, as Cloud Monitoring would count it.
#[derive(Debug, Clone)]
pub struct Served {
    pub project: String,
    pub location: String,
    pub service: String,
    pub revision: String,
    pub at: std::time::SystemTime,
    pub status: u16,
    pub latency: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Revision {
    /// How this revision's instances answer, always; `None` means the
    /// service's script, then 200.
    pub behavior: Option<AppResponse>,
    pub misbehaviour: Misbehaviour,
    pub name: String,
    pub generation: i64,
    pub template: Value,
    pub ready: bool,
    pub message: String,
    pub reason: String,
    pub create_time: String,
    /// How it runs here (set when the sandbox runs apps).
    pub runner: Option<super::run::Runner>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub uid: String,
    pub generation: i64,
    pub observed_generation: i64,
    /// The last accepted request body (template, traffic, ingress, labels...).
    pub spec: Value,
    pub revisions: Vec<Revision>,
    pub latest_ready: Option<String>,
    pub latest_created: Option<String>,
    pub reconciling: bool,
    pub failed_message: Option<String>,
    pub uri: String,
    pub iam_policy: Value,
    pub create_time: String,
    pub update_time: String,
    /// Scripted answers of the running app; default 200 when empty.
    pub app_script: VecDeque<AppResponse>,
    /// Tag -> its listener.
    pub tags: BTreeMap<String, TagRoute>,
}

impl Service {
    /// The traffic targets of the last accepted request, as sent.
    pub fn traffic_targets(&self) -> impl Iterator<Item = &Value> {
        self.spec
            .get("traffic")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }
}

/// A tagged traffic target's own URL, and how to stop its listener once
/// the tag is gone.
#[derive(Debug, Clone)]
pub struct TagRoute {
    pub uri: String,
    pub revision: String,
    pub stop: tokio_util::sync::CancellationToken,
}

/// One request the emulator received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Discovery method id, e.g. `cloudbuild.projects.locations.builds.create`,
    /// or `app.request` for a deployed service's own traffic.
    pub method: String,
    pub http_method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub at: Instant,
    /// Time from arrival to answer; status 0 and zero duration while unanswered.
    pub duration: std::time::Duration,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// A resumable upload session.
#[derive(Debug, Clone)]
pub struct Upload {
    pub bucket: String,
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
    /// Set once the last chunk arrived.
    pub done: Option<Value>,
}

#[derive(Debug, Default)]
pub struct World {
    /// Source archives unpacked outside the lock for a build about to be
    /// created, by (bucket, object, generation); taken by the create.
    pub unpacked: BTreeMap<(String, String, i64), std::sync::Arc<Unpacked>>,
    pub projects: BTreeMap<String, ProjectState>,
    pub buckets: BTreeMap<String, Bucket>,
    pub operations: BTreeMap<String, Operation>,
    pub builds: BTreeMap<String, Build>,
    pub uploads: BTreeMap<String, Upload>,
    /// The most recent requests (at most `Limits::requests`), oldest first.
    pub requests: VecDeque<Request>,
    /// Requests received in all, including those no longer kept.
    pub requests_seen: u64,
    /// Requests the deployed services served, newest last (at most
    /// `Limits::requests`): what Monitoring's time series are made of.
    pub served: VecDeque<Served>,
    pub build_faults: VecDeque<BuildFault>,
    pub not_ready_revisions: BTreeMap<(String, String), u32>,
    /// (project, service) whose next rollout operation reports success
    /// while its revision is still reconciling.
    pub early_success_rollouts: BTreeSet<(String, String)>,
    /// (project, service) -> how its next revision will answer.
    pub next_revision_behavior: BTreeMap<(String, String), AppResponse>,
    /// Identity tokens minted: token -> (audience, service account).
    pub id_tokens: BTreeMap<String, (String, String)>,
    pub counter: u64,
    /// What revisions' containers logged, oldest first (at most
    /// `Limits::log_entries`): what Cloud Logging's entries.list answers.
    pub log_entries: VecDeque<LogEntry>,
    /// (project, service) -> lines its next revision logs when created.
    pub next_revision_logs: BTreeMap<(String, String), Vec<LoggedLine>>,
    /// Build contexts of pushed images, by image (tag and digest forms),
    /// newest last: what the sandbox runs for a revision of that image.
    pub contexts: VecDeque<(String, std::sync::Arc<Unpacked>)>,
    /// (project, location, service, revision) -> its running process.
    pub processes: BTreeMap<(String, String, String, String), super::native::Process>,
    /// Operation name -> how its revision's process started.
    pub native_results: BTreeMap<String, Vec<(Option<String>, NativeStart)>>,
    /// How the revision a pending rollout creates will run, by (project,
    /// service).
    pub next_runner: BTreeMap<(String, String), super::run::Runner>,
    /// (project, service, revision) that ran as processes here: the ones
    /// started again when traffic comes back to them.
    pub ran_natively: std::collections::BTreeSet<(String, String, String)>,
}

/// Cloud Logging's severities, lowest first.
pub const SEVERITIES: [&str; 9] = [
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
];

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedLine {
    /// stdout or stderr.
    pub stream: String,
    pub severity: String,
    pub text: String,
}

/// A Cloud Logging entry of a Cloud Run revision.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub project: String,
    pub location: String,
    pub service: String,
    pub revision: String,
    pub line: LoggedLine,
    /// RFC 3339, microseconds.
    pub timestamp: String,
    pub insert_id: String,
}

/// How much history the sandbox keeps. Google keeps more, but an emulator
/// that runs for days must not grow with every deploy. (Cloud Run keeps
/// 1,000 revisions per service and deletes older ones automatically.)
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests recorded for tests and benches to inspect.
    pub requests: usize,
    /// Bytes of each recorded request body kept (uploads: none).
    pub request_body_bytes: usize,
    pub finished_builds: usize,
    pub done_operations: usize,
    /// As Cloud Run: beyond this, the oldest revisions are deleted (here
    /// never one that gets traffic or carries a tag).
    pub revisions_per_service: usize,
    /// Bytes of stored objects (sources, build logs); the oldest go first.
    pub object_bytes: u64,
    pub id_tokens: usize,
    pub log_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests: 20_000,
            request_body_bytes: 16 * 1024,
            finished_builds: 1_000,
            done_operations: 2_000,
            revisions_per_service: 1_000,
            object_bytes: 1024 * 1024 * 1024,
            id_tokens: 10_000,
            log_entries: 10_000,
        }
    }
}

/// What the sandbox holds, for tests and benches to check it is bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub requests: usize,
    pub builds: usize,
    pub operations: usize,
    pub revisions: usize,
    pub objects: usize,
    pub object_bytes: u64,
    pub tag_listeners: usize,
    pub id_tokens: usize,
}

impl World {
    /// Records a request a revision served.
    pub fn serve(&mut self, s: Served, limits: &Limits) {
        self.served.push_back(s);
        while self.served.len() > limits.requests {
            self.served.pop_front();
        }
    }

    /// Records a request; returns its sequence number.
    pub fn record(&mut self, mut r: Request, limits: &Limits) -> u64 {
        r.body.truncate(limits.request_body_bytes);
        self.requests.push_back(r);
        while self.requests.len() > limits.requests {
            self.requests.pop_front();
        }
        self.requests_seen += 1;
        self.requests_seen - 1
    }

    /// Keeps a line a revision's container logged.
    pub fn log(
        &mut self,
        project: &str,
        location: &str,
        service: &str,
        revision: &str,
        line: LoggedLine,
        limits: &Limits,
    ) {
        let insert_id = format!("{:016x}", self.next_id());
        self.log_entries.push_back(LogEntry {
            project: project.into(),
            location: location.into(),
            service: service.into(),
            revision: revision.into(),
            line,
            timestamp: now_rfc3339(),
            insert_id,
        });
        while self.log_entries.len() > limits.log_entries {
            self.log_entries.pop_front();
        }
    }

    /// The request of sequence number `seq`, while it is kept.
    pub fn request_mut(&mut self, seq: u64) -> Option<&mut Request> {
        let first = self.requests_seen - self.requests.len() as u64;
        let i = seq.checked_sub(first)?;
        self.requests.get_mut(usize::try_from(i).ok()?)
    }

    /// Drops what is beyond `limits`, oldest first; never a running build,
    /// a pending operation, or a revision that serves traffic or a tag.
    pub fn evict(&mut self, limits: &Limits) {
        let finished = self
            .builds
            .values()
            .filter(|b| b.finished)
            .map(|b| (b.start_at, b.id.clone()));
        for id in beyond(finished, limits.finished_builds) {
            if let Some(b) = self.builds.remove(&id) {
                if let Some(bk) = self.buckets.get_mut(&b.logs_bucket) {
                    bk.objects.remove(&b.log_object);
                }
            }
        }
        let done = self
            .operations
            .values()
            .filter(|o| o.done)
            .map(|o| (o.done_at, o.name.clone()));
        for name in beyond(done, limits.done_operations) {
            self.operations.remove(&name);
        }
        for p in self.projects.values_mut() {
            for svc in p.services.values_mut() {
                if svc.revisions.len() > limits.revisions_per_service {
                    evict_revisions(svc, limits.revisions_per_service);
                }
            }
        }
        let total: u64 = self
            .buckets
            .values()
            .flat_map(|b| b.objects.values())
            .map(|o| o.data.len() as u64)
            .sum();
        if total > limits.object_bytes {
            let writing: BTreeSet<(&str, &str)> = self
                .builds
                .values()
                .filter(|b| !b.finished)
                .map(|b| (b.logs_bucket.as_str(), b.log_object.as_str()))
                .collect();
            let mut old: Vec<(i64, String, String, u64)> = self
                .buckets
                .iter()
                .flat_map(|(bn, b)| {
                    b.objects.iter().map(move |(on, o)| {
                        (o.generation, bn.clone(), on.clone(), o.data.len() as u64)
                    })
                })
                .filter(|(_, b, o, _)| !writing.contains(&(b.as_str(), o.as_str())))
                .collect();
            old.sort();
            let mut over = total - limits.object_bytes;
            for (_, b, o, len) in old {
                if over == 0 {
                    break;
                }
                if let Some(bk) = self.buckets.get_mut(&b) {
                    bk.objects.remove(&o);
                }
                over = over.saturating_sub(len);
            }
        }
        if self.id_tokens.len() > limits.id_tokens {
            let extra: Vec<String> = self
                .id_tokens
                .keys()
                .take(self.id_tokens.len() - limits.id_tokens)
                .cloned()
                .collect();
            for t in extra {
                self.id_tokens.remove(&t);
            }
        }
    }

    pub fn sizes(&self) -> Sizes {
        let services = self.projects.values().flat_map(|p| p.services.values());
        let objects = self.buckets.values().flat_map(|b| b.objects.values());
        Sizes {
            requests: self.requests.len(),
            builds: self.builds.len(),
            operations: self.operations.len(),
            revisions: services.clone().map(|s| s.revisions.len()).sum(),
            objects: objects.clone().count(),
            object_bytes: objects.map(|o| o.data.len() as u64).sum(),
            tag_listeners: services.map(|s| s.tags.len()).sum(),
            id_tokens: self.id_tokens.len(),
        }
    }

    /// For each build and operation finished since `since`: how long after
    /// it finished a caller first saw it (time a poller added to a deploy).
    /// Not yet seen: until now.
    pub fn detection_lags(&self, since: Instant) -> Vec<(&'static str, std::time::Duration)> {
        let now = Instant::now();
        let builds = self.builds.values().filter_map(|b| {
            let done = b.finish_at.filter(|t| *t >= since && *t <= now)?;
            Some((
                "build",
                b.seen_done.unwrap_or(now).saturating_duration_since(done),
            ))
        });
        let ops = self.operations.values().filter_map(|o| {
            let done = Some(o.done_at).filter(|t| *t >= since && *t <= now)?;
            Some((
                "operation",
                o.seen_done.unwrap_or(now).saturating_duration_since(done),
            ))
        });
        builds.chain(ops).collect()
    }

    pub fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// By id or number.
    pub fn project_key(&self, p: &str) -> Option<String> {
        if self.projects.contains_key(p) {
            return Some(p.to_string());
        }
        self.projects
            .values()
            .find(|s| s.number == p)
            .map(|s| s.id.clone())
    }
}

/// The keys of the oldest of `items` (by time) beyond the newest `keep`.
fn beyond(items: impl Iterator<Item = (Instant, String)>, keep: usize) -> Vec<String> {
    let mut all: Vec<(Instant, String)> = items.collect();
    if all.len() <= keep {
        return Vec::new();
    }
    all.sort();
    let over = all.len() - keep;
    all.into_iter().take(over).map(|(_, k)| k).collect()
}

/// Deletes a service's oldest revisions down to `keep`, sparing those named
/// by its traffic or a tag and the latest created and ready.
fn evict_revisions(svc: &mut Service, keep: usize) {
    let mut in_use: BTreeSet<String> = svc
        .traffic_targets()
        .filter_map(|t| {
            t.get("revision")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    in_use.extend(svc.tags.values().map(|t| t.revision.clone()));
    in_use.extend(svc.latest_ready.clone());
    in_use.extend(svc.latest_created.clone());
    let mut over = svc.revisions.len().saturating_sub(keep);
    svc.revisions.retain(|r| {
        if over > 0 && !in_use.contains(&r.name) {
            over -= 1;
            false
        } else {
            true
        }
    });
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
