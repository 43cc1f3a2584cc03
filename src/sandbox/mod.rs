//! The sandbox: an emulator of the Google Cloud REST APIs deployd uses
//! (listed in `docs/sandbox-api.md`), written from Google's API reference
//! and sharing no types with
//! `crate::gcp`, so a field misnamed on one side fails a test instead of
//! agreeing with itself.
//!
//! It keeps state (APIs, permissions, repositories, buckets and objects,
//! builds, services and revisions, operations), finishes operations after a
//! configurable delay, runs each deployed service as a real HTTP listener on
//! loopback, and lets tests inject faults. Time-driven progress is computed
//! lazily on each request, so there are no background state machines to race.

mod app;
mod build;
mod control;
mod dockerfile;
pub mod faults;
mod logging;
mod monitoring;
mod native;
mod routes;
mod run;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use faults::{AppResponse, BuildFault, Fault};
pub use world::{Limits, Sizes};
use world::{ProjectState, Request, World};

/// The project a fresh sandbox has, ready for deploys.
pub const DEFAULT_PROJECT: &str = "demo-project";

/// The service account every sandbox project has for deployd to probe
/// private services with.
pub fn invoker_service_account(project: &str) -> String {
    format!("deployd-invoker@{project}.iam.gserviceaccount.com")
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the emulated APIs listen (default: an ephemeral loopback port).
    pub listen: SocketAddr,
    /// How long long-running operations take.
    pub op_delay: Duration,
    /// How long a build waits in QUEUED.
    pub build_queue_delay: Duration,
    /// Time between two build log lines.
    pub build_line_delay: Duration,
    /// Projects that exist from the start, all APIs on, all permissions held.
    pub projects: Vec<String>,
    /// Added to every API answer, to model a realistic round trip.
    pub latency: Duration,
    /// The largest request body accepted (uploads): the daemon's source
    /// limit, as Cloud Storage takes objects far larger than any source.
    pub max_body_bytes: usize,
    /// How much history is kept.
    pub limits: Limits,
    /// Run each ready revision's container command natively, where this
    /// machine has its runtime (the stand-in answers otherwise).
    pub run_apps: bool,
    /// How long a revision's process has to listen on PORT once its
    /// dependencies are installed (Cloud Run allows up to 240 s; a
    /// rehearsal need not wait that long).
    pub native_startup: Duration,
    /// Where revisions' directories go (default: the system's temporary
    /// directory).
    pub run_root: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            op_delay: Duration::from_millis(300),
            build_queue_delay: Duration::from_millis(200),
            build_line_delay: Duration::from_millis(40),
            projects: vec![DEFAULT_PROJECT.into()],
            latency: Duration::ZERO,
            max_body_bytes: crate::pipeline::archive::DEFAULT_MAX_SOURCE_BYTES as usize,
            limits: Limits::default(),
            run_apps: false,
            native_startup: Duration::from_secs(20),
            run_root: None,
        }
    }
}

impl SandboxConfig {
    /// Fast settings for tests.
    pub fn fast() -> Self {
        Self {
            op_delay: Duration::from_millis(30),
            build_queue_delay: Duration::from_millis(20),
            build_line_delay: Duration::from_millis(2),
            ..Self::default()
        }
    }
}

/// What chaos mode has done so far.
pub(crate) struct ChaosState {
    pub config: faults::Chaos,
    pub rng: rand::rngs::StdRng,
    /// Consecutive faults per call (method and path).
    pub streak: std::collections::HashMap<String, u32>,
    pub injected: u64,
}

pub(crate) struct Shared {
    pub world: Mutex<World>,
    pub faults: Mutex<Vec<Fault>>,
    /// Faults armed only after this many calls of their method went
    /// through untouched.
    pub deferred: Mutex<Vec<(u32, Fault)>>,
    pub chaos: Mutex<Option<ChaosState>>,
    pub config: SandboxConfig,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn world(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock only happens in a failing test;
        // keep serving the state as it was.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, Vec<Fault>> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues API faults, each after its number of calls let through.
pub(crate) fn queue_faults(sh: &Shared, faults: Vec<(u32, Fault)>) {
    for (after, fault) in faults {
        if after == 0 {
            sh.faults().push(fault);
        } else {
            sh.deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((after, fault));
        }
    }
}

/// A running sandbox. Dropping it stops the server and the service apps.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Sandbox {
    /// Binds `config.listen` (default: an ephemeral loopback port) and
    /// starts serving.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        Self::start_on(config.listen, config).await
    }

    pub async fn start_on(addr: SocketAddr, config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let max_body = config.max_body_bytes;
        let mut world = World::default();
        for (i, p) in config.projects.iter().enumerate() {
            let number = format!("{}", 100000000001u64 + i as u64);
            world
                .projects
                .insert(p.clone(), ProjectState::new(p, &number));
        }
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            faults: Mutex::new(vec![]),
            deferred: Mutex::new(vec![]),
            chaos: Mutex::new(None),
            config,
            shutdown: CancellationToken::new(),
        });
        let router =
            routes::router(shared.clone()).layer(axum::extract::DefaultBodyLimit::max(max_body));
        let stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        });
        tracing::info!(%addr, "sandbox listening");
        Ok(Sandbox { shared, addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a healthy project and returns its number.
    pub fn add_project(&self, id: &str) -> String {
        let mut w = self.shared.world();
        let number = format!("{}", 200000000000u64 + w.next_id());
        w.projects.insert(id.into(), ProjectState::new(id, &number));
        number
    }

    /// Changes a project's state (disable APIs, withhold permissions...).
    pub fn with_project<R>(&self, id: &str, f: impl FnOnce(&mut ProjectState) -> R) -> Option<R> {
        let mut w = self.shared.world();
        w.projects.get_mut(id).map(f)
    }

    pub fn remove_project(&self, id: &str) {
        self.shared.world().projects.remove(id);
    }

    /// Creates a bucket owned by `project` (which must exist).
    pub fn add_bucket(&self, name: &str, project: &str) -> bool {
        let mut w = self.shared.world();
        let Some(number) = w.projects.get(project).map(|p| p.number.clone()) else {
            return false;
        };
        w.buckets.insert(
            name.into(),
            world::Bucket {
                project_number: number,
                location: "US-CENTRAL1".into(),
                create_time: world::now_rfc3339(),
                objects: Default::default(),
            },
        );
        true
    }

    /// Applies a fault document (the scenario file's and the control
    /// endpoint's, see [`control`]); what it changed, or why it was refused
    /// (nothing is applied then).
    pub fn apply_faults(&self, doc: &serde_json::Value) -> Result<serde_json::Value, String> {
        let applied = {
            let mut w = self.shared.world();
            control::apply(&mut w, doc)
        };
        match applied {
            Ok((summary, api)) => {
                queue_faults(&self.shared, api);
                Ok(summary)
            }
            Err((_, _, message)) => Err(message),
        }
    }

    /// The next `fault.remaining` calls of `fault.method` misbehave.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults().push(fault);
    }

    /// From now on, calls fail at random as `chaos` says.
    /// Like [`Sandbox::inject`], once `skip` calls of the fault's method
    /// went through untouched.
    pub fn inject_after(&self, skip: u32, fault: Fault) {
        queue_faults(&self.shared, vec![(skip, fault)]);
    }

    pub fn chaos(&self, chaos: faults::Chaos) {
        use rand::SeedableRng;
        let rng = rand::rngs::StdRng::seed_from_u64(chaos.seed);
        *self.shared.chaos.lock().unwrap_or_else(|p| p.into_inner()) = Some(ChaosState {
            config: chaos,
            rng,
            streak: Default::default(),
            injected: 0,
        });
    }

    /// Faults chaos mode has injected so far.
    pub fn chaos_injected(&self) -> u64 {
        self.shared
            .chaos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |c| c.injected)
    }

    /// The next build created ends this way.
    pub fn fail_next_build(&self, fault: BuildFault) {
        self.shared.world().build_faults.push_back(fault);
    }

    /// The next `n` revisions of the service fail to become ready.
    pub fn revisions_not_ready(&self, project: &str, service: &str, n: u32) {
        self.shared
            .world()
            .not_ready_revisions
            .insert((project.into(), service.into()), n);
    }

    /// The next rollout of the service finishes its operation successfully
    /// although the new revision is still reconciling: the service it
    /// returns is not Ready and still serves the previous revision. The
    /// client must not take the operation's word for it.
    pub fn next_rollout_succeeds_early(&self, project: &str, service: &str) {
        self.shared
            .world()
            .early_success_rollouts
            .insert((project.into(), service.into()));
    }

    /// The deployed service answers these, in order, then 200s.
    pub fn script_app(
        &self,
        project: &str,
        region: &str,
        service: &str,
        answers: Vec<AppResponse>,
    ) -> bool {
        let mut w = self.shared.world();
        let Some(p) = w.projects.get_mut(project) else {
            return false;
        };
        match p
            .services
            .get_mut(&(region.to_string(), service.to_string()))
        {
            Some(s) => {
                s.app_script.extend(answers);
                true
            }
            None => false,
        }
    }

    /// The next revision of the service answers this to every request.
    pub fn next_revision_answers(&self, project: &str, service: &str, answer: AppResponse) {
        self.shared
            .world()
            .next_revision_behavior
            .insert((project.into(), service.into()), answer);
    }

    /// From now on, `revision` of the service fails `error_rate` of its
    /// requests with `error_status` and answers `added_latency` slower;
    /// false when there is no such revision.
    pub fn revision_misbehaves(
        &self,
        project: &str,
        region: &str,
        service: &str,
        revision: &str,
        m: world::Misbehaviour,
    ) -> bool {
        let mut w = self.shared.world();
        let Some(r) = w
            .projects
            .get_mut(project)
            .and_then(|p| {
                p.services
                    .get_mut(&(region.to_string(), service.to_string()))
            })
            .and_then(|s| s.revisions.iter_mut().find(|r| r.name == revision))
        else {
            return false;
        };
        r.misbehaviour = m;
        true
    }

    /// Processes running for revisions (the native runner).
    pub fn processes(&self) -> usize {
        self.shared.world().processes.len()
    }

    /// The requests the service's revisions served (the most recent
    /// `Limits::requests` of all services).
    pub fn served(&self, project: &str, service: &str) -> Vec<world::Served> {
        self.shared
            .world()
            .served
            .iter()
            .filter(|s| s.project == project && s.service == service)
            .cloned()
            .collect()
    }

    /// The requests received so far (the most recent `Limits::requests`).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.world().requests.iter().cloned().collect()
    }

    /// How many requests were received in all, also those no longer kept.
    pub fn requests_seen(&self) -> u64 {
        self.shared.world().requests_seen
    }

    /// Detection lag of every build and operation finished since `since`.
    pub fn detection_lags(&self, since: Instant) -> Vec<(&'static str, Duration)> {
        self.shared.world().detection_lags(since)
    }

    /// How much state the sandbox holds.
    pub fn sizes(&self) -> Sizes {
        self.shared.world().sizes()
    }

    /// The requests of one discovery method id, in arrival order.
    pub fn requests_of(&self, method: &str) -> Vec<Request> {
        self.shared
            .world()
            .requests
            .iter()
            .filter(|r| r.method == method)
            .cloned()
            .collect()
    }

    /// How many requests of a discovery method id were received.
    pub fn count(&self, method: &str) -> usize {
        self.shared
            .world()
            .requests
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// The service as `GET` would show it now.
    pub fn service(&self, project: &str, region: &str, service: &str) -> Option<Value> {
        let w = self.shared.world();
        let p = w.projects.get(project)?;
        let s = p.services.get(&(region.to_string(), service.to_string()))?;
        Some(run::render_service(p, region, service, s))
    }

    /// Names of the service's revisions, oldest first.
    pub fn revisions(&self, project: &str, region: &str, service: &str) -> Vec<String> {
        let w = self.shared.world();
        w.projects
            .get(project)
            .and_then(|p| p.services.get(&(region.to_string(), service.to_string())))
            .map(|s| s.revisions.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Builds as `GET` would show them now.
    pub fn builds(&self) -> Vec<Value> {
        let mut w = self.shared.world();
        build::advance(&mut w, std::time::Instant::now());
        let w = &*w;
        w.builds
            .values()
            .map(|b| build::render(w, b, std::time::Instant::now()))
            .collect()
    }

    /// An object's bytes.
    /// The log lines Cloud Logging holds for a service's revisions:
    /// (revision, text), oldest first.
    pub fn log_lines(&self, project: &str, service: &str) -> Vec<(String, String)> {
        let mut w = self.shared.world();
        run::flush_process_output(&self.shared, &mut w);
        w.log_entries
            .iter()
            .filter(|e| e.project == project && e.service == service)
            .map(|e| (e.revision.clone(), e.line.text.clone()))
            .collect()
    }

    pub fn object(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let w = self.shared.world();
        Some(w.buckets.get(bucket)?.objects.get(name)?.data.clone())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        // Every revision's process stops with the sandbox.
        let mut w = self.shared.world();
        w.processes.clear();
        w.native_results.clear();
    }
}
