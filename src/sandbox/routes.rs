//! HTTP routing and handlers of the emulated APIs. Paths, query parameters,
//! bodies and error shapes follow the contract; resource names may span
//! several segments (`{+name}`), so routing matches segment slices rather
//! than a path-template router.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::faults::{FaultAction, InjectedError};
use super::run::{
    finish_operations, generate_id_token, render_op, render_revision, render_service, run_apply,
    run_not_found, start_op,
};
use super::world::{now_rfc3339, Bucket, Effect, Object, ProjectState, Repository, Request, World};
use super::{build, Shared};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// A routed request: its discovery method id, the API that serves it, the
/// permission it needs, the project it is about, and its parameters.
struct Route {
    id: &'static str,
    api: Option<&'static str>,
    permission: Option<&'static str>,
    project: Option<String>,
    kind: Kind,
}

enum Kind {
    SuBatchGet,
    SuGet(String),
    SuList,
    SuEnable(String),
    CrmGet {
        v1: bool,
    },
    CrmTestPermissions,
    SaGet(String),
    SaGetAnyProject(String),
    MetadataIdentity(String),
    BuildDefaultSa(String),
    GenerateIdToken(String),
    SaTestPermissions(String),
    OrgEffective(String),
    RepoGet(String, String),
    RepoCreate(String),
    RepoList(String),
    BucketGet(String),
    BucketInsert,
    BucketList,
    ObjectGet(String, String),
    ObjectUpload(String),
    /// A chunk (or status query) of a resumable upload session.
    ObjectUploadChunk,
    BuildCreate,
    BuildList,
    BuildGet(String),
    BuildCancel(String),
    RunGet(String, String),
    RunCreate(String),
    RunPatch(String, String),
    RunGetIam(String, String),
    RunSetIam(String, String),
    RunRevisions(String, String),
    OpGet(String),
    /// Cloud Run's long poll: answered once the operation is done, or when
    /// the asked timeout (at most 30 s here) passes.
    OpWait(String),
    MonitoringTimeSeries,
    /// The sandbox's own control endpoint: faults set from outside.
    SandboxFaults,
    LoggingList,
    NotFound,
}

fn strip<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    s.strip_suffix(suffix)
}

fn route(m: &Method, segs: &[&str]) -> Route {
    use Kind::*;
    let r = |id, api, permission, project: &str, kind| Route {
        id,
        api,
        permission,
        project: Some(project.to_string()),
        kind,
    };
    let global = |id, permission, kind| Route {
        id,
        api: None,
        permission,
        project: None,
        kind,
    };
    const SU: Option<&str> = Some("serviceusage.googleapis.com");
    const CRM: Option<&str> = Some("cloudresourcemanager.googleapis.com");
    const IAM: Option<&str> = Some("iam.googleapis.com");
    const ORG: Option<&str> = Some("orgpolicy.googleapis.com");
    const AR: Option<&str> = Some("artifactregistry.googleapis.com");
    const CB: Option<&str> = Some("cloudbuild.googleapis.com");
    const RUN: Option<&str> = Some("run.googleapis.com");
    const MON: Option<&str> = Some("monitoring.googleapis.com");
    match (m.as_str(), segs) {
        ("POST", ["__sandbox", "faults"]) => global("sandbox.faults", None, SandboxFaults),
        // Cloud Logging v2: the project is in the body.
        ("POST", ["v2", "entries:list"]) => global("logging.entries.list", None, LoggingList),
        // Cloud Monitoring v3
        ("GET", ["v3", "projects", p, "timeSeries"]) => r(
            "monitoring.projects.timeSeries.list",
            MON,
            Some("monitoring.timeSeries.list"),
            p,
            MonitoringTimeSeries,
        ),
        // Service Usage
        ("GET", ["v1", "projects", p, "services:batchGet"]) => r(
            "serviceusage.services.batchGet",
            SU,
            Some("serviceusage.services.get"),
            p,
            SuBatchGet,
        ),
        ("GET", ["v1", "projects", p, "services"]) => r(
            "serviceusage.services.list",
            SU,
            Some("serviceusage.services.list"),
            p,
            SuList,
        ),
        ("GET", ["v1", "projects", p, "services", s]) => r(
            "serviceusage.services.get",
            SU,
            Some("serviceusage.services.get"),
            p,
            SuGet(s.to_string()),
        ),
        ("POST", ["v1", "projects", p, "services", s]) if s.ends_with(":enable") => r(
            "serviceusage.services.enable",
            SU,
            Some("serviceusage.services.enable"),
            p,
            SuEnable(s.trim_end_matches(":enable").to_string()),
        ),
        ("GET", ["v1", "operations", rest @ ..]) => global(
            "operations.get",
            None,
            OpGet(format!("operations/{}", rest.join("/"))),
        ),
        // Resource Manager
        ("GET", [v @ ("v1" | "v3"), "projects", p]) if !p.contains(':') => r(
            "cloudresourcemanager.projects.get",
            CRM,
            Some("resourcemanager.projects.get"),
            p,
            CrmGet { v1: *v == "v1" },
        ),
        ("POST", ["v1" | "v3", "projects", p]) if p.ends_with(":testIamPermissions") => r(
            "cloudresourcemanager.projects.testIamPermissions",
            CRM,
            None,
            p.trim_end_matches(":testIamPermissions"),
            CrmTestPermissions,
        ),
        // The metadata server of the machine deployd would run on.
        ("GET", ["computeMetadata", "v1", "instance", "service-accounts", sa, "identity"]) => {
            global("metadata.identity", None, MetadataIdentity(sa.to_string()))
        }
        // IAM
        ("POST", ["v1", "projects", "-", "serviceAccounts", e])
            if e.ends_with(":generateIdToken") =>
        {
            global(
                "iamcredentials.projects.serviceAccounts.generateIdToken",
                None,
                GenerateIdToken(e.trim_end_matches(":generateIdToken").to_string()),
            )
        }
        // `-` for the project: the account's own project, found by email.
        ("GET", ["v1", "projects", "-", "serviceAccounts", e]) => global(
            "iam.projects.serviceAccounts.get",
            None,
            SaGetAnyProject(e.to_string()),
        ),
        ("GET", ["v1", "projects", p, "serviceAccounts", e]) => r(
            "iam.projects.serviceAccounts.get",
            IAM,
            Some("iam.serviceAccounts.get"),
            p,
            SaGet(e.to_string()),
        ),
        ("POST", ["v1", "projects", p, "serviceAccounts", e])
            if e.ends_with(":testIamPermissions") =>
        {
            r(
                "iam.projects.serviceAccounts.testIamPermissions",
                IAM,
                None,
                p,
                SaTestPermissions(e.trim_end_matches(":testIamPermissions").to_string()),
            )
        }
        // Org Policy
        ("GET", ["v2", "projects", p, "policies", c]) if c.ends_with(":getEffectivePolicy") => r(
            "orgpolicy.projects.policies.getEffectivePolicy",
            ORG,
            Some("orgpolicy.policy.get"),
            p,
            OrgEffective(c.trim_end_matches(":getEffectivePolicy").to_string()),
        ),
        // Artifact Registry
        ("GET", ["v1", "projects", p, "locations", l, "repositories", repo]) => r(
            "artifactregistry.projects.locations.repositories.get",
            AR,
            Some("artifactregistry.repositories.get"),
            p,
            RepoGet(l.to_string(), repo.to_string()),
        ),
        ("POST", ["v1", "projects", p, "locations", l, "repositories"]) => r(
            "artifactregistry.projects.locations.repositories.create",
            AR,
            Some("artifactregistry.repositories.create"),
            p,
            RepoCreate(l.to_string()),
        ),
        ("GET", ["v1", "projects", p, "locations", l, "repositories"]) => r(
            "artifactregistry.projects.locations.repositories.list",
            AR,
            Some("artifactregistry.repositories.list"),
            p,
            RepoList(l.to_string()),
        ),
        ("GET", [v @ ("v1" | "v2"), "projects", p, "locations", l, "operations", id]) => {
            let name = format!("projects/{p}/locations/{l}/operations/{id}");
            let _ = v;
            global("operations.get", None, OpGet(name))
        }
        ("POST", ["v2", "projects", p, "locations", l, "operations", id])
            if id.ends_with(":wait") =>
        {
            let id = id.trim_end_matches(":wait");
            let name = format!("projects/{p}/locations/{l}/operations/{id}");
            global("run.projects.locations.operations.wait", None, OpWait(name))
        }
        // Cloud Storage
        ("GET", ["storage", "v1", "b", b]) => global(
            "storage.buckets.get",
            Some("storage.buckets.get"),
            BucketGet(b.to_string()),
        ),
        ("GET", ["storage", "v1", "b"]) => global(
            "storage.buckets.list",
            Some("storage.buckets.list"),
            BucketList,
        ),
        ("POST", ["storage", "v1", "b"]) => global(
            "storage.buckets.insert",
            Some("storage.buckets.create"),
            BucketInsert,
        ),
        ("GET", ["storage", "v1", "b", b, "o", o]) => global(
            "storage.objects.get",
            Some("storage.objects.get"),
            ObjectGet(b.to_string(), o.to_string()),
        ),
        ("PUT", ["upload", "storage", "v1", "b", _, "o"]) => {
            global("storage.objects.insert.chunk", None, ObjectUploadChunk)
        }
        ("POST", ["upload", "storage", "v1", "b", b, "o"]) => global(
            "storage.objects.insert",
            Some("storage.objects.create"),
            ObjectUpload(b.to_string()),
        ),
        // Cloud Build
        ("GET", ["v1", "projects", p, "locations", l, "defaultServiceAccount"]) => r(
            "cloudbuild.projects.locations.getDefaultServiceAccount",
            CB,
            Some("cloudbuild.builds.get"),
            p,
            BuildDefaultSa(l.to_string()),
        ),
        ("POST", ["v1", "projects", p, "builds"])
        | ("POST", ["v1", "projects", p, "locations", _, "builds"]) => r(
            "cloudbuild.projects.locations.builds.create",
            CB,
            Some("cloudbuild.builds.create"),
            p,
            BuildCreate,
        ),
        ("GET", ["v1", "projects", p, "builds"])
        | ("GET", ["v1", "projects", p, "locations", _, "builds"]) => r(
            "cloudbuild.projects.locations.builds.list",
            CB,
            Some("cloudbuild.builds.list"),
            p,
            BuildList,
        ),
        ("GET", ["v1", "projects", p, "builds", id])
        | ("GET", ["v1", "projects", p, "locations", _, "builds", id]) => r(
            "cloudbuild.projects.locations.builds.get",
            CB,
            Some("cloudbuild.builds.get"),
            p,
            BuildGet(id.to_string()),
        ),
        ("POST", ["v1", "projects", p, "builds", id])
        | ("POST", ["v1", "projects", p, "locations", _, "builds", id])
            if id.ends_with(":cancel") =>
        {
            r(
                "cloudbuild.projects.locations.builds.cancel",
                CB,
                Some("cloudbuild.builds.update"),
                p,
                BuildCancel(id.trim_end_matches(":cancel").to_string()),
            )
        }
        // Cloud Run v2
        ("GET", ["v2", "projects", p, "locations", l, "services", s]) => {
            match strip(s, ":getIamPolicy") {
                Some(s) => r(
                    "run.projects.locations.services.getIamPolicy",
                    RUN,
                    Some("run.services.getIamPolicy"),
                    p,
                    RunGetIam(l.to_string(), s.to_string()),
                ),
                None => r(
                    "run.projects.locations.services.get",
                    RUN,
                    Some("run.services.get"),
                    p,
                    RunGet(l.to_string(), s.to_string()),
                ),
            }
        }
        ("POST", ["v2", "projects", p, "locations", l, "services", s])
            if s.ends_with(":setIamPolicy") =>
        {
            r(
                "run.projects.locations.services.setIamPolicy",
                RUN,
                Some("run.services.setIamPolicy"),
                p,
                RunSetIam(
                    l.to_string(),
                    s.trim_end_matches(":setIamPolicy").to_string(),
                ),
            )
        }
        ("POST", ["v2", "projects", p, "locations", l, "services"]) => r(
            "run.projects.locations.services.create",
            RUN,
            Some("run.services.create"),
            p,
            RunCreate(l.to_string()),
        ),
        ("PATCH", ["v2", "projects", p, "locations", l, "services", s]) => r(
            "run.projects.locations.services.patch",
            RUN,
            Some("run.services.update"),
            p,
            RunPatch(l.to_string(), s.to_string()),
        ),
        ("GET", ["v2", "projects", p, "locations", l, "services", s, "revisions"]) => r(
            "run.projects.locations.services.revisions.list",
            RUN,
            Some("run.revisions.list"),
            p,
            RunRevisions(l.to_string(), s.to_string()),
        ),
        _ => global("unknown", None, NotFound),
    }
}

fn query_map(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return vec![] };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .to_string()
}

/// The part of Cloud Build's list filter the sandbox understands:
/// `tags="X"` and `status="X"` terms joined by AND.
fn build_filter(filter: &str) -> Result<Vec<(String, String)>, String> {
    let mut terms = vec![];
    for term in filter
        .split(" AND ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let parsed = term.split_once('=').and_then(|(field, value)| {
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            matches!(field.trim(), "tags" | "status")
                .then(|| (field.trim().to_string(), value.to_string()))
        });
        match parsed {
            Some(t) => terms.push(t),
            None => return Err(format!("invalid list filter: {term:?}")),
        }
    }
    Ok(terms)
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Split before decoding: an object name's %2F is part of one segment.
    let segs: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query_map(uri.query());
    let route = route(&method, &seg_refs);
    let at = Instant::now();

    // Recorded on arrival, so calls that never get an answer are seen too.
    let recorded = Request {
        method: route.id.to_string(),
        http_method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        status: 0,
        at,
        duration: Duration::ZERO,
        body: if matches!(route.kind, Kind::ObjectUpload(_) | Kind::ObjectUploadChunk) {
            vec![]
        } else {
            body.to_vec()
        },
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
    };
    let index = sh.world().record(recorded, &sh.config.limits);
    let fault = take_fault(&sh, route.id, &uri);
    // A large source is unpacked without holding the world's lock, which
    // every other call needs.
    // (Not for a call a fault answers without applying it.)
    let applies = !matches!(
        fault,
        Some(FaultAction::Hang | FaultAction::Reset | FaultAction::Error(_))
    );
    let create = match route.kind {
        Kind::BuildCreate if applies => serde_json::from_slice::<Value>(&body).ok(),
        _ => None,
    };
    let unpacked = match create {
        Some(req) => {
            let shared = sh.clone();
            // Decompression is CPU work: off the async workers too.
            tokio::task::spawn_blocking(move || build::unpack_source(&shared, &req))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    if let (Kind::OpWait(name), true) = (&route.kind, applies) {
        hold_until_done(&sh, name, &body).await;
    }
    let apply = || {
        // Answered as of now: a held call (or a slow fault) sees what
        // happened while it waited.
        let now = Instant::now();
        let mut w = sh.world();
        build::advance(&mut w, now);
        finish_operations(&sh, &mut w, now);
        match guard(&w, &route) {
            Some(denied) => denied,
            None => dispatch(&sh, &mut w, &route, &q, &body, &headers, now),
        }
    };
    let response = match fault {
        Some(FaultAction::Hang) => {
            sh.shutdown.cancelled().await;
            error(503, "UNAVAILABLE", "sandbox shutting down")
        }
        Some(FaultAction::Reset) => reset(),
        Some(FaultAction::Error(e)) => injected(&e),
        Some(FaultAction::Slow(d)) => {
            tokio::time::sleep(d).await;
            apply()
        }
        Some(FaultAction::ResetAfterApply) => {
            drop(apply());
            reset()
        }
        Some(FaultAction::SlowAfterApply(d)) => {
            let answer = apply();
            tokio::time::sleep(d).await;
            answer
        }
        None => apply(),
    };
    if let Some(key) = unpacked {
        sh.world().unpacked.remove(&key);
    }
    if !sh.config.latency.is_zero() {
        tokio::time::sleep(sh.config.latency).await;
    }
    let mut w = sh.world();
    if let Some(r) = w.request_mut(index) {
        r.status = response.status().as_u16();
        r.duration = at.elapsed();
    }
    // Cheap: the scans are over what the limits already bound.
    w.evict(&sh.config.limits);
    drop(w);
    response
}

/// Holds a `:wait` until its operation is due to finish, the request's
/// `timeout` passes (30 s at most, Google's cap for one call) or the
/// sandbox stops. Nothing is locked while it waits.
async fn hold_until_done(sh: &Shared, name: &str, body: &[u8]) {
    const MAX_HOLD: Duration = Duration::from_secs(30);
    let asked = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| {
            b.get("timeout")
                .and_then(Value::as_str)
                .and_then(|t| t.strip_suffix('s'))
                .and_then(|t| t.parse::<f64>().ok())
        })
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map_or(MAX_HOLD, |secs| Duration::from_secs_f64(secs.min(30.0)));
    let done_at = sh
        .world()
        .operations
        .get(name)
        .filter(|op| !op.done)
        .map(|op| op.done_at);
    if let Some(done_at) = done_at {
        let until = done_at.min(Instant::now() + asked);
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = sh.shutdown.cancelled() => {}
        }
    }
}

/// A scripted fault for this call, or else (in chaos mode) maybe a random
/// transient one.
fn take_fault(sh: &Shared, method: &str, uri: &Uri) -> Option<FaultAction> {
    scripted_fault(sh, method).or_else(|| chaos_fault(sh, method, uri))
}

fn chaos_fault(sh: &Shared, method: &str, uri: &Uri) -> Option<FaultAction> {
    use rand::Rng;
    let mut guard = sh.chaos.lock().unwrap_or_else(|p| p.into_inner());
    let c = guard.as_mut()?;
    // A call is its path and query (an upload names its object in the query).
    let key = format!("{method} {uri}");
    let streak = c.streak.get(&key).copied().unwrap_or(0);
    if streak >= c.config.max_consecutive || !c.rng.random_bool(c.config.rate) {
        c.streak.remove(&key);
        return None;
    }
    c.streak.insert(key, streak + 1);
    c.injected += 1;
    let pick = c.rng.random_range(0..5);
    Some(c.config.action(pick))
}

fn scripted_fault(sh: &Shared, method: &str) -> Option<FaultAction> {
    {
        let mut deferred = sh.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = deferred.iter().position(|(_, f)| f.method == method) {
            deferred[pos].0 -= 1;
            if deferred[pos].0 == 0 {
                let (_, f) = deferred.remove(pos);
                sh.faults().push(f);
            }
            return None;
        }
    }
    let mut faults = sh.faults();
    let pos = faults
        .iter()
        .position(|f| f.method == method && f.remaining > 0)?;
    faults[pos].remaining -= 1;
    let action = faults[pos].action.clone();
    if faults[pos].remaining == 0 {
        faults.remove(pos);
    }
    Some(action)
}

/// Project existence, API enablement and permissions, as Google checks them.
fn guard(w: &World, route: &Route) -> Option<Response> {
    if matches!(route.kind, Kind::NotFound) {
        return Some(error(404, "NOT_FOUND", "Requested entity was not found."));
    }
    let p = route.project.as_deref()?;
    let Some(key) = w.project_key(p) else {
        // Google does not tell a missing project from one you cannot see.
        return Some(match route.kind {
            Kind::CrmTestPermissions => ok(json!({})),
            _ => error_info(
                403,
                "PERMISSION_DENIED",
                &format!("The caller does not have permission, or project {p} does not exist."),
                "USER_PROJECT_DENIED",
                json!({"consumer": format!("projects/{p}")}),
            ),
        });
    };
    let project = &w.projects[&key];
    // Only Resource Manager still answers for a project being deleted.
    if project.lifecycle != "ACTIVE"
        && !matches!(route.kind, Kind::CrmGet { .. } | Kind::CrmTestPermissions)
    {
        return Some(error_info(
            403,
            "PERMISSION_DENIED",
            &format!(
                "Project {p} has been scheduled for deletion and cannot be used for API calls."
            ),
            "USER_PROJECT_DENIED",
            json!({"consumer": format!("projects/{p}")}),
        ));
    }
    if let Some(api) = route.api {
        if !project.enabled_apis.contains(api) {
            return Some(service_disabled(api, p));
        }
    }
    if let Some(perm) = route.permission {
        if !project.permissions.contains(perm) {
            return Some(error_info(
                403,
                "PERMISSION_DENIED",
                &format!("Permission '{perm}' denied on resource '//{}/projects/{p}' (or it may not exist).", route.api.unwrap_or("")),
                "IAM_PERMISSION_DENIED",
                json!({"permission": perm, "resource": format!("projects/{p}")}),
            ));
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    sh: &Arc<Shared>,
    w: &mut World,
    route: &Route,
    q: &[(String, String)],
    raw: &[u8],
    headers: &HeaderMap,
    now: Instant,
) -> Response {
    if let Kind::ObjectUpload(b) = &route.kind {
        return upload(w, b, q, raw, headers);
    }
    if let Kind::ObjectUploadChunk = &route.kind {
        return upload_chunk(w, q, raw, headers);
    }
    let body: Value = if raw.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    &format!("Invalid JSON payload received. {e}"),
                )
            }
        }
    };
    let key = route.project.as_deref().and_then(|p| w.project_key(p));
    match &route.kind {
        Kind::SuBatchGet => {
            let p = &w.projects[&key.unwrap_or_default()];
            let names: Vec<&str> = q
                .iter()
                .filter(|(k, _)| k == "names")
                .map(|(_, v)| v.as_str())
                .collect();
            if names.is_empty() || names.len() > 30 {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "names must list between 1 and 30 services",
                );
            }
            let services: Vec<Value> = names
                .iter()
                .map(|n| su_service(p, n.rsplit('/').next().unwrap_or(n)))
                .collect();
            ok(json!({"services": services}))
        }
        Kind::SuGet(s) => ok(su_service(&w.projects[&key.unwrap_or_default()], s)),
        Kind::SuList => {
            let p = &w.projects[&key.unwrap_or_default()];
            let only_enabled = param(q, "filter").is_some_and(|f| f.contains("state:ENABLED"));
            let services: Vec<Value> = super::world::ALL_APIS
                .iter()
                .filter(|s| !only_enabled || p.enabled_apis.contains(**s))
                .map(|s| su_service(p, s))
                .collect();
            ok(json!({"services": services}))
        }
        Kind::SuEnable(s) => {
            let id = w.next_id();
            let p = w.projects.get_mut(&key.unwrap_or_default());
            let Some(p) = p else {
                return error(404, "NOT_FOUND", "project");
            };
            let number = p.number.clone();
            let response = json!({
                "@type": "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
                "service": {"name": format!("projects/{number}/services/{s}"), "parent": format!("projects/{number}"), "state": "ENABLED"},
            });
            if p.enabled_apis.contains(s) {
                return ok(
                    json!({"name": "operations/noop.DONE_OPERATION", "done": true, "response": response}),
                );
            }
            p.enabled_apis.insert(s.clone());
            let name = format!("operations/acf.p2-{number}-{id:08x}");
            start_op(
                w,
                sh,
                name,
                json!({"@type": "type.googleapis.com/google.api.serviceusage.v1.OperationMetadata", "resourceNames": [format!("services/{s}/projects/{number}")]}),
                Some(response),
                Effect::None,
                now,
            )
        }
        Kind::CrmGet { v1 } => {
            let p = &w.projects[&key.unwrap_or_default()];
            if *v1 {
                let state = if p.lifecycle == "ACTIVE" {
                    "ACTIVE"
                } else {
                    "DELETE_REQUESTED"
                };
                ok(
                    json!({"projectId": p.id, "projectNumber": p.number, "name": p.id, "lifecycleState": state, "createTime": "2024-01-01T00:00:00Z"}),
                )
            } else {
                ok(
                    json!({"name": format!("projects/{}", p.number), "projectId": p.id, "displayName": p.id, "state": p.lifecycle, "parent": "organizations/123456789", "createTime": "2024-01-01T00:00:00Z", "etag": "W/\"sandbox\""}),
                )
            }
        }
        Kind::CrmTestPermissions => {
            let p = &w.projects[&key.unwrap_or_default()];
            test_permissions(&body, |perm| p.permissions.contains(perm))
        }
        Kind::GenerateIdToken(email) => generate_id_token(w, email, &body),
        Kind::MetadataIdentity(account) => metadata_identity(w, account, q, headers),
        Kind::SaGet(email) => {
            let p = &w.projects[&key.unwrap_or_default()];
            match p.service_accounts.get(email) {
                Some(disabled) => ok(render_service_account(p, email, *disabled)),
                None => error(
                    404,
                    "NOT_FOUND",
                    &format!("Unknown service account {email}"),
                ),
            }
        }
        Kind::SaGetAnyProject(email) => {
            let owner = w.projects.values().find_map(|p| {
                p.service_accounts
                    .get(email)
                    .map(|disabled| render_service_account(p, email, *disabled))
            });
            match owner {
                Some(sa) => ok(sa),
                // With `-` IAM cannot tell "missing" from "not yours".
                None => error(
                    403,
                    "PERMISSION_DENIED",
                    &format!("Permission 'iam.serviceAccounts.get' denied on resource (or it may not exist): projects/-/serviceAccounts/{email}"),
                ),
            }
        }
        Kind::BuildDefaultSa(location) => {
            let p = &w.projects[&key.unwrap_or_default()];
            let email = p
                .default_build_service_account
                .as_ref()
                .map(|e| format!("projects/{}/serviceAccounts/{e}", p.id))
                .unwrap_or_default();
            ok(json!({
                "name": format!("projects/{}/locations/{location}/defaultServiceAccount", p.id),
                "serviceAccountEmail": email,
            }))
        }
        Kind::SaTestPermissions(email) => {
            let p = &w.projects[&key.unwrap_or_default()];
            if !p.service_accounts.contains_key(email) {
                return error(
                    404,
                    "NOT_FOUND",
                    &format!("Unknown service account {email}"),
                );
            }
            let allowed = !p.act_as_denied.contains(email)
                && p.permissions.contains("iam.serviceAccounts.actAs");
            test_permissions(&body, |perm| perm == "iam.serviceAccounts.actAs" && allowed)
        }
        Kind::OrgEffective(c) => {
            let p = &w.projects[&key.unwrap_or_default()];
            let spec = p
                .policies
                .get(c)
                .cloned()
                .unwrap_or_else(|| json!({"rules": [{"allowAll": true}]}));
            ok(json!({"name": format!("projects/{}/policies/{c}", p.number), "spec": spec}))
        }
        Kind::RepoGet(l, repo) => {
            let p = &w.projects[&key.unwrap_or_default()];
            match p.repositories.get(&(l.clone(), repo.clone())) {
                Some(r) => ok(render_repo(p, l, repo, r)),
                None => error(404, "NOT_FOUND", "Requested entity was not found."),
            }
        }
        Kind::RepoList(l) => {
            let p = &w.projects[&key.unwrap_or_default()];
            let repos: Vec<Value> = p
                .repositories
                .iter()
                .filter(|((loc, _), _)| loc == l)
                .map(|((loc, name), r)| render_repo(p, loc, name, r))
                .collect();
            ok(json!({"repositories": repos}))
        }
        Kind::RepoCreate(l) => {
            let Some(repo_id) = param(q, "repositoryId").map(str::to_string) else {
                return error(400, "INVALID_ARGUMENT", "repositoryId is required");
            };
            let format = body
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or("FORMAT_UNSPECIFIED")
                .to_string();
            let id = w.next_id();
            let Some(p) = w.projects.get_mut(&key.unwrap_or_default()) else {
                return error(404, "NOT_FOUND", "project");
            };
            let k = (l.clone(), repo_id.clone());
            if p.repositories.contains_key(&k) {
                return error(409, "ALREADY_EXISTS", "the repository already exists");
            }
            let repo = Repository {
                format,
                description: body
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                create_time: now_rfc3339(),
                tags: BTreeMap::new(),
                digests: Default::default(),
            };
            let rendered = render_repo(p, l, &repo_id, &repo);
            p.repositories.insert(k, repo);
            let name = format!("projects/{}/locations/{l}/operations/{id:032x}", p.id);
            let mut response = rendered;
            response["@type"] =
                json!("type.googleapis.com/google.devtools.artifactregistry.v1.Repository");
            start_op(
                w,
                sh,
                name,
                json!({"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"}),
                Some(response),
                Effect::None,
                now,
            )
        }
        Kind::BucketGet(b) => match w.buckets.get(b) {
            Some(bucket) => ok(render_bucket(b, bucket)),
            None => gcs_error(404, "notFound", "The specified bucket does not exist."),
        },
        Kind::BucketList => {
            // gcloud builds submit lists by prefix to prove the bucket it
            // found is the project's own.
            let Some(project) = param(q, "project") else {
                return gcs_error(400, "required", "Required parameter: project");
            };
            let Some(pk) = w.project_key(project) else {
                return gcs_error(403, "forbidden", &format!("The caller does not have storage.buckets.list access to project {project}."));
            };
            let number = &w.projects[&pk].number;
            let prefix = param(q, "prefix").unwrap_or_default();
            let items: Vec<Value> = w
                .buckets
                .iter()
                .filter(|(name, b)| &b.project_number == number && name.starts_with(prefix))
                .map(|(name, b)| render_bucket(name, b))
                .collect();
            ok(json!({"kind": "storage#buckets", "items": items}))
        }
        Kind::BucketInsert => {
            let Some(project) = param(q, "project") else {
                return gcs_error(400, "required", "Required parameter: project");
            };
            let Some(pk) = w.project_key(project) else {
                return gcs_error(403, "forbidden", &format!("The caller does not have storage.buckets.create access to project {project}."));
            };
            if !w.projects[&pk]
                .permissions
                .contains("storage.buckets.create")
            {
                return gcs_error(403, "forbidden", &format!("The caller does not have storage.buckets.create access to the Google Cloud project {project}."));
            }
            let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_string) else {
                return gcs_error(400, "required", "Required: name");
            };
            if w.buckets.contains_key(&name) {
                return gcs_error(409, "conflict", "Your previous request to create the named bucket succeeded and you already own it.");
            }
            let bucket = Bucket {
                project_number: w.projects[&pk].number.clone(),
                location: body
                    .get("location")
                    .and_then(Value::as_str)
                    .unwrap_or("US")
                    .to_uppercase(),
                create_time: now_rfc3339(),
                objects: BTreeMap::new(),
            };
            let out = render_bucket(&name, &bucket);
            w.buckets.insert(name, bucket);
            ok(out)
        }
        Kind::ObjectGet(b, o) => {
            let Some(bucket) = w.buckets.get(b) else {
                return gcs_error(404, "notFound", "The specified bucket does not exist.");
            };
            let Some(obj) = bucket.objects.get(o) else {
                return gcs_error(404, "notFound", &format!("No such object: {b}/{o}"));
            };
            if param(q, "alt") == Some("media") {
                return media(obj, headers);
            }
            ok(render_object(b, o, obj))
        }
        Kind::ObjectUpload(_) | Kind::ObjectUploadChunk => {
            error(500, "INTERNAL", "upload routed wrongly")
        }
        Kind::BuildCreate => {
            let Some(pk) = key else {
                return error(404, "NOT_FOUND", "project");
            };
            build::create(w, &sh.config, &pk, body, now)
        }
        Kind::BuildList => {
            let filter = match build_filter(param(q, "filter").unwrap_or_default()) {
                Ok(f) => f,
                Err(why) => return error(400, "INVALID_ARGUMENT", &why),
            };
            // Newest first, as Cloud Build lists them.
            let builds: Vec<Value> = w
                .builds
                .values()
                .filter(|b| Some(&b.project) == key.as_ref())
                .rev()
                .map(|b| build::render(w, b, now))
                .filter(|b| {
                    filter
                        .iter()
                        .all(|(field, want)| match b.get(field.as_str()) {
                            Some(Value::Array(tags)) => {
                                tags.iter().any(|t| t.as_str() == Some(want))
                            }
                            Some(Value::String(s)) => s == want,
                            _ => false,
                        })
                })
                .collect();
            ok(json!({"builds": builds}))
        }
        Kind::BuildGet(id) => match w.builds.get(id) {
            Some(b) if Some(&b.project) == key.as_ref() => {
                let answer = ok(build::render(w, b, now));
                if let Some(b) = w.builds.get_mut(id) {
                    if b.finished && b.seen_done.is_none() {
                        b.seen_done = Some(now);
                    }
                }
                answer
            }
            _ => error(404, "NOT_FOUND", "Requested entity was not found."),
        },
        Kind::BuildCancel(id) => build::cancel(w, key.as_deref().unwrap_or_default(), id, now),
        Kind::RunGet(l, s) => {
            let p = &w.projects[&key.unwrap_or_default()];
            match p.services.get(&(l.clone(), s.clone())) {
                Some(svc) => ok(render_service(p, l, s, svc)),
                None => run_not_found(s, l, &p.id),
            }
        }
        Kind::SandboxFaults => match super::control::apply(w, &body) {
            Ok((v, api)) => {
                super::queue_faults(sh, api);
                ok(v)
            }
            Err((http, status, message)) => error(http, status, &message),
        },
        Kind::LoggingList => super::logging::list(w, &body),
        Kind::MonitoringTimeSeries => {
            let id = w.projects[&key.unwrap_or_default()].id.clone();
            super::monitoring::time_series(w, &id, q)
        }
        Kind::RunRevisions(l, s) => {
            let p = &w.projects[&key.unwrap_or_default()];
            match p.services.get(&(l.clone(), s.clone())) {
                Some(svc) => {
                    let revs: Vec<Value> = svc
                        .revisions
                        .iter()
                        .rev()
                        .map(|r| render_revision(p, l, s, r))
                        .collect();
                    ok(json!({"revisions": revs}))
                }
                None => run_not_found(s, l, &p.id),
            }
        }
        Kind::RunCreate(l) => {
            let Some(s) = param(q, "serviceId").map(str::to_string) else {
                return error(400, "INVALID_ARGUMENT", "serviceId is required");
            };
            run_apply(
                sh,
                w,
                &key.unwrap_or_default(),
                (l, &s),
                body,
                true,
                (None, param(q, "validateOnly") == Some("true")),
                now,
            )
        }
        Kind::RunPatch(l, s) => run_apply(
            sh,
            w,
            &key.unwrap_or_default(),
            (l, s),
            body,
            false,
            (
                param(q, "updateMask"),
                param(q, "validateOnly") == Some("true"),
            ),
            now,
        ),
        Kind::RunGetIam(l, s) => {
            let p = &w.projects[&key.unwrap_or_default()];
            match p.services.get(&(l.clone(), s.clone())) {
                Some(svc) => ok(svc.iam_policy.clone()),
                None => run_not_found(s, l, &p.id),
            }
        }
        Kind::RunSetIam(l, s) => {
            let Some(p) = w.projects.get_mut(&key.unwrap_or_default()) else {
                return error(404, "NOT_FOUND", "project");
            };
            let pid = p.id.clone();
            match p.services.get_mut(&(l.clone(), s.clone())) {
                Some(svc) => {
                    let mut policy = body.get("policy").cloned().unwrap_or_else(|| json!({}));
                    policy["etag"] = json!(format!("BwY{}", now_rfc3339().len()));
                    svc.iam_policy = policy.clone();
                    ok(policy)
                }
                None => run_not_found(s, l, &pid),
            }
        }
        Kind::OpGet(name) | Kind::OpWait(name) => match w.operations.get_mut(name) {
            Some(op) => {
                if op.done && op.seen_done.is_none() {
                    op.seen_done = Some(now);
                }
                ok(render_op(op))
            }
            None => error(404, "NOT_FOUND", &format!("Operation {name} not found")),
        },
        Kind::NotFound => error(404, "NOT_FOUND", "Requested entity was not found."),
    }
}

/// Media upload, or the start of a resumable session; every write makes a
/// new generation.
fn upload(
    w: &mut World,
    b: &str,
    q: &[(String, String)],
    raw: &[u8],
    headers: &HeaderMap,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let (metadata, data, content_type) = match param(q, "uploadType") {
        Some("resumable") => return start_resumable(w, b, q, raw, headers),
        Some("media") => (Value::Null, raw, content_type),
        Some("multipart") => match split_multipart(&content_type, raw) {
            Some((metadata, data, media_type)) => (metadata, data, media_type),
            None => {
                return gcs_error(
                    400,
                    "invalid",
                    "Malformed multipart body: expected a JSON metadata part and a media part.",
                )
            }
        },
        _ => {
            return gcs_error(
                400,
                "invalid",
                "The sandbox supports uploadType=media, multipart and resumable.",
            )
        }
    };
    // The name comes from the query or, in a multipart upload, the metadata.
    let name = param(q, "name").map(str::to_string).or_else(|| {
        metadata
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(name) = name else {
        return gcs_error(400, "required", "Required parameter: name");
    };
    let name = name.as_str();
    let Some(bucket) = w.buckets.get_mut(b) else {
        return gcs_error(404, "notFound", "The specified bucket does not exist.");
    };
    if param(q, "ifGenerationMatch") == Some("0") && bucket.objects.contains_key(name) {
        return gcs_error(
            412,
            "conditionNotMet",
            "At least one of the pre-conditions you specified did not hold.",
        );
    }
    let o = put_object(bucket, name, data.to_vec(), &content_type);
    ok(render_object(b, name, o))
}

/// A `multipart/related` upload: a JSON metadata part, then the media part.
/// Returns the metadata, the media bytes and the media's content type.
fn split_multipart<'a>(content_type: &str, raw: &'a [u8]) -> Option<(Value, &'a [u8], String)> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()?
        // Python's email package quotes it with single quotes.
        .trim_matches(|c| c == '"' || c == '\'');
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = raw;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        parts.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    // parts[0] is the preamble; then metadata and media; the close follows.
    let (meta, media) = (parts.get(1)?, parts.get(2)?);
    let (_, meta_body) = part(meta)?;
    let metadata: Value = serde_json::from_slice(meta_body).ok()?;
    let (media_headers, media_body) = part(media)?;
    let media_type = media_headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    Some((metadata, media_body, media_type))
}

/// One part between delimiters: its header text and its body, without the
/// line break that belongs to the next delimiter.
fn part(p: &[u8]) -> Option<(String, &[u8])> {
    let p = p.strip_prefix(b"\r\n").or_else(|| p.strip_prefix(b"\n"))?;
    let (split, gap) = match (find(p, b"\r\n\r\n"), find(p, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => return None,
    };
    let headers = String::from_utf8_lossy(&p[..split]).to_string();
    let body = &p[split + gap..];
    let body = body
        .strip_suffix(b"\r\n")
        .or_else(|| body.strip_suffix(b"\n"))
        .unwrap_or(body);
    Some((headers, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn start_resumable(
    w: &mut World,
    b: &str,
    q: &[(String, String)],
    raw: &[u8],
    headers: &HeaderMap,
) -> Response {
    if !w.buckets.contains_key(b) {
        return gcs_error(404, "notFound", "The specified bucket does not exist.");
    }
    let meta: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let Some(name) = param(q, "name")
        .map(str::to_string)
        .or_else(|| meta.get("name").and_then(Value::as_str).map(str::to_string))
    else {
        return gcs_error(400, "required", "Required parameter: name");
    };
    let content_type = headers
        .get("x-upload-content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let id = format!("ADPycd{:016x}", w.next_id());
    w.uploads.insert(
        id.clone(),
        super::world::Upload {
            bucket: b.to_string(),
            name: name.clone(),
            content_type,
            data: vec![],
            done: None,
        },
    );
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let location = format!(
        "http://{host}/upload/storage/v1/b/{b}/o?uploadType=resumable&name={}&upload_id={id}",
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    );
    Response::builder()
        .status(200)
        .header("location", location)
        .header("content-length", "0")
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One chunk (`Content-Range: bytes s-e/total`) or a status query
/// (`bytes */total`): 308 with what is stored until the last byte arrives.
fn upload_chunk(
    w: &mut World,
    q: &[(String, String)],
    raw: &[u8],
    headers: &HeaderMap,
) -> Response {
    let Some(id) = param(q, "upload_id") else {
        return gcs_error(400, "invalid", "upload_id is required");
    };
    let range = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(up) = w.uploads.get_mut(id) else {
        return gcs_error(404, "notFound", "No such upload session");
    };
    if let Some(done) = &up.done {
        return ok(done.clone());
    }
    let Some((span, total)) = range.strip_prefix("bytes ").and_then(|r| r.split_once('/')) else {
        return gcs_error(400, "invalid", "Content-Range is required");
    };
    let total: Option<usize> = total.parse().ok();
    if span != "*" {
        let Some((start, end)) = span
            .split_once('-')
            .and_then(|(s, e)| Some((s.parse::<usize>().ok()?, e.parse::<usize>().ok()?)))
        else {
            return gcs_error(400, "invalid", "bad Content-Range");
        };
        if start != up.data.len() || end + 1 - start != raw.len() {
            return gcs_error(
                400,
                "invalid",
                &format!(
                    "chunk {start}-{end} does not continue the {} bytes stored",
                    up.data.len()
                ),
            );
        }
        up.data.extend_from_slice(raw);
    }
    if total == Some(up.data.len()) {
        let (bucket, name, data, ct) = (
            up.bucket.clone(),
            up.name.clone(),
            std::mem::take(&mut up.data),
            up.content_type.clone(),
        );
        let Some(bk) = w.buckets.get_mut(&bucket) else {
            return gcs_error(404, "notFound", "The specified bucket does not exist.");
        };
        let o = put_object(bk, &name, data, &ct);
        let rendered = render_object(&bucket, &name, o);
        if let Some(up) = w.uploads.get_mut(id) {
            up.done = Some(rendered.clone());
        }
        return ok(rendered);
    }
    let mut b = Response::builder().status(308);
    if !up.data.is_empty() {
        b = b.header("range", format!("bytes=0-{}", up.data.len() - 1));
    }
    b.body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Writes an object with a fresh, increasing generation (µs since epoch).
pub(crate) fn put_object<'b>(
    bucket: &'b mut Bucket,
    name: &str,
    data: Vec<u8>,
    content_type: &str,
) -> &'b Object {
    use std::collections::btree_map::Entry;
    let micros = chrono::Utc::now().timestamp_micros();
    let prev = bucket.objects.get(name).map(|o| o.generation).unwrap_or(0);
    let o = Object {
        generation: micros.max(prev + 1),
        data,
        content_type: content_type.into(),
        updated: now_rfc3339(),
    };
    // Returned by reference: a large source is not copied to be described.
    match bucket.objects.entry(name.to_string()) {
        Entry::Occupied(mut e) => {
            e.insert(o);
            e.into_mut()
        }
        Entry::Vacant(e) => e.insert(o),
    }
}

fn test_permissions(body: &Value, holds: impl Fn(&str) -> bool) -> Response {
    let asked: Vec<&str> = body
        .get("permissions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if asked
        .iter()
        .any(|p| p.contains('*') || p.split('.').count() < 3)
    {
        return error(
            400,
            "INVALID_ARGUMENT",
            "Permissions must be fully qualified, without wildcards",
        );
    }
    let held: Vec<&str> = asked.into_iter().filter(|p| holds(p)).collect();
    // proto3: an empty list is omitted.
    if held.is_empty() {
        ok(json!({}))
    } else {
        ok(json!({"permissions": held}))
    }
}

fn su_service(p: &ProjectState, s: &str) -> Value {
    let state = if p.enabled_apis.contains(s) {
        "ENABLED"
    } else {
        "DISABLED"
    };
    json!({
        "name": format!("projects/{}/services/{s}", p.number),
        "parent": format!("projects/{}", p.number),
        "state": state,
        "config": {"name": s, "title": title(s)},
    })
}

fn title(api: &str) -> String {
    match api {
        "cloudbuild.googleapis.com" => "Cloud Build API".into(),
        "run.googleapis.com" => "Cloud Run Admin API".into(),
        "artifactregistry.googleapis.com" => "Artifact Registry API".into(),
        "cloudresourcemanager.googleapis.com" => "Cloud Resource Manager API".into(),
        "secretmanager.googleapis.com" => "Secret Manager API".into(),
        "iam.googleapis.com" => "Identity and Access Management (IAM) API".into(),
        "orgpolicy.googleapis.com" => "Organization Policy API".into(),
        other => other.to_string(),
    }
}

fn render_repo(p: &ProjectState, l: &str, name: &str, r: &Repository) -> Value {
    json!({
        "name": format!("projects/{}/locations/{l}/repositories/{name}", p.id),
        "format": r.format,
        "mode": "STANDARD_REPOSITORY",
        "description": r.description,
        "createTime": r.create_time,
        "updateTime": r.create_time,
        "registryUri": format!("{l}-docker.pkg.dev/{}/{name}", p.id),
        "sizeBytes": "0",
    })
}

fn render_bucket(name: &str, b: &Bucket) -> Value {
    json!({
        "kind": "storage#bucket",
        "id": name,
        "name": name,
        "selfLink": format!("https://www.googleapis.com/storage/v1/b/{name}"),
        "projectNumber": b.project_number,
        "location": b.location,
        "locationType": "region",
        "storageClass": "STANDARD",
        "metageneration": "1",
        "timeCreated": b.create_time,
        "updated": b.create_time,
        "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": true}, "publicAccessPrevention": "enforced"},
        "etag": "CAE=",
    })
}

pub(crate) fn render_object(bucket: &str, name: &str, o: &Object) -> Value {
    json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{name}/{}", o.generation),
        "name": name,
        "bucket": bucket,
        "generation": o.generation.to_string(),
        "metageneration": "1",
        "contentType": o.content_type,
        "size": o.data.len().to_string(),
        "timeCreated": o.updated,
        "updated": o.updated,
        "storageClass": "STANDARD",
    })
}

/// `alt=media` with Range semantics: 206 with Content-Range, 416 past the end.
fn media(o: &Object, headers: &HeaderMap) -> Response {
    let size = o.data.len();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let gen = o.generation.to_string();
    match range {
        None => Response::builder()
            .status(200)
            .header("content-type", o.content_type.as_str())
            .header("x-goog-generation", gen)
            .body(Body::from(o.data.clone()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Some(start) if start >= size => Response::builder()
            .status(416)
            .header("content-range", format!("bytes */{size}"))
            .header("content-type", "application/json")
            .body(Body::from(
                gcs_error_body(
                    416,
                    "requestedRangeNotSatisfiable",
                    "The requested range cannot be satisfied.",
                )
                .to_string(),
            ))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Some(start) => Response::builder()
            .status(206)
            .header("content-type", o.content_type.as_str())
            .header(
                "content-range",
                format!("bytes {start}-{}/{size}", size - 1),
            )
            .header("x-goog-generation", gen)
            .body(Body::from(o.data[start..].to_vec()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

fn render_service_account(p: &ProjectState, email: &str, disabled: bool) -> Value {
    let mut sa = json!({
        "name": format!("projects/{}/serviceAccounts/{email}", p.id),
        "projectId": p.id,
        "email": email,
        "uniqueId": "104",
    });
    if disabled {
        sa["disabled"] = json!(true);
    }
    sa
}

/// The metadata server's identity endpoint. The emulated instance runs in
/// the default project as its compute account; the token is plain text.
fn metadata_identity(
    w: &mut World,
    account: &str,
    q: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    // Without the header the metadata server refuses, so that a redirected
    // or forged request cannot read tokens.
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n",
        )
            .into_response();
    }
    let Some(p) = w.projects.get(super::DEFAULT_PROJECT) else {
        return (StatusCode::NOT_FOUND, "no instance\n").into_response();
    };
    let compute = format!("{}-compute@developer.gserviceaccount.com", p.number);
    if account != "default" && account != compute {
        return (StatusCode::NOT_FOUND, "service account not found\n").into_response();
    }
    let Some(audience) = q
        .iter()
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.clone())
        .filter(|a| !a.is_empty())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n",
        )
            .into_response();
    };
    (
        StatusCode::OK,
        super::run::mint_id_token(w, &audience, &compute),
    )
        .into_response()
}

pub(crate) fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

pub(crate) fn error(http: u16, status: &str, message: &str) -> Response {
    json_status(
        http,
        json!({"error": {"code": http, "message": message, "status": status}}),
    )
}

pub(crate) fn error_info(
    http: u16,
    status: &str,
    message: &str,
    reason: &str,
    metadata: Value,
) -> Response {
    json_status(
        http,
        json!({"error": {"code": http, "message": message, "status": status, "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com", "metadata": metadata},
        ]}}),
    )
}

fn injected(e: &InjectedError) -> Response {
    let mut details = vec![];
    if let Some(reason) = &e.reason {
        let metadata: serde_json::Map<String, Value> = e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        details.push(json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com", "metadata": metadata}));
    }
    if let Some(d) = e.retry_delay {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{}s", d.as_secs_f64())}));
    }
    let mut body = json!({"error": {"code": e.http, "message": e.message, "status": e.status}});
    if !details.is_empty() {
        body["error"]["details"] = json!(details);
    }
    json_status(e.http, body)
}

/// SERVICE_DISABLED exactly as the contract's §10.4 shows it.
pub(crate) fn service_disabled(api: &str, project: &str) -> Response {
    let t = title(api);
    let url =
        format!("https://console.developers.google.com/apis/api/{api}/overview?project={project}");
    let message = format!("{t} has not been used in project {project} before or it is disabled. Enable it by visiting {url} then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.");
    json_status(
        403,
        json!({"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
             "metadata": {"service": api, "consumer": format!("projects/{project}"), "activationUrl": url, "containerInfo": project, "serviceTitle": t}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Google developers console API activation", "url": url}]},
        ]}}),
    )
}

fn gcs_error_body(http: u16, reason: &str, message: &str) -> Value {
    json!({"error": {"code": http, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}})
}

/// Cloud Storage's legacy error shape: no `status`, no `details`.
fn gcs_error(http: u16, reason: &str, message: &str) -> Response {
    json_status(http, gcs_error_body(http, reason, message))
}

fn json_status(http: u16, v: Value) -> Response {
    let code = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(v)).into_response()
}

/// Headers, then a body that fails: the client sees a reset connection.
fn reset() -> Response {
    let stream = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox reset",
        ))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::split_multipart;

    #[test]
    fn multipart_uploads_split_with_either_line_ending() {
        for nl in ["\n", "\r\n"] {
            let body = format!(
                "--b0{nl}Content-Type: application/json{nl}{nl}{{\"name\":\"src.tgz\"}}{nl}--b0{nl}Content-Type: application/x-tar{nl}{nl}\u{1}bytes{nl}with lines{nl}--b0--{nl}"
            );
            let (meta, data, media_type) =
                split_multipart("multipart/related; boundary='b0'", body.as_bytes())
                    .expect("parts");
            assert_eq!(meta["name"], "src.tgz");
            assert_eq!(data, format!("\u{1}bytes{nl}with lines").as_bytes());
            assert_eq!(media_type, "application/x-tar");
        }
        assert!(split_multipart("multipart/related; boundary=x", b"no parts").is_none());
    }
}
