//! `POST /__sandbox/faults`: the sandbox steered from outside, by a script
//! or a person rehearsing a rollout, as the Rust test helpers steer it.
//! For now it sets how revisions misbehave:
//!
//! ```json
//! {"revisions": [{"service": "api", "revision": "api-0002",
//!   "error_rate": 0.2, "error_status": 500, "added_latency_ms": 50}]}
//! ```
//!
//! `project` defaults to the sandbox's project, `region` to us-central1,
//! `revision` to the service's latest created revision (the candidate of
//! a rollout in progress), `error_status` to 500. Zero rates and latency
//! heal a revision. The answer lists the revisions changed.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::world::{Misbehaviour, World};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    #[serde(default)]
    revisions: Vec<RevisionFault>,
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

pub fn apply(w: &mut World, body: &Value) -> Result<Value, Refusal> {
    let faults: Faults = serde_json::from_value(body.clone())
        .map_err(|e| invalid(format!("not a fault list: {e}")))?;
    // All checked before any is applied.
    let mut changes = vec![];
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
        let project = f
            .project
            .clone()
            .unwrap_or_else(|| super::DEFAULT_PROJECT.to_string());
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
        changes.push((
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
    let mut applied = vec![];
    for (project, region, service, revision, m) in changes {
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
    Ok(json!({"revisions": applied}))
}
