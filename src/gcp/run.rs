//! Cloud Run Admin API v2: services, their rollout, and the invoker binding.

use std::collections::BTreeMap;

use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{format_duration, GcpError};
use super::http::{segment, Transport};
use super::lro::{self, Operation, PollPolicy};
use crate::pipeline::cloud::{Rollout, RunService, ServiceSpec, TrafficTarget};
use crate::pipeline::error::Code;
use crate::pipeline::model::{Ingress, Target, VpcEgress};

/// The service's resource path, each segment encoded.
fn service_name(t: &Target) -> String {
    format!(
        "projects/{}/locations/{}/services/{}",
        segment(&t.project),
        segment(&t.region),
        segment(&t.service)
    )
}

/// The request body: the full desired service (PATCH without updateMask
/// replaces, so every setting is always sent).
/// Traffic targets as the API takes them; empty means 100% to LATEST.
fn traffic_body(traffic: &[TrafficTarget]) -> Value {
    if traffic.is_empty() {
        return json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]);
    }
    Value::Array(
        traffic
            .iter()
            .map(|t| {
                let mut v = match &t.revision {
                    Some(r) => {
                        json!({"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": r})
                    }
                    None => json!({"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"}),
                };
                // proto3: a 0% target carries no percent.
                if t.percent > 0 {
                    v["percent"] = json!(t.percent);
                }
                if let Some(tag) = &t.tag {
                    v["tag"] = json!(tag);
                }
                v
            })
            .collect(),
    )
}

pub fn service_body(spec: &ServiceSpec) -> Value {
    let r = &spec.runtime;
    let mut env: Vec<Value> = r
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    for s in &r.secrets {
        let version = if s.version.is_empty() {
            "latest"
        } else {
            &s.version
        };
        env.push(json!({"name": s.env_name, "valueSource": {"secretKeyRef": {"secret": s.secret, "version": version}}}));
    }
    let mut container = json!({
        "image": spec.image,
        "ports": [{"name": "http1", "containerPort": if r.container_port == 0 { 8080 } else { r.container_port }}],
    });
    if !env.is_empty() {
        container["env"] = Value::Array(env);
    }
    if let Some(p) = &r.startup_probe {
        // The port defaults to the container's.
        container["startupProbe"] = json!({
            "initialDelaySeconds": p.initial_delay_seconds,
            "periodSeconds": p.period_seconds,
            "timeoutSeconds": p.timeout_seconds,
            "failureThreshold": p.failure_threshold,
            "httpGet": {"path": p.path},
        });
    }
    if r.cpu.is_some() || r.memory.is_some() {
        let mut limits = serde_json::Map::new();
        if let Some(cpu) = &r.cpu {
            limits.insert("cpu".into(), json!(cpu));
        }
        if let Some(mem) = &r.memory {
            limits.insert("memory".into(), json!(mem));
        }
        // cpuIdle must be explicit once resources is set.
        container["resources"] = json!({"limits": limits, "cpuIdle": true});
    }
    let mut template = json!({"containers": [container]});
    if let Some(name) = &spec.revision_name {
        template["revision"] = json!(name);
    }
    let mut scaling = serde_json::Map::new();
    if let Some(min) = r.min_instances {
        scaling.insert("minInstanceCount".into(), json!(min));
    }
    if let Some(max) = r.max_instances {
        scaling.insert("maxInstanceCount".into(), json!(max));
    }
    if !scaling.is_empty() {
        template["scaling"] = Value::Object(scaling);
    }
    if let Some(c) = r.concurrency {
        template["maxInstanceRequestConcurrency"] = json!(c);
    }
    if let Some(timeout) = r.request_timeout {
        template["timeout"] = json!(format_duration(timeout));
    }
    if let Some(sa) = &r.service_account {
        template["serviceAccount"] = json!(sa);
    }
    if let Some(connector) = &r.vpc_connector {
        let egress = match r.vpc_egress.unwrap_or(VpcEgress::PrivateRangesOnly) {
            VpcEgress::PrivateRangesOnly => "PRIVATE_RANGES_ONLY",
            VpcEgress::AllTraffic => "ALL_TRAFFIC",
        };
        template["vpcAccess"] = json!({"connector": connector, "egress": egress});
    }
    let ingress = match r.ingress.unwrap_or(Ingress::All) {
        Ingress::All => "INGRESS_TRAFFIC_ALL",
        Ingress::InternalOnly => "INGRESS_TRAFFIC_INTERNAL_ONLY",
        Ingress::InternalLoadBalancer => "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
    };
    json!({
        "labels": spec.labels,
        "client": "deployd",
        "ingress": ingress,
        "template": template,
        "traffic": traffic_body(&spec.traffic),
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Service {
    name: String,
    uri: String,
    urls: Vec<String>,
    latest_ready_revision: String,
    latest_created_revision: String,
    traffic: Vec<Traffic>,
    traffic_statuses: Vec<TrafficStatus>,
    terminal_condition: Option<Condition>,
    conditions: Vec<Condition>,
    template: Template,
    reconciling: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Template {
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Container {
    image: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Traffic {
    #[serde(rename = "type")]
    kind: String,
    revision: String,
    percent: u32,
    tag: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct TrafficStatus {
    tag: String,
    uri: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    state: String,
    message: String,
    /// A CommonReason (CONTAINER_MISSING, ...), when the failure is not
    /// the revision's own.
    reason: String,
    #[serde(rename = "revisionReason")]
    revision_reason: String,
}

fn short(rev: String) -> Option<String> {
    if rev.is_empty() {
        return None;
    }
    Some(rev.rsplit('/').next().unwrap_or(&rev).to_string())
}

impl From<Service> for RunService {
    fn from(s: Service) -> Self {
        let (ready, ready_message, ready_reason) = match s.terminal_condition {
            Some(c) => (
                c.state == "CONDITION_SUCCEEDED",
                (!c.message.is_empty()).then_some(c.message),
                [c.reason, c.revision_reason]
                    .into_iter()
                    .find(|r| !r.is_empty() && r != "COMMON_REASON_UNDEFINED"),
            ),
            None => (false, None, None),
        };
        let notices = s
            .conditions
            .iter()
            .filter(|c| {
                !matches!(
                    c.kind.as_str(),
                    "Ready" | "RoutesReady" | "ConfigurationsReady"
                )
            })
            .filter(|c| !c.message.is_empty())
            .map(|c| c.message.clone())
            .collect();
        RunService {
            notices,
            name: s.name,
            uri: s.uri,
            urls: s.urls,
            latest_ready_revision: short(s.latest_ready_revision),
            latest_created_revision: short(s.latest_created_revision),
            traffic: s
                .traffic
                .into_iter()
                .map(|t| TrafficTarget {
                    revision: (t.kind != "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST")
                        .then(|| short(t.revision))
                        .flatten(),
                    percent: t.percent,
                    tag: (!t.tag.is_empty()).then_some(t.tag),
                })
                .collect(),
            ready,
            ready_message,
            ready_reason,
            reconciling: s.reconciling,
            image: s.template.containers.into_iter().next().map(|c| c.image),
            tag_urls: s
                .traffic_statuses
                .into_iter()
                .filter(|t| !t.tag.is_empty() && !t.uri.is_empty())
                .map(|t| (t.tag, t.uri))
                .collect(),
        }
    }
}

pub async fn get(t: &Transport, target: &Target) -> Result<Option<RunService>, GcpError> {
    let url = format!("{}/v2/{}", t.endpoints.run, service_name(target));
    match t
        .json::<Service>(
            "run.projects.locations.services.get",
            t.request(Method::GET, url),
        )
        .await
    {
        Ok(s) => Ok(Some(s.into())),
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The create (`exists == false`) or full patch of `target` carrying
/// `body`, and its method id; `validate_only` asks Cloud Run to judge it
/// without keeping anything.
fn service_write(
    t: &Transport,
    target: &Target,
    exists: bool,
    validate_only: bool,
    body: &Value,
) -> (&'static str, RequestBuilder) {
    let (method, rb) = if exists {
        let url = format!("{}/v2/{}", t.endpoints.run, service_name(target));
        (
            "run.projects.locations.services.patch",
            t.request(Method::PATCH, url),
        )
    } else {
        let url = format!(
            "{}/v2/projects/{}/locations/{}/services",
            t.endpoints.run,
            segment(&target.project),
            segment(&target.region)
        );
        (
            "run.projects.locations.services.create",
            t.request(Method::POST, url)
                .query(&[("serviceId", target.service.as_str())]),
        )
    };
    let rb = if validate_only {
        rb.query(&[("validateOnly", "true")])
    } else {
        rb
    };
    (method, rb.json(body))
}

/// Creates (`exists == false`) or replaces the service; waits for the
/// operation. `Ok(Err(message))` is a rollout the API reported as failed.
pub async fn apply(
    t: &Transport,
    spec: &ServiceSpec,
    exists: bool,
    poll: &PollPolicy,
) -> Result<Rollout, GcpError> {
    let body = service_body(spec);
    let target = &spec.target;
    let (method, rb) = service_write(t, target, exists, false, &body);
    let op: Operation = match t.json(method, rb).await {
        Ok(op) => op,
        // A create whose answer was lost (or a service made meanwhile):
        // the service exists, so the same desired state is a patch.
        Err(e) if !exists && e.is(Code::AlreadyExists) => {
            return Box::pin(apply(t, spec, true, poll)).await;
        }
        Err(e) => return Err(e),
    };
    rollout(t, method, target, op, poll).await
}

/// `validateOnly=true` on the create (or patch): Cloud Run validates the
/// request, fills defaults, persists nothing. A create of a service that
/// exists meanwhile is validated as a patch.
pub async fn validate(t: &Transport, spec: &ServiceSpec, exists: bool) -> Result<(), GcpError> {
    let mut body = service_body(spec);
    // The revision is what is judged; the split names revisions that do
    // not exist yet.
    if let Some(o) = body.as_object_mut() {
        o.remove("traffic");
    }
    let (method, rb) = service_write(t, &spec.target, exists, true, &body);
    match t.json::<Operation>(method, rb).await {
        Ok(_) => Ok(()),
        Err(e) if !exists && e.is(Code::AlreadyExists) => Box::pin(validate(t, spec, true)).await,
        Err(e) => Err(e),
    }
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Policy {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bindings: Vec<Binding>,
    #[serde(skip_serializing_if = "String::is_empty")]
    etag: String,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone, PartialEq)]
#[serde(default)]
struct Binding {
    role: String,
    members: Vec<String>,
}

const INVOKER: &str = "roles/run.invoker";
const ALL_USERS: &str = "allUsers";

/// Read-modify-write of the service's IAM policy; no write when unchanged.
/// Traffic-only change (`updateMask=traffic`): the template, and so the
/// revisions, stay as they are.
pub async fn set_traffic(
    t: &Transport,
    target: &Target,
    traffic: &[TrafficTarget],
    poll: &PollPolicy,
) -> Result<Rollout, GcpError> {
    const METHOD: &str = "run.projects.locations.services.patch";
    let url = format!("{}/v2/{}", t.endpoints.run, service_name(target));
    let body = json!({"traffic": traffic_body(traffic)});
    let op: Operation = t
        .json(
            METHOD,
            t.request(Method::PATCH, url)
                .query(&[("updateMask", "traffic")])
                .json(&body),
        )
        .await?;
    rollout(t, METHOD, target, op, poll).await
}

/// Waits for a create or patch. A failed operation leaves the service in
/// its last serving state; it is read for the name of the revision that
/// failed.
async fn rollout(
    t: &Transport,
    method: &'static str,
    target: &Target,
    op: Operation,
    poll: &PollPolicy,
) -> Result<Rollout, GcpError> {
    match lro::wait_long(t, method, &t.endpoints.run, "v2", op, poll).await {
        Ok(response) => {
            let s: Service = serde_json::from_value(response)
                .map_err(|source| GcpError::Decode { method, source })?;
            Ok(Rollout::Ready(s.into()))
        }
        Err(GcpError::Operation { message, .. }) => Ok(Rollout::Failed {
            message,
            service: get(t, target).await.ok().flatten(),
        }),
        Err(e) => Err(e),
    }
}

pub async fn set_public_invoker(
    t: &Transport,
    target: &Target,
    public: bool,
) -> Result<(), GcpError> {
    let name = service_name(target);
    let url = format!("{}/v2/{name}:getIamPolicy", t.endpoints.run);
    let mut policy: Policy = t
        .json(
            "run.projects.locations.services.getIamPolicy",
            t.request(Method::GET, url),
        )
        .await?;
    let before = policy.bindings.clone();
    let has = policy
        .bindings
        .iter()
        .any(|b| b.role == INVOKER && b.members.iter().any(|m| m == ALL_USERS));
    if public && !has {
        match policy.bindings.iter_mut().find(|b| b.role == INVOKER) {
            Some(b) => b.members.push(ALL_USERS.into()),
            None => policy.bindings.push(Binding {
                role: INVOKER.into(),
                members: vec![ALL_USERS.into()],
            }),
        }
    } else if !public && has {
        for b in policy.bindings.iter_mut().filter(|b| b.role == INVOKER) {
            b.members.retain(|m| m != ALL_USERS);
        }
        policy.bindings.retain(|b| !b.members.is_empty());
    }
    if policy.bindings == before {
        return Ok(());
    }
    let url = format!("{}/v2/{name}:setIamPolicy", t.endpoints.run);
    let body = BTreeMap::from([("policy", &policy)]);
    let _: Policy = t
        .json(
            "run.projects.locations.services.setIamPolicy",
            t.request(Method::POST, url).json(&body),
        )
        .await?;
    Ok(())
}
