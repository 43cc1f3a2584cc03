//! `POST /__sandbox/faults`: the sandbox steered from outside, by a script
//! or a person rehearsing a rollout, with the faults the Rust test helpers
//! inject. The same document, as YAML or JSON, is the scenario file of
//! `--sandbox-faults FILE`. Every part is optional:
//!
//! ```yaml
//! project: demo-project          # for the parts below; the default
//! api_errors:                    # the next calls of a method fail
//!   - method: cloudbuild.projects.locations.builds.create
//!     count: 2                   # default 1
//!     after: 0                   # calls let through first
//!     error: rate_limited        # or unavailable, internal, or
//!                                # {http: 403, status: PERMISSION_DENIED, message: "...", reason: "..."}
//!   - method: run.projects.locations.services.get
//!     action: reset              # instead of an error: hang, reset, slow (delay_ms)
//! disable_apis: [run.googleapis.com]
//! enable_apis: []
//! withhold_permissions: [run.services.create]
//! grant_permissions: []
//! builds:                        # how the next builds end, in order
//!   - step_fails: {step: build, lines: ["ERROR: boom"]}
//!   - status: INTERNAL_ERROR
//!   - never_finishes: true
//! revisions_not_ready: [{service: api, count: 1}]
//! next_revision_answers: [{service: api, status: 500, delay_ms: 0, body: "x"}]
//! next_revision_logs:            # what the next revision's container logs
//!   - {service: api, stream: stderr, severity: ERROR, lines: ["Traceback ..."]}
//! revisions:                     # a revision that exists misbehaves
//!   - {service: api, revision: api-0002, error_rate: 0.2, error_status: 500, added_latency_ms: 50}
//! ```
//!
//! `region` defaults to us-central1, a revision fault's `revision` to the
//! service's latest created revision (the candidate of a rollout in
//! progress), `error_status` to 500. Zero rates and latency heal a
//! revision. Everything is checked before anything is applied; the answer
//! says what was.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{AppResponse, BuildFault, Fault, FaultAction, InjectedError};
use super::world::{Misbehaviour, World};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    api_errors: Vec<ApiFault>,
    #[serde(default)]
    disable_apis: Vec<String>,
    #[serde(default)]
    enable_apis: Vec<String>,
    #[serde(default)]
    withhold_permissions: Vec<String>,
    #[serde(default)]
    grant_permissions: Vec<String>,
    #[serde(default)]
    builds: Vec<BuildSpec>,
    #[serde(default)]
    revisions_not_ready: Vec<NotReady>,
    #[serde(default)]
    next_revision_answers: Vec<NextAnswer>,
    #[serde(default)]
    next_revision_logs: Vec<NextLogs>,
    #[serde(default)]
    revisions: Vec<RevisionFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextLogs {
    service: String,
    #[serde(default = "stderr")]
    stream: String,
    #[serde(default = "default_severity")]
    severity: String,
    lines: Vec<String>,
}

fn stderr() -> String {
    "stderr".into()
}

fn default_severity() -> String {
    "DEFAULT".into()
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFault {
    method: String,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    after: u32,
    #[serde(default)]
    error: Option<ErrorSpec>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorSpec {
    Preset(String),
    Status {
        http: u16,
        status: String,
        message: String,
        #[serde(default)]
        reason: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSpec {
    #[serde(default)]
    step_fails: Option<StepFails>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    failure_type: Option<String>,
    #[serde(default)]
    never_finishes: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFails {
    step: String,
    #[serde(default)]
    lines: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotReady {
    service: String,
    #[serde(default = "one")]
    count: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextAnswer {
    service: String,
    #[serde(default = "ok_status")]
    status: u16,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    body: String,
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionFault {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    region: Option<String>,
    service: String,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    error_status: Option<u16>,
    #[serde(default)]
    added_latency_ms: u64,
}

type Refusal = (u16, &'static str, String);

fn invalid(message: impl Into<String>) -> Refusal {
    (400, "INVALID_ARGUMENT", message.into())
}

fn api_fault(i: usize, f: &ApiFault) -> Result<(u32, Fault), Refusal> {
    let at = |field: &str| format!("api_errors[{i}].{field}");
    let method_ok = !f.method.is_empty()
        && f.method.len() <= 200
        && f.method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if !method_ok {
        return Err(invalid(format!(
            "{} must be an API method id such as run.projects.locations.services.get",
            at("method")
        )));
    }
    if !(1..=10_000).contains(&f.count) {
        return Err(invalid(format!("{} must be 1 to 10000", at("count"))));
    }
    if f.after > 10_000 {
        return Err(invalid(format!("{} is at most 10000", at("after"))));
    }
    if f.delay_ms > 600_000 {
        return Err(invalid(format!("{} is at most 600000", at("delay_ms"))));
    }
    let service = format!(
        "{}.googleapis.com",
        f.method.split('.').next().unwrap_or_default()
    );
    let action = match (&f.error, f.action.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "{} and {} exclude each other",
                at("error"),
                at("action")
            )))
        }
        (None, None) => {
            return Err(invalid(format!(
                "{} needs an error or an action",
                format_args!("api_errors[{i}]")
            )))
        }
        (Some(ErrorSpec::Preset(p)), None) => FaultAction::Error(match p.as_str() {
            "rate_limited" => InjectedError::rate_limited(&service),
            "unavailable" => InjectedError::unavailable(),
            "internal" => InjectedError::new(500, "INTERNAL", "Internal error encountered."),
            other => {
                return Err(invalid(format!(
                    "{}: unknown error {other:?} (rate_limited, unavailable, internal, or {{http, status, message}})",
                    at("error")
                )))
            }
        }),
        (
            Some(ErrorSpec::Status {
                http,
                status,
                message,
                reason,
            }),
            None,
        ) => {
            if !(400..600).contains(http) {
                return Err(invalid(format!("{} must be 400 to 599", at("error.http"))));
            }
            if status.is_empty() || !status.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(invalid(format!(
                    "{} must be a canonical code such as PERMISSION_DENIED",
                    at("error.status")
                )));
            }
            let mut e = InjectedError::new(*http, status, message);
            e.reason = reason.clone();
            FaultAction::Error(e)
        }
        (None, Some(a)) => match a {
            "hang" => FaultAction::Hang,
            "reset" => FaultAction::Reset,
            "reset_after_apply" => FaultAction::ResetAfterApply,
            "slow" => FaultAction::Slow(Duration::from_millis(f.delay_ms)),
            other => {
                return Err(invalid(format!(
                    "{}: unknown action {other:?} (hang, reset, reset_after_apply, slow)",
                    at("action")
                )))
            }
        },
    };
    Ok((
        f.after,
        Fault {
            method: f.method.clone(),
            remaining: f.count,
            action,
        },
    ))
}

fn build_fault(i: usize, b: &BuildSpec) -> Result<BuildFault, Refusal> {
    const STATUSES: [&str; 4] = ["FAILURE", "INTERNAL_ERROR", "TIMEOUT", "EXPIRED"];
    match (&b.step_fails, &b.status, b.never_finishes) {
        (Some(step), None, false) => Ok(BuildFault::StepFails {
            step: step.step.clone(),
            lines: step.lines.clone(),
        }),
        (None, Some(status), false) if STATUSES.contains(&status.as_str()) => {
            Ok(BuildFault::Status {
                status: status.clone(),
                failure_type: b.failure_type.clone(),
            })
        }
        (None, Some(status), false) => Err(invalid(format!(
            "builds[{i}].status: {status:?} is not one of {}",
            STATUSES.join(", ")
        ))),
        (None, None, true) => Ok(BuildFault::NeverFinishes),
        _ => Err(invalid(format!(
            "builds[{i}] needs exactly one of step_fails, status, never_finishes"
        ))),
    }
}

fn known<'a>(field: &str, values: &'a [String], all: &[&str]) -> Result<&'a [String], Refusal> {
    match values.iter().position(|v| !all.contains(&v.as_str())) {
        Some(i) => Err(invalid(format!(
            "{field}[{i}]: {:?} is not one the sandbox emulates",
            values[i]
        ))),
        None => Ok(values),
    }
}

/// What the scenario changes, checked; applied only when all of it is.
struct Changes {
    project: String,
    api: Vec<(u32, Fault)>,
    builds: Vec<BuildFault>,
    revisions: Vec<(String, String, String, String, Misbehaviour)>,
}

/// Applies a fault document to the world; the API faults are returned for
/// the caller to queue (they live outside the world's lock).
pub fn apply(w: &mut World, body: &Value) -> Result<(Value, Vec<(u32, Fault)>), Refusal> {
    let faults: Faults = serde_json::from_value(body.clone())
        .map_err(|e| invalid(format!("not a fault list: {e}")))?;
    let project = faults
        .project
        .clone()
        .unwrap_or_else(|| super::DEFAULT_PROJECT.to_string());
    let project_scoped = !(faults.disable_apis.is_empty()
        && faults.enable_apis.is_empty()
        && faults.withhold_permissions.is_empty()
        && faults.grant_permissions.is_empty()
        && faults.revisions_not_ready.is_empty()
        && faults.next_revision_answers.is_empty()
        && faults.next_revision_logs.is_empty());
    if project_scoped && !w.projects.contains_key(&project) {
        return Err((
            404,
            "NOT_FOUND",
            format!("the sandbox has no project {project}"),
        ));
    }
    use super::world::{ALL_APIS, ALL_PERMISSIONS};
    known("disable_apis", &faults.disable_apis, ALL_APIS)?;
    known("enable_apis", &faults.enable_apis, ALL_APIS)?;
    known(
        "withhold_permissions",
        &faults.withhold_permissions,
        ALL_PERMISSIONS,
    )?;
    known(
        "grant_permissions",
        &faults.grant_permissions,
        ALL_PERMISSIONS,
    )?;
    let mut changes = Changes {
        project: project.clone(),
        api: vec![],
        builds: vec![],
        revisions: vec![],
    };
    for (i, f) in faults.api_errors.iter().enumerate() {
        changes.api.push(api_fault(i, f)?);
    }
    for (i, b) in faults.builds.iter().enumerate() {
        changes.builds.push(build_fault(i, b)?);
    }
    for (i, n) in faults.next_revision_answers.iter().enumerate() {
        if !(100..600).contains(&n.status) {
            return Err(invalid(format!(
                "next_revision_answers[{i}].status must be an HTTP status"
            )));
        }
        if n.delay_ms > 600_000 {
            return Err(invalid(format!(
                "next_revision_answers[{i}].delay_ms is at most 600000"
            )));
        }
    }
    for (i, n) in faults.next_revision_logs.iter().enumerate() {
        if !matches!(n.stream.as_str(), "stdout" | "stderr") {
            return Err(invalid(format!(
                "next_revision_logs[{i}].stream must be stdout or stderr"
            )));
        }
        use super::world::SEVERITIES;
        if !SEVERITIES.contains(&n.severity.as_str()) {
            return Err(invalid(format!(
                "next_revision_logs[{i}].severity must be one of {}",
                SEVERITIES.join(", ")
            )));
        }
        if n.lines.len() > 1000 {
            return Err(invalid(format!(
                "next_revision_logs[{i}].lines holds at most 1000"
            )));
        }
    }
    for (i, f) in faults.revisions.iter().enumerate() {
        if !(f.error_rate.is_finite() && (0.0..=1.0).contains(&f.error_rate)) {
            return Err(invalid(format!(
                "revisions[{i}].error_rate must be between 0 and 1"
            )));
        }
        let status = f.error_status.unwrap_or(500);
        if !(100..600).contains(&status) {
            return Err(invalid(format!(
                "revisions[{i}].error_status must be an HTTP status"
            )));
        }
        if f.added_latency_ms > 600_000 {
            return Err(invalid(format!(
                "revisions[{i}].added_latency_ms is at most 600000"
            )));
        }
        let project = f.project.clone().unwrap_or_else(|| project.clone());
        let region = f
            .region
            .clone()
            .unwrap_or_else(|| "us-central1".to_string());
        let svc = w
            .projects
            .get(&project)
            .and_then(|p| p.services.get(&(region.clone(), f.service.clone())))
            .ok_or_else(|| {
                (
                    404,
                    "NOT_FOUND",
                    format!("no service {} in {project}/{region}", f.service),
                )
            })?;
        let revision = match &f.revision {
            Some(r) => r.clone(),
            None => svc.latest_created.clone().ok_or_else(|| {
                (
                    404,
                    "NOT_FOUND",
                    format!("service {} has no revision yet", f.service),
                )
            })?,
        };
        if !svc.revisions.iter().any(|r| r.name == revision) {
            return Err((
                404,
                "NOT_FOUND",
                format!("service {} has no revision {revision}", f.service),
            ));
        }
        changes.revisions.push((
            project,
            region,
            f.service.clone(),
            revision,
            Misbehaviour {
                error_rate: f.error_rate,
                error_status: status,
                added_latency: Duration::from_millis(f.added_latency_ms),
            },
        ));
    }
    // Everything checked: apply.
    let p = changes.project.clone();
    if let Some(state) = w.projects.get_mut(&p) {
        for api in &faults.disable_apis {
            state.enabled_apis.remove(api);
        }
        state
            .enabled_apis
            .extend(faults.enable_apis.iter().cloned());
        for perm in &faults.withhold_permissions {
            state.permissions.remove(perm);
        }
        state
            .permissions
            .extend(faults.grant_permissions.iter().cloned());
    }
    for n in &faults.revisions_not_ready {
        w.not_ready_revisions
            .insert((p.clone(), n.service.clone()), n.count);
    }
    for n in &faults.next_revision_answers {
        w.next_revision_behavior.insert(
            (p.clone(), n.service.clone()),
            AppResponse {
                status: n.status,
                delay: Duration::from_millis(n.delay_ms),
                body: n.body.clone(),
            },
        );
    }
    for n in &faults.next_revision_logs {
        w.next_revision_logs
            .entry((p.clone(), n.service.clone()))
            .or_default()
            .extend(n.lines.iter().map(|text| super::world::LoggedLine {
                stream: n.stream.clone(),
                severity: n.severity.clone(),
                text: text.clone(),
            }));
    }
    let builds = changes.builds.len();
    w.build_faults.extend(changes.builds);
    let mut applied = vec![];
    for (project, region, service, revision, m) in changes.revisions {
        if let Some(r) = w
            .projects
            .get_mut(&project)
            .and_then(|p| p.services.get_mut(&(region, service.clone())))
            .and_then(|s| s.revisions.iter_mut().find(|r| r.name == revision))
        {
            r.misbehaviour = m;
            applied.push(json!({"service": service, "revision": revision}));
        }
    }
    let summary = json!({
        "project": p,
        "api_errors": changes.api.len(),
        "disabled_apis": faults.disable_apis,
        "enabled_apis": faults.enable_apis,
        "withheld_permissions": faults.withhold_permissions,
        "granted_permissions": faults.grant_permissions,
        "builds": builds,
        "revisions_not_ready": faults.revisions_not_ready.len(),
        "next_revision_answers": faults.next_revision_answers.len(),
        "next_revision_logs": faults.next_revision_logs.len(),
        "revisions": applied,
    });
    Ok((summary, changes.api))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::world::ProjectState;

    fn world() -> World {
        let mut w = World::default();
        w.projects.insert(
            super::super::DEFAULT_PROJECT.into(),
            ProjectState::new(super::super::DEFAULT_PROJECT, "1"),
        );
        w
    }

    #[test]
    fn every_part_of_a_scenario_is_applied() {
        let mut w = world();
        let doc: Value = serde_yaml_ng::from_str(
            r#"
api_errors:
  - {method: cloudbuild.projects.locations.builds.create, count: 2, error: rate_limited}
  - {method: run.projects.locations.services.get, after: 1, action: slow, delay_ms: 50}
  - {method: storage.objects.insert, error: {http: 403, status: PERMISSION_DENIED, message: no, reason: IAM}}
disable_apis: [run.googleapis.com]
withhold_permissions: [run.services.create]
builds:
  - step_fails: {step: build, lines: ["ERROR: boom"]}
  - status: INTERNAL_ERROR
  - never_finishes: true
revisions_not_ready: [{service: api, count: 2}]
next_revision_answers: [{service: api, status: 500, body: x}]
"#,
        )
        .expect("yaml");
        let (summary, api) = apply(&mut w, &doc).expect("applied");
        assert_eq!(summary["api_errors"], 3);
        assert_eq!(api.len(), 3);
        assert_eq!(api[0].1.remaining, 2);
        match &api[0].1.action {
            FaultAction::Error(e) => {
                assert_eq!((e.http, e.status.as_str()), (429, "RESOURCE_EXHAUSTED"));
                assert!(e.message.contains("cloudbuild.googleapis.com"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(api[1].0, 1, "let one call through first");
        assert_eq!(
            api[1].1.action,
            FaultAction::Slow(Duration::from_millis(50))
        );
        let p = &w.projects[super::super::DEFAULT_PROJECT];
        assert!(!p.enabled_apis.contains("run.googleapis.com"));
        assert!(!p.permissions.contains("run.services.create"));
        assert_eq!(w.build_faults.len(), 3);
        assert_eq!(w.build_faults.back(), Some(&BuildFault::NeverFinishes));
        let key = (super::super::DEFAULT_PROJECT.to_string(), "api".to_string());
        assert_eq!(w.not_ready_revisions.get(&key), Some(&2));
        assert_eq!(
            w.next_revision_behavior.get(&key).map(|a| a.status),
            Some(500)
        );
    }

    #[test]
    fn a_refused_scenario_names_the_field_and_changes_nothing() {
        for (doc, field) in [
            (
                json!({"api_errors": [{"method": "-x"}]}),
                "api_errors[0].method",
            ),
            (
                json!({"api_errors": [{"method": "a.b"}]}),
                "api_errors[0] needs",
            ),
            (
                json!({"api_errors": [{"method": "a.b", "error": "boom"}]}),
                "api_errors[0].error",
            ),
            (
                json!({"api_errors": [{"method": "a.b", "error": "internal", "action": "hang"}]}),
                "exclude each other",
            ),
            (json!({"builds": [{}]}), "builds[0]"),
            (json!({"builds": [{"status": "WEIRD"}]}), "builds[0].status"),
            (
                json!({"enable_apis": ["run.googleapis.com"], "grant_permissions": ["x.y"]}),
                "grant_permissions[0]",
            ),
            (
                json!({"next_revision_answers": [{"service": "a", "status": 99}]}),
                "next_revision_answers[0].status",
            ),
            (json!({"unknown": 1}), "unknown field"),
        ] {
            let mut w = world();
            w.projects
                .get_mut(super::super::DEFAULT_PROJECT)
                .expect("project")
                .enabled_apis
                .remove("run.googleapis.com");
            let (http, _, message) = apply(&mut w, &doc).expect_err("refused");
            assert_eq!(http, 400, "{doc}");
            assert!(message.contains(field), "{field}: {message}");
            assert!(
                !w.projects[super::super::DEFAULT_PROJECT]
                    .enabled_apis
                    .contains("run.googleapis.com"),
                "nothing applied: {doc}"
            );
        }
        let mut w = world();
        let (http, _, _) = apply(&mut w, &json!({"project": "nope", "disable_apis": []}))
            .map(|_| (0, "", String::new()))
            .unwrap_or_else(|e| e);
        assert_eq!(http, 0, "an empty project-scoped part needs no project");
        let (http, _, message) = apply(
            &mut w,
            &json!({"project": "nope", "disable_apis": ["run.googleapis.com"]}),
        )
        .expect_err("no such project");
        assert_eq!(http, 404);
        assert!(message.contains("nope"), "{message}");
    }
}
