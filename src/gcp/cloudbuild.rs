//! Cloud Build v1 (the `locations/global` variant, as gcloud uses it).

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{format_duration, GcpError};
use super::http::Transport;
use super::lro::Operation;
use crate::pipeline::cloud::BuildSpec;

const LOCATION: &str = "global";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildRequest {
    source: serde_json::Value,
    steps: Vec<Step>,
    images: Vec<String>,
    timeout: String,
    logs_bucket: String,
    options: serde_json::Value,
    tags: Vec<String>,
    /// `projects/{project}/serviceAccounts/{email}`; needs logsBucket set.
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<String>,
    args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    wait_for: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Build {
    pub id: String,
    pub status: String,
    pub status_detail: String,
    pub failure_info: Option<FailureInfo>,
    pub log_url: String,
    pub logs_bucket: String,
    pub results: Option<Results>,
    pub steps: Vec<StepStatus>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct FailureInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Results {
    pub images: Vec<BuiltImage>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct BuiltImage {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct StepStatus {
    pub id: String,
    pub status: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct BuildOperationMetadata {
    build: Build,
}

pub async fn create(t: &Transport, project: &str, spec: &BuildSpec) -> Result<Build, GcpError> {
    const METHOD: &str = "cloudbuild.projects.locations.builds.create";
    let url = format!(
        "{}/v1/projects/{project}/locations/{LOCATION}/builds",
        t.endpoints.cloud_build
    );
    let body = BuildRequest {
        source: json!({"storageSource": {
            "bucket": spec.source_bucket,
            "object": spec.source_object,
            "generation": spec.source_generation,
        }}),
        steps: spec
            .steps
            .iter()
            .map(|s| Step {
                id: s.id.clone(),
                name: s.name.clone(),
                entrypoint: s.entrypoint.clone(),
                args: s.args.clone(),
                timeout: s.timeout.map(format_duration),
                wait_for: s.wait_for.clone(),
            })
            .collect(),
        images: spec.images.clone(),
        timeout: format_duration(spec.timeout),
        logs_bucket: spec.logs_bucket.clone(),
        // Our own bucket, GCS logging and streaming: the log can be tailed.
        options: json!({
            "machineType": spec.machine_type,
            "logging": "GCS_ONLY",
            "logStreamingOption": "STREAM_ON",
        }),
        tags: spec.tags.clone(),
        service_account: spec
            .service_account
            .as_ref()
            .map(|email| format!("projects/{project}/serviceAccounts/{email}")),
    };
    let op: Operation = t
        .json(METHOD, t.request(Method::POST, url).json(&body))
        .await?;
    // The build id is only in the operation's metadata.
    let meta: BuildOperationMetadata = op
        .metadata
        .map(serde_json::from_value)
        .transpose()
        .map_err(|source| GcpError::Decode {
            method: METHOD,
            source,
        })?
        .unwrap_or_default();
    Ok(meta.build)
}

pub async fn get(t: &Transport, project: &str, id: &str) -> Result<Build, GcpError> {
    let url = format!(
        "{}/v1/projects/{project}/locations/{LOCATION}/builds/{id}",
        t.endpoints.cloud_build
    );
    t.json(
        "cloudbuild.projects.locations.builds.get",
        t.request(Method::GET, url),
    )
    .await
}

pub async fn cancel(t: &Transport, project: &str, id: &str) -> Result<Build, GcpError> {
    let name = format!("projects/{project}/locations/{LOCATION}/builds/{id}");
    let url = format!("{}/v1/{name}:cancel", t.endpoints.cloud_build);
    let body = BTreeMap::from([("name", name.as_str()), ("projectId", project), ("id", id)]);
    t.json(
        "cloudbuild.projects.locations.builds.cancel",
        t.request(Method::POST, url).json(&body),
    )
    .await
}
