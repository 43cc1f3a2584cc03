//! Cloud Run v2 emulation: create and patch (full replace, or `updateMask`),
//! traffic validation, revisions that become ready (or not), tagged traffic
//! targets with URLs of their own, and long-running operations generally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use serde_json::{json, Value};

use super::routes::{error, ok};
use super::world::{
    now_rfc3339, Effect, LoggedLine, Operation, ProjectState, Revision, Service, TagRoute, World,
};
use super::{app, Shared};
use tokio_util::sync::CancellationToken;

pub(crate) fn run_not_found(s: &str, l: &str, p: &str) -> Response {
    error(
        404,
        "NOT_FOUND",
        &format!(
            "Resource '{s}' of kind 'SERVICE' in region '{l}' in project '{p}' does not exist."
        ),
    )
}

/// Percentages must total 100; REVISION targets must name an existing
/// revision or the one this request creates.
fn validate_traffic(
    traffic: &Value,
    existing: &[Revision],
    new_revision: Option<&str>,
) -> Result<(), String> {
    let Some(entries) = traffic.as_array() else {
        return Ok(());
    };
    if entries.is_empty() {
        return Ok(());
    }
    let total: u64 = entries
        .iter()
        .filter_map(|t| t.get("percent").and_then(Value::as_u64))
        .sum();
    if total != 100 {
        return Err(format!(
            "spec.traffic: percentages must add up to 100, not {total}"
        ));
    }
    for t in entries {
        if t.get("type").and_then(Value::as_str) != Some("TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION")
        {
            continue;
        }
        let r = t
            .get("revision")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !existing.iter().any(|e| e.name == r) && Some(r) != new_revision {
            return Err(format!("spec.traffic: revision {r} does not exist"));
        }
    }
    Ok(())
}

/// Create, full-replace patch, or `updateMask=traffic` patch: validate
/// synchronously (org policy, traffic, names), then a long-running rollout.
/// Cloud Run's limits on what a container may ask for, as its API refuses
/// them (written here independently of deployd's own request checks).
fn check_container(body: &Value) -> Result<(), String> {
    const RESERVED: [&str; 4] = ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];
    let container = body
        .pointer("/template/containers/0")
        .unwrap_or(&Value::Null);
    let env = container
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if env.len() > 1000 {
        return Err("spec.template.containers[0].env: at most 1000 variables".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in env.iter().enumerate() {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        let well_formed = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !well_formed || RESERVED.contains(&name) || name.starts_with("X_GOOGLE_") {
            return Err(format!(
                "spec.template.containers[0].env[{i}].name: {name:?} is not allowed"
            ));
        }
        if !seen.insert(name.to_string()) {
            return Err(format!(
                "spec.template.containers[0].env[{i}].name: {name} is set twice"
            ));
        }
        let value = e.get("value").and_then(Value::as_str).unwrap_or_default();
        if value.len() > 32768 {
            return Err(format!(
                "spec.template.containers[0].env[{i}].value: must not exceed 32768 bytes"
            ));
        }
    }
    let limits = container.pointer("/resources/limits");
    let cpu_millis = limits
        .and_then(|l| l.get("cpu"))
        .and_then(Value::as_str)
        .and_then(|c| match c.strip_suffix('m') {
            Some(m) => m.parse::<u64>().ok(),
            None => c.parse::<f64>().ok().map(|f| (f * 1000.0).round() as u64),
        })
        .unwrap_or(1000);
    let memory_mib = limits
        .and_then(|l| l.get("memory"))
        .and_then(Value::as_str)
        .and_then(mebibytes)
        .unwrap_or(512);
    if let Some(m) = cpu_memory_mismatch(cpu_millis, memory_mib) {
        return Err(m);
    }
    if let Some(cpu) = limits.and_then(|l| l.get("cpu")).and_then(Value::as_str) {
        let ok = ["1", "2", "4", "6", "8"].contains(&cpu)
            || cpu
                .strip_suffix('m')
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| (80..=8000).contains(&m))
            || cpu.parse::<f64>().is_ok_and(|f| (0.08..1.0).contains(&f));
        if !ok {
            return Err(format!(
                "spec.template.containers[0].resources.limits.cpu: {cpu:?} is invalid"
            ));
        }
    }
    if let Some(mem) = limits.and_then(|l| l.get("memory")).and_then(Value::as_str) {
        let digits = mem.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &mem[digits.len()..];
        if digits.parse::<u64>().is_err() || !["", "Ki", "Mi", "Gi", "k", "M", "G"].contains(&unit)
        {
            return Err(format!(
                "spec.template.containers[0].resources.limits.memory: {mem:?} is invalid"
            ));
        }
    }
    if let Some(probe) = container.get("startupProbe") {
        let secs = |name: &str| probe.get(name).and_then(Value::as_u64);
        let field = |name: &str| format!("spec.template.containers[0].startupProbe.{name}");
        let period = secs("periodSeconds").unwrap_or(10);
        let timeout = secs("timeoutSeconds").unwrap_or(1);
        let threshold = secs("failureThreshold").unwrap_or(3);
        if !(1..=240).contains(&period) {
            return Err(format!(
                "{}: must be between 1 and 240",
                field("periodSeconds")
            ));
        }
        if timeout < 1 || timeout > period {
            return Err(format!(
                "{}: must be at least 1 and not above periodSeconds",
                field("timeoutSeconds")
            ));
        }
        if secs("initialDelaySeconds").unwrap_or(0) > 240 {
            return Err(format!(
                "{}: must be at most 240",
                field("initialDelaySeconds")
            ));
        }
        if threshold < 1 || threshold * period > 240 {
            return Err(format!(
                "{}: failureThreshold x periodSeconds must not exceed 240 seconds",
                field("failureThreshold")
            ));
        }
    }
    for field in ["minInstanceCount", "maxInstanceCount"] {
        if let Some(n) = body
            .pointer(&format!("/template/scaling/{field}"))
            .and_then(Value::as_u64)
        {
            if n > 1000 {
                return Err(format!(
                    "spec.template.scaling.{field}: {n} exceeds the limit"
                ));
            }
        }
    }
    Ok(())
}

/// Regions Cloud Run serves (2026).
const REGIONS: &[&str] = &[
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// A memory limit in MiB (`512Mi`, `2Gi`, `1G`, bytes).
fn mebibytes(m: &str) -> Option<u64> {
    let digits = m.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let bytes = match &m[digits.len()..] {
        "" => n,
        "k" => n * 1_000,
        "Ki" => n << 10,
        "M" => n * 1_000_000,
        "Mi" => n << 20,
        "G" => n * 1_000_000_000,
        "Gi" => n << 30,
        _ => return None,
    };
    Some(bytes >> 20)
}

/// Cloud Run's documented pairings of CPU and memory: under one CPU at
/// most 512 MiB; 4, 6 and 8 CPUs need 2, 4 and 4 GiB at least; more than
/// 4, 8, 16 and 24 GiB need 2, 4, 6 and 8 CPUs.
fn cpu_memory_mismatch(cpu_millis: u64, memory_mib: u64) -> Option<String> {
    let field = "spec.template.containers[0].resources.limits";
    let cpus = cpu_millis as f64 / 1000.0;
    if cpu_millis < 1000 && memory_mib > 512 {
        return Some(format!(
            "{field}.cpu: a CPU limit below 1 ({cpus}) allows at most 512Mi of memory, not {memory_mib}Mi"
        ));
    }
    let min_memory = match cpu_millis {
        8000 | 6000 => 4096,
        4000 => 2048,
        _ => 0,
    };
    if memory_mib < min_memory {
        return Some(format!(
            "{field}.memory: {cpus} CPUs need at least {min_memory}Mi of memory, not {memory_mib}Mi"
        ));
    }
    let min_cpu = match memory_mib {
        m if m > 24 << 10 => 8000,
        m if m > 16 << 10 => 6000,
        m if m > 8 << 10 => 4000,
        m if m > 4 << 10 => 2000,
        _ => 0,
    };
    if cpu_millis < min_cpu {
        return Some(format!(
            "{field}.cpu: {memory_mib}Mi of memory needs at least {} CPUs, not {cpus}",
            min_cpu / 1000
        ));
    }
    None
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_apply(
    sh: &Arc<Shared>,
    w: &mut World,
    pk: &str,
    (l, s): (&str, &str),
    body: Value,
    create: bool,
    (update_mask, validate_only): (Option<&str>, bool),
    now: Instant,
) -> Response {
    if !REGIONS.contains(&l) {
        return error(
            400,
            "INVALID_ARGUMENT",
            &format!("Location '{l}' is not a Cloud Run region."),
        );
    }
    let id = w.next_id();
    let Some(p) = w.projects.get_mut(pk) else {
        return error(404, "NOT_FOUND", "project");
    };
    let k = (l.to_string(), s.to_string());
    let traffic_only = update_mask == Some("traffic");
    if traffic_only {
        let Some(svc) = p.services.get_mut(&k) else {
            return run_not_found(s, l, &p.id);
        };
        let traffic = body.get("traffic").cloned().unwrap_or_else(|| json!([]));
        if let Err(m) = validate_traffic(&traffic, &svc.revisions, None) {
            return error(400, "INVALID_ARGUMENT", &m);
        }
        svc.generation += 1;
        svc.spec["traffic"] = traffic;
        svc.reconciling = true;
        svc.update_time = now_rfc3339();
        return start_rollout_op(
            sh,
            w,
            pk,
            l,
            s,
            id,
            Effect::RunTraffic {
                project: pk.into(),
                location: l.into(),
                service: s.into(),
            },
            now,
        );
    }
    if let Some(mask) = update_mask {
        return error(
            400,
            "INVALID_ARGUMENT",
            &format!("the sandbox supports updateMask=traffic only, not {mask:?}"),
        );
    }
    let image = body
        .pointer("/template/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if image.is_empty() {
        return error(
            400,
            "INVALID_ARGUMENT",
            "spec.template.containers[0].image: Required",
        );
    }
    if let Err(m) = check_container(&body) {
        return error(400, "INVALID_ARGUMENT", &m);
    }
    let ingress = body
        .get("ingress")
        .and_then(Value::as_str)
        .unwrap_or("INGRESS_TRAFFIC_ALL");
    let ingress_value = match ingress {
        "INGRESS_TRAFFIC_INTERNAL_ONLY" => "internal",
        "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" => "internal-and-cloud-load-balancing",
        _ => "all",
    };
    if let Some(refused) = enforce(p, "run.allowedIngress", ingress_value) {
        return refused;
    }
    if let Some(egress) = body
        .pointer("/template/vpcAccess/egress")
        .and_then(Value::as_str)
    {
        let v = if egress == "ALL_TRAFFIC" {
            "all-traffic"
        } else {
            "private-ranges-only"
        };
        if let Some(refused) = enforce(p, "run.allowedVPCEgress", v) {
            return refused;
        }
    }
    let byo = body
        .pointer("/template/revision")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(name) = &byo {
        if !name.starts_with(&format!("{s}-")) {
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!("spec.template.revision: {name} must start with {s}-"),
            );
        }
    }
    let existing: &[Revision] = p
        .services
        .get(&k)
        .map(|svc| svc.revisions.as_slice())
        .unwrap_or(&[]);
    if let Some(name) = &byo {
        // Re-applying the same template under its name is a no-op, as on
        // Cloud Run; another template under a taken name is refused.
        let same = existing
            .iter()
            .any(|r| &r.name == name && Some(&r.template) == body.get("template"));
        if !same && existing.iter().any(|r| &r.name == name) {
            return error(
                409,
                "ALREADY_EXISTS",
                &format!("Revision named '{name}' already exists."),
            );
        }
    }
    if let Err(m) = validate_traffic(
        body.get("traffic").unwrap_or(&Value::Null),
        existing,
        byo.as_deref(),
    ) {
        return error(400, "INVALID_ARGUMENT", &m);
    }
    if validate_only {
        // Validated; nothing is persisted and nothing runs.
        return match (create, p.services.contains_key(&k)) {
            (true, true) => error(
                409,
                "ALREADY_EXISTS",
                &format!("Resource '{s}' already exists."),
            ),
            (false, false) => run_not_found(s, l, &p.id),
            _ => ok(json!({
                "name": format!("projects/{}/locations/{l}/operations/validate-{id:08x}", p.id),
                "done": true,
                "response": {
                    "@type": "type.googleapis.com/google.cloud.run.v2.Service",
                    "name": format!("projects/{}/locations/{l}/services/{s}", p.id),
                    "template": body.get("template").cloned().unwrap_or(Value::Null),
                },
            })),
        };
    }
    let now_s = now_rfc3339();
    match (create, p.services.contains_key(&k)) {
        (true, true) => {
            return error(
                409,
                "ALREADY_EXISTS",
                &format!("Resource '{s}' already exists."),
            )
        }
        (false, false) => return run_not_found(s, l, &p.id),
        (true, false) => {
            let uri = match app::spawn(
                sh.clone(),
                p.id.clone(),
                l.to_string(),
                s.to_string(),
                None,
                CancellationToken::new(),
            ) {
                Ok(uri) => uri,
                Err(e) => {
                    return error(
                        500,
                        "INTERNAL",
                        &format!("sandbox could not start the service: {e}"),
                    )
                }
            };
            p.services.insert(
                k.clone(),
                Service {
                    uid: format!("{id:08x}-0000-4000-8000-{id:012x}"),
                    generation: 0,
                    observed_generation: 0,
                    spec: Value::Null,
                    revisions: vec![],
                    latest_ready: None,
                    latest_created: None,
                    reconciling: false,
                    failed_message: None,
                    uri,
                    iam_policy: json!({"etag": "ACAB"}),
                    create_time: now_s.clone(),
                    update_time: now_s.clone(),
                    app_script: Default::default(),
                    tags: BTreeMap::new(),
                },
            );
        }
        (false, true) => {}
    }
    let Some(svc) = p.services.get_mut(&k) else {
        return error(500, "INTERNAL", "service vanished");
    };
    svc.generation += 1;
    svc.spec = body;
    svc.reconciling = true;
    svc.update_time = now_s;
    start_rollout_op(
        sh,
        w,
        pk,
        l,
        s,
        id,
        Effect::RunRollout {
            project: pk.into(),
            location: l.into(),
            service: s.into(),
        },
        now,
    )
}

#[allow(clippy::too_many_arguments)]
fn start_rollout_op(
    sh: &Arc<Shared>,
    w: &mut World,
    pk: &str,
    l: &str,
    s: &str,
    id: u64,
    effect: Effect,
    now: Instant,
) -> Response {
    let p = &w.projects[pk];
    let mut metadata = render_service(p, l, s, &p.services[&(l.to_string(), s.to_string())]);
    metadata["@type"] = json!("type.googleapis.com/google.cloud.run.v2.Service");
    let name = format!(
        "projects/{}/locations/{l}/operations/{id:08x}-6d0e-4b7a-9a61-{id:012x}",
        p.id
    );
    let rollout = matches!(effect, Effect::RunRollout { .. });
    let out = start_op(w, sh, name.clone(), metadata, None, effect, now);
    if sh.config.run_apps {
        if rollout {
            start_new_revision(sh, w, pk, l, s, &name);
        } else {
            restart_serving(sh, w, pk, l, s, &name);
        }
    }
    out
}

/// Processes the sandbox runs at most; beyond, revisions get the stand-in.
const MAX_PROCESSES: usize = 16;

/// Starts the revision a rollout will create as a process, when its image
/// was built here and its command can run on this machine; the operation
/// waits for it to listen (or fail to).
fn start_new_revision(sh: &Arc<Shared>, w: &mut World, pk: &str, l: &str, s: &str, op: &str) {
    let Some(svc) = w
        .projects
        .get(pk)
        .and_then(|p| p.services.get(&(l.to_string(), s.to_string())))
    else {
        return;
    };
    let template = svc.spec.get("template").cloned().unwrap_or(Value::Null);
    // An unchanged template makes no new revision.
    if svc
        .revisions
        .iter()
        .any(|r| Some(&r.name) == svc.latest_created.as_ref() && r.ready && r.template == template)
    {
        return;
    }
    let revision = template
        .get("revision")
        .and_then(Value::as_str)
        .map(str::to_string);
    let runner = spawn_native(sh, w, op, None, &template, s, revision.as_deref());
    w.next_runner
        .insert((pk.to_string(), s.to_string()), runner);
}

/// A traffic change to revisions whose processes were stopped (they had
/// lost all traffic, as a rollback's target has): started again, as Cloud
/// Run starts instances of a revision that had scaled to zero.
fn restart_serving(sh: &Arc<Shared>, w: &mut World, pk: &str, l: &str, s: &str, op: &str) {
    let Some(svc) = w
        .projects
        .get(pk)
        .and_then(|p| p.services.get(&(l.to_string(), s.to_string())))
    else {
        return;
    };
    let wanted = serving_revisions(svc);
    let stopped: Vec<(String, Value)> = svc
        .revisions
        .iter()
        .filter(|r| r.ready && wanted.contains(&r.name))
        .filter(|r| {
            !w.processes.contains_key(&(
                pk.to_string(),
                l.to_string(),
                s.to_string(),
                r.name.clone(),
            ))
        })
        // Only revisions that ran here before: a stand-in stays one.
        .filter(|r| {
            w.ran_natively
                .contains(&(pk.to_string(), s.to_string(), r.name.clone()))
        })
        .map(|r| (r.name.clone(), r.template.clone()))
        .collect();
    for (revision, template) in stopped {
        let _ = spawn_native(
            sh,
            w,
            op,
            Some(revision.clone()),
            &template,
            s,
            Some(&revision),
        );
    }
}

/// How a revision runs in the sandbox: its own process, or the stand-in
/// and why. Reported on the service as a condition, so a deploy can say
/// which one its verify reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    Native(String),
    StandIn(String),
}

/// Spawns `template`'s container for the operation `op`: its result lands
/// in `native_results[op]` under `revision` (`None`: the one the rollout
/// creates). Returns how the revision will run.
fn spawn_native(
    sh: &Arc<Shared>,
    w: &mut World,
    op: &str,
    revision: Option<String>,
    template: &Value,
    service: &str,
    revision_name: Option<&str>,
) -> Runner {
    let image = template
        .pointer("/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let stand_in = |why: &str| {
        tracing::info!(service, image = %image, reason = why, "sandbox: the revision answers with the stand-in, not its app");
        Runner::StandIn(why.to_string())
    };
    let Some(ctx) = w
        .contexts
        .iter()
        .rev()
        .find(|(k, _)| *k == image)
        .map(|(_, c)| c.clone())
    else {
        return stand_in("the image was not built by this sandbox");
    };
    let plan = match super::native::plan(&ctx.files) {
        Ok(p) => p,
        Err(why) => return stand_in(&why),
    };
    if let Some(why) = super::native::unrunnable(&plan, &ctx.files) {
        return stand_in(&why);
    }
    if w.processes.len() >= MAX_PROCESSES {
        return stand_in("the sandbox runs as many processes as it may");
    }
    let mut env: Vec<(String, String)> = template
        .pointer("/containers/0/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("name")?.as_str()?.to_string(),
                e.get("value")?.as_str()?.to_string(),
            ))
        })
        .collect();
    // What Cloud Run sets in every container.
    env.push(("K_SERVICE".into(), service.to_string()));
    env.push(("K_CONFIGURATION".into(), service.to_string()));
    if let Some(r) = revision_name {
        env.push(("K_REVISION".into(), r.to_string()));
    }
    let memory = template
        .pointer("/containers/0/resources/limits/memory")
        .and_then(Value::as_str)
        .and_then(super::native::memory_bytes)
        .unwrap_or(super::native::DEFAULT_MEMORY);
    let Ok(port) = super::native::free_port() else {
        return stand_in("no free port");
    };
    let what = format!(
        "runs the app natively: `{}` on PORT={port}",
        plan.argv.join(" ")
    );
    if let Some(o) = w.operations.get_mut(op) {
        o.native_pending += 1;
    }
    let (shared, op) = (sh.clone(), op.to_string());
    let run_root = sh.config.run_root.clone();
    tokio::spawn(async move {
        let startup = shared.config.native_startup;
        let started = super::native::start(
            ctx,
            plan,
            super::native::Limits {
                port,
                memory,
                startup,
                root: run_root,
            },
            env,
        )
        .await;
        let mut w = shared.world();
        w.native_results
            .entry(op.clone())
            .or_default()
            .push((revision, started));
        if let Some(o) = w.operations.get_mut(&op) {
            o.native_pending = o.native_pending.saturating_sub(1);
            o.done_at = o.done_at.min(Instant::now());
        }
    });
    Runner::Native(what)
}

/// The revisions a service keeps running: those with traffic or a tag.
fn serving_revisions(svc: &super::world::Service) -> std::collections::BTreeSet<String> {
    svc.traffic_targets()
        .filter(|t| {
            t.get("percent").and_then(Value::as_u64).unwrap_or(0) > 0 || t.get("tag").is_some()
        })
        .filter_map(|t| match t.get("revision").and_then(Value::as_str) {
            Some(r) => Some(r.rsplit('/').next().unwrap_or(r).to_string()),
            None => svc.latest_ready.clone(),
        })
        .collect()
}

/// Stops the processes of the service's revisions that have no traffic
/// and no tag any more.
fn prune_processes(w: &mut World, pk: &str, l: &str, s: &str) {
    let Some(svc) = w
        .projects
        .get(pk)
        .and_then(|p| p.services.get(&(l.to_string(), s.to_string())))
    else {
        w.processes
            .retain(|k, _| !(k.0 == pk && k.1 == l && k.2 == s));
        return;
    };
    let keep = serving_revisions(svc);
    w.processes
        .retain(|k, _| !(k.0 == pk && k.1 == l && k.2 == s) || keep.contains(&k.3));
}

/// The Run API's refusal of a value an org policy constraint forbids.
fn enforce(p: &ProjectState, constraint: &str, value: &str) -> Option<Response> {
    policy_violation(p, constraint, value).map(|reason| {
        error(
            400,
            "FAILED_PRECONDITION",
            &format!("Violation of constraint constraints/{constraint}: {reason}"),
        )
    })
}

pub(crate) fn policy_violation(p: &ProjectState, constraint: &str, value: &str) -> Option<String> {
    let rules = p
        .policies
        .get(constraint)?
        .get("rules")?
        .as_array()?
        .clone();
    let strip = |v: &Value| v.as_str().map(|s| s.trim_start_matches("is:").to_string());
    for r in rules {
        if r.get("denyAll").and_then(Value::as_bool) == Some(true) {
            return Some(format!("{value} is denied (deny all)"));
        }
        if let Some(allowed) = r.pointer("/values/allowedValues").and_then(Value::as_array) {
            let allowed: Vec<String> = allowed.iter().filter_map(strip).collect();
            if !allowed.iter().any(|a| a == value) {
                return Some(format!(
                    "{value} is not among the allowed values {}",
                    allowed.join(", ")
                ));
            }
        }
    }
    None
}

pub(crate) fn start_op(
    w: &mut World,
    sh: &Arc<Shared>,
    name: String,
    metadata: Value,
    response: Option<Value>,
    effect: Effect,
    now: Instant,
) -> Response {
    let op = Operation {
        name: name.clone(),
        done_at: now + sh.config.op_delay,
        done: false,
        metadata,
        response,
        error: None,
        effect,
        seen_done: None,
        native_pending: 0,
    };
    let out = render_op(&op);
    w.operations.insert(name, op);
    ok(out)
}

/// What the running processes printed since, into the log.
pub(crate) fn flush_process_output(sh: &Arc<Shared>, w: &mut World) {
    let printed: Vec<_> = w
        .processes
        .iter()
        .map(|(k, p)| (k.clone(), p.take_lines()))
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    for ((pk, l, s, r), lines) in printed {
        for line in lines {
            w.log(&pk, &l, &s, &r, line, &sh.config.limits);
        }
    }
}

/// Completes operations whose time has come, applying their effects.
pub(crate) fn finish_operations(sh: &Arc<Shared>, w: &mut World, now: Instant) {
    flush_process_output(sh, w);
    let due: Vec<String> = w
        .operations
        .values()
        .filter(|o| !o.done && o.native_pending == 0 && o.done_at <= now)
        .map(|o| o.name.clone())
        .collect();
    for name in due {
        let effect = w.operations[&name].effect.clone();
        let result = match effect {
            Effect::None => Ok(None),
            Effect::RunRollout {
                project,
                location,
                service,
            } => {
                let key = (project.clone(), service.clone());
                let mut pending = w.next_revision_logs.remove(&key);
                let native = w
                    .native_results
                    .remove(&name)
                    .and_then(|mut r| r.pop().map(|(_, started)| started));
                let (process, native_failure) = match native {
                    Some(Ok(p)) => (Some(p), None),
                    Some(Err(not_started)) => {
                        let lines = pending.get_or_insert_with(Vec::new);
                        lines.extend(not_started.lines);
                        lines.push(LoggedLine {
                            stream: "varlog%2Fsystem".into(),
                            severity: "ERROR".into(),
                            text: format!("Container failed to start: {}", not_started.message),
                        });
                        (None, Some(not_started.message))
                    }
                    None => (None, None),
                };
                let latest = |w: &World| {
                    w.projects
                        .get(&project)
                        .and_then(|p| p.services.get(&(location.clone(), service.clone())))
                        .and_then(|s| {
                            let name = s.latest_created.clone()?;
                            let ready = s.revisions.iter().any(|r| r.name == name && r.ready);
                            // A missing image starts no container to log.
                            let started = !s
                                .revisions
                                .iter()
                                .any(|r| r.name == name && r.reason == "CONTAINER_MISSING");
                            Some((name, ready, started))
                        })
                };
                let before = latest(w);
                let port = w
                    .projects
                    .get(&project)
                    .and_then(|p| p.services.get(&(location.clone(), service.clone())))
                    .and_then(|s| {
                        s.spec
                            .pointer("/template/containers/0/ports/0/containerPort")
                    })
                    .and_then(Value::as_u64)
                    .unwrap_or(8080);
                let result = rollout(
                    sh,
                    w,
                    &project,
                    &location,
                    &service,
                    native_failure.as_deref(),
                );
                match latest(w) {
                    Some((revision, ready, started))
                        if Some(&revision) != before.as_ref().map(|b| &b.0) =>
                    {
                        let limits = &sh.config.limits;
                        if let (true, Some(p)) = (ready, process) {
                            w.ran_natively.insert((
                                project.clone(),
                                service.clone(),
                                revision.clone(),
                            ));
                            w.processes.insert(
                                (
                                    project.clone(),
                                    location.clone(),
                                    service.clone(),
                                    revision.clone(),
                                ),
                                p,
                            );
                        }
                        for line in pending.into_iter().flatten() {
                            w.log(&project, &location, &service, &revision, line, limits);
                        }
                        if !ready && started && result.is_err() {
                            // What Cloud Run's platform logs for a container
                            // that never listened.
                            let line = LoggedLine {
                                stream: "varlog%2Fsystem".into(),
                                severity: "ERROR".into(),
                                text: format!("Default STARTUP TCP probe failed 1 time consecutively for container \"{service}-1\" on port {port}. The instance was not started."),
                            };
                            w.log(&project, &location, &service, &revision, line, limits);
                        }
                    }
                    // No new revision: the lines wait for the next one.
                    _ => {
                        if let Some(p) = pending {
                            w.next_revision_logs.insert(key, p);
                        }
                    }
                }
                prune_processes(w, &project, &location, &service);
                result
            }
            Effect::RunTraffic {
                project,
                location,
                service,
            } => {
                // Revisions started again for the traffic they got back.
                for (revision, started) in w.native_results.remove(&name).unwrap_or_default() {
                    let Some(revision) = revision else { continue };
                    let key = (project.clone(), location.clone(), service.clone(), revision);
                    match started {
                        Ok(p) => {
                            w.processes.insert(key, p);
                        }
                        Err(not_started) => {
                            let limits = &sh.config.limits;
                            for line in not_started.lines {
                                w.log(&key.0, &key.1, &key.2, &key.3, line, limits);
                            }
                        }
                    }
                }
                let r = traffic_change(sh, w, &project, &location, &service);
                prune_processes(w, &project, &location, &service);
                r
            }
        };
        if let Some(op) = w.operations.get_mut(&name) {
            op.done = true;
            match result {
                Ok(Some(response)) => op.response = Some(response),
                Ok(None) => {}
                Err(e) => op.error = Some(e),
            }
        }
    }
}

fn service_response(w: &World, pk: &str, l: &str, s: &str) -> Value {
    let p = &w.projects[pk];
    let mut out = render_service(p, l, s, &p.services[&(l.to_string(), s.to_string())]);
    out["@type"] = json!("type.googleapis.com/google.cloud.run.v2.Service");
    out
}

/// Finishes a traffic-only change: no new revision; tags get their URLs.
fn traffic_change(
    sh: &Arc<Shared>,
    w: &mut World,
    pk: &str,
    l: &str,
    s: &str,
) -> Result<Option<Value>, (i32, String)> {
    let Some(svc) = w
        .projects
        .get_mut(pk)
        .and_then(|p| p.services.get_mut(&(l.to_string(), s.to_string())))
    else {
        return Err((5, "service vanished".into()));
    };
    svc.reconciling = false;
    svc.observed_generation = svc.generation;
    ensure_tags(sh, pk, l, s, svc);
    Ok(Some(service_response(w, pk, l, s)))
}

/// Finishes a Cloud Run rollout: a new revision, ready unless its image is
/// missing or a fault says otherwise; traffic moves only to a ready one.
fn rollout(
    sh: &Arc<Shared>,
    w: &mut World,
    pk: &str,
    l: &str,
    s: &str,
    native_failure: Option<&str>,
) -> Result<Option<Value>, (i32, String)> {
    let k = (l.to_string(), s.to_string());
    // Cloud Run makes no new revision when the template is unchanged (a
    // repeated update): the latest one stays, and only traffic may move.
    let unchanged = w
        .projects
        .get(pk)
        .and_then(|p| p.services.get(&k))
        .is_some_and(|svc| {
            let latest = svc.latest_created.as_ref();
            svc.revisions.iter().any(|r| {
                Some(&r.name) == latest && r.ready && Some(&r.template) == svc.spec.get("template")
            })
        });
    if unchanged {
        let Some(svc) = w.projects.get_mut(pk).and_then(|p| p.services.get_mut(&k)) else {
            return Err((5, "service vanished".into()));
        };
        svc.reconciling = false;
        svc.observed_generation = svc.generation;
        ensure_tags(sh, pk, l, s, svc);
        return Ok(Some(service_response(w, pk, l, s)));
    }
    let fault_key = (pk.to_string(), s.to_string());
    let forced_failure = match w.not_ready_revisions.get_mut(&fault_key) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    let behavior = w.next_revision_behavior.remove(&fault_key);
    let runner = w.next_runner.remove(&fault_key);
    let early = w.early_success_rollouts.remove(&fault_key);
    let Some(p) = w.projects.get_mut(pk) else {
        return Err((5, "project vanished".into()));
    };
    let image = p.services[&k]
        .spec
        .pointer("/template/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let image_present = image_exists(p, &image);
    let Some(svc) = p.services.get_mut(&k) else {
        return Err((5, "service vanished".into()));
    };
    let gen = svc.generation;
    let suffix: String = (0..3)
        .map(|i| (b'a' + ((gen as u8).wrapping_mul(7).wrapping_add(i * 11)) % 26) as char)
        .collect();
    let name = svc
        .spec
        .pointer("/template/revision")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{s}-{gen:05}-{suffix}"));
    // An HTTP startup probe is asked of the revision as its app answers
    // (its scripted behaviour; 200 otherwise): a failure or an answer slower
    // than the probe's timeout, every time, and it never becomes ready.
    let probe_fails = svc
        .spec
        .pointer("/template/containers/0/startupProbe")
        .filter(|p| p.get("httpGet").is_some())
        .zip(behavior.as_ref())
        .is_some_and(|(p, b)| {
            let timeout = p.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(1);
            !(200..400).contains(&b.status) || b.delay > Duration::from_secs(timeout)
        });
    let (ready, reason, message) = if !image_present {
        (false, "CONTAINER_MISSING", format!("Revision '{name}' is not ready and cannot serve traffic. Image '{image}' not found."))
    } else if probe_fails {
        (false, "HEALTH_CHECK_CONTAINER_ERROR", format!(
            "Revision '{name}' is not ready and cannot serve traffic. The user-provided container failed the configured startup probe checks."
        ))
    } else if forced_failure || native_failure.is_some() {
        (false, "HEALTH_CHECK_CONTAINER_ERROR", format!(
            "Revision '{name}' is not ready and cannot serve traffic. The user-provided container failed to start and listen on the port defined provided by the PORT=8080 environment variable within the allocated timeout."
        ))
    } else {
        (true, "", String::new())
    };
    svc.revisions.push(Revision {
        behavior,
        misbehaviour: Default::default(),
        name: name.clone(),
        generation: gen,
        template: svc.spec.get("template").cloned().unwrap_or(Value::Null),
        ready,
        message: message.clone(),
        reason: reason.into(),
        create_time: now_rfc3339(),
        runner,
    });
    svc.latest_created = Some(name.clone());
    if early && ready {
        // The operation says done; the revision is not serving yet.
        if let Some(r) = svc.revisions.last_mut() {
            r.ready = false;
        }
        svc.reconciling = true;
        return Ok(Some(service_response(w, pk, l, s)));
    }
    svc.reconciling = false;
    if !ready {
        svc.failed_message = Some(message.clone());
        return Err((9, message));
    }
    svc.latest_ready = Some(name);
    svc.observed_generation = gen;
    svc.failed_message = None;
    ensure_tags(sh, pk, l, s, svc);
    Ok(Some(service_response(w, pk, l, s)))
}

/// Every tagged traffic target gets a URL of its own, served by a listener
/// that routes to that revision only.
fn ensure_tags(sh: &Arc<Shared>, pk: &str, l: &str, s: &str, svc: &mut Service) {
    let wanted: Vec<(String, String)> = svc
        .traffic_targets()
        .filter_map(|t| {
            Some((
                t.get("tag")?.as_str()?.to_string(),
                t.get("revision")?.as_str()?.to_string(),
            ))
        })
        .collect();
    // A tag that is gone, or now routes elsewhere, stops its listener.
    svc.tags.retain(|tag, route| {
        let kept = wanted.iter().any(|(t, r)| t == tag && *r == route.revision);
        if !kept {
            route.stop.cancel();
        }
        kept
    });
    for (tag, revision) in wanted {
        if svc.tags.contains_key(&tag) {
            continue;
        }
        let stop = CancellationToken::new();
        match app::spawn(
            sh.clone(),
            pk.to_string(),
            l.to_string(),
            s.to_string(),
            Some(revision.clone()),
            stop.clone(),
        ) {
            Ok(uri) => {
                svc.tags.insert(
                    tag,
                    TagRoute {
                        uri,
                        revision,
                        stop,
                    },
                );
            }
            Err(e) => tracing::error!(error = %e, "sandbox could not start a tag listener"),
        }
    }
}

/// Images in Artifact Registry must have been pushed; others are assumed public.
fn image_exists(p: &ProjectState, image: &str) -> bool {
    let Some((host, rest)) = image.split_once('/') else {
        return false;
    };
    let Some(location) = host.strip_suffix("-docker.pkg.dev") else {
        return true;
    };
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    let [_project, repo, name_ref] = parts.as_slice() else {
        return false;
    };
    let Some(r) = p
        .repositories
        .get(&(location.to_string(), repo.to_string()))
    else {
        return false;
    };
    if let Some((name, digest)) = name_ref.split_once('@') {
        r.digests.contains(&format!("{name}@{digest}"))
    } else {
        r.tags.contains_key(*name_ref)
    }
}

pub(crate) fn render_service(p: &ProjectState, l: &str, s: &str, svc: &Service) -> Value {
    let full = |r: &str| format!("projects/{}/locations/{l}/services/{s}/revisions/{r}", p.id);
    let mut template = svc
        .spec
        .get("template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(latest) = &svc.latest_created {
        if template.get("revision").is_none() {
            template["revision"] = json!(latest);
        }
    }
    let traffic = svc
        .spec
        .get("traffic")
        .cloned()
        .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
        .unwrap_or_else(
            || json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]),
        );
    let state = if svc.reconciling {
        "CONDITION_RECONCILING"
    } else if svc.failed_message.is_some() || svc.latest_ready.is_none() {
        "CONDITION_FAILED"
    } else {
        "CONDITION_SUCCEEDED"
    };
    let mut terminal =
        json!({"type": "Ready", "state": state, "lastTransitionTime": svc.update_time});
    if let Some(m) = &svc.failed_message {
        terminal["message"] = json!(m);
        // A missing image is a CommonReason; a container that did not
        // start is the revision's own.
        let missing = svc.revisions.iter().any(|r| {
            Some(&r.name) == svc.latest_created.as_ref() && r.reason == "CONTAINER_MISSING"
        });
        if missing {
            terminal["reason"] = json!("CONTAINER_MISSING");
        } else {
            terminal["revisionReason"] = json!("HEALTH_CHECK_CONTAINER_ERROR");
        }
    }
    let mut conditions = vec![
        json!({"type": "RoutesReady", "state": state}),
        json!({"type": "ConfigurationsReady", "state": state}),
    ];
    // The sandbox's own word on how the latest revision runs here.
    let runner = svc
        .latest_created
        .as_ref()
        .and_then(|n| svc.revisions.iter().find(|r| &r.name == n))
        .and_then(|r| r.runner.as_ref().map(|x| (r.name.as_str(), x)));
    if let Some((revision, runner)) = runner {
        let message = match runner {
            Runner::Native(what) => format!("sandbox: revision {revision} {what}"),
            Runner::StandIn(why) => format!(
                "sandbox: revision {revision} cannot run on this machine ({why}); a stand-in answers in its place, not the app"
            ),
        };
        conditions.push(json!({
            "type": "SandboxRunner",
            "state": "CONDITION_SUCCEEDED",
            "severity": if matches!(runner, Runner::Native(_)) { "INFO" } else { "WARNING" },
            "message": message,
        }));
    }
    let mut out = json!({
        "name": format!("projects/{}/locations/{l}/services/{s}", p.id),
        "uid": svc.uid,
        "generation": svc.generation.to_string(),
        "labels": svc.spec.get("labels").cloned().unwrap_or_else(|| json!({})),
        "createTime": svc.create_time,
        "updateTime": svc.update_time,
        "creator": "deployer@sandbox.iam.gserviceaccount.com",
        "lastModifier": "deployer@sandbox.iam.gserviceaccount.com",
        "ingress": svc.spec.get("ingress").cloned().unwrap_or_else(|| json!("INGRESS_TRAFFIC_ALL")),
        "launchStage": "GA",
        "template": template,
        "traffic": traffic.clone(),
        "terminalCondition": terminal,
        "conditions": conditions,
        "etag": format!("\"sandbox-{}\"", svc.generation),
    });
    if let Some(c) = svc.spec.get("client") {
        out["client"] = c.clone();
    }
    if svc.observed_generation > 0 {
        out["observedGeneration"] = json!(svc.observed_generation.to_string());
    }
    if let Some(r) = &svc.latest_ready {
        // Observed traffic: tagged targets carry their URL.
        let mut statuses = traffic;
        if let Some(entries) = statuses.as_array_mut() {
            for t in entries {
                let tag = t.get("tag").and_then(Value::as_str).map(str::to_string);
                if let Some(route) = tag.and_then(|tag| svc.tags.get(&tag)) {
                    t["uri"] = json!(route.uri);
                }
            }
        }
        out["latestReadyRevision"] = json!(full(r));
        out["trafficStatuses"] = statuses;
        out["uri"] = json!(svc.uri);
        out["urls"] = json!([svc.uri]);
    }
    if let Some(r) = &svc.latest_created {
        out["latestCreatedRevision"] = json!(full(r));
    }
    if svc.reconciling {
        out["reconciling"] = json!(true);
    }
    out
}

pub(crate) fn render_revision(p: &ProjectState, l: &str, s: &str, r: &Revision) -> Value {
    let mut cond = json!({"type": "Ready", "state": if r.ready { "CONDITION_SUCCEEDED" } else { "CONDITION_FAILED" }});
    if !r.ready {
        cond["message"] = json!(r.message);
        cond["reason"] = json!(r.reason);
    }
    let mut out = r.template.clone();
    if !out.is_object() {
        out = json!({});
    }
    out["name"] = json!(format!(
        "projects/{}/locations/{l}/services/{s}/revisions/{}",
        p.id, r.name
    ));
    out["generation"] = json!(r.generation.to_string());
    out["service"] = json!(format!("projects/{}/locations/{l}/services/{s}", p.id));
    out["createTime"] = json!(r.create_time);
    out["conditions"] = json!([cond]);
    out
}

pub(crate) fn render_op(op: &Operation) -> Value {
    let mut v = json!({"name": op.name, "metadata": op.metadata});
    if op.done {
        v["done"] = json!(true);
        match &op.error {
            Some((code, message)) => v["error"] = json!({"code": code, "message": message}),
            None => {
                if let Some(r) = &op.response {
                    v["response"] = r.clone();
                }
            }
        }
    }
    v
}

/// IAM Credentials `generateIdToken`: the token is remembered, so a
/// service's listener can tell it from a forged one.
pub(crate) fn generate_id_token(w: &mut World, email: &str, body: &Value) -> Response {
    let Some(audience) = body
        .get("audience")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    else {
        return error(400, "INVALID_ARGUMENT", "audience is required");
    };
    let Some(owner) = w
        .projects
        .values()
        .find(|p| p.service_accounts.contains_key(email))
    else {
        return error(
            404,
            "NOT_FOUND",
            &format!("Unknown service account {email}"),
        );
    };
    if !owner
        .permissions
        .contains("iam.serviceAccounts.getOpenIdToken")
    {
        return error(403, "PERMISSION_DENIED", &format!("Permission 'iam.serviceAccounts.getOpenIdToken' denied on resource (or it may not exist): {email}"));
    }
    ok(json!({"token": mint_id_token(w, audience, email)}))
}

/// A token the services' listeners will recognise as genuine.
pub(crate) fn mint_id_token(w: &mut World, audience: &str, email: &str) -> String {
    let n = w.next_id();
    let token = format!("eyJhbGciOiJSUzI1NiJ9.sandbox-{n:016x}.sig");
    w.id_tokens
        .insert(token.clone(), (audience.to_string(), email.to_string()));
    token
}
