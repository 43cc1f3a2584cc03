//! Cloud Build v1 (the `locations/global` variant, as gcloud uses it).

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{format_duration, GcpError};
use super::http::{segment, Transport};
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
    pub tags: Vec<String>,
    /// RFC 3339.
    pub create_time: Option<String>,
    pub finish_time: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct BuildList {
    builds: Vec<Build>,
    next_page_token: String,
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
        "{}/v1/projects/{}/locations/{LOCATION}/builds",
        t.endpoints.cloud_build,
        segment(project)
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultServiceAccount {
    #[serde(default)]
    service_account_email: String,
}

/// `projects.locations.getDefaultServiceAccount`: the email builds run as
/// when they name no service account, or `None` when there is none.
pub async fn default_service_account(
    t: &Transport,
    project: &str,
) -> Result<Option<String>, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/locations/{LOCATION}/defaultServiceAccount",
        t.endpoints.cloud_build,
        segment(project)
    );
    let got: DefaultServiceAccount = t
        .json(
            "cloudbuild.projects.locations.getDefaultServiceAccount",
            t.request(Method::GET, url),
        )
        .await?;
    Ok(service_account_email(&got.service_account_email))
}

/// `projects/{project}/serviceAccounts/{email}` (or a bare email) to the
/// email; empty means none.
fn service_account_email(name: &str) -> Option<String> {
    let email = name.rsplit('/').next().unwrap_or(name).trim();
    (!email.is_empty()).then(|| email.to_string())
}

pub async fn get(t: &Transport, project: &str, id: &str) -> Result<Build, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/locations/{LOCATION}/builds/{}",
        t.endpoints.cloud_build,
        segment(project),
        segment(id)
    );
    t.json(
        "cloudbuild.projects.locations.builds.get",
        t.request(Method::GET, url),
    )
    .await
}

/// Builds carrying `tag`, newest first (one page: a deployment makes a few).
pub async fn list_tagged(t: &Transport, project: &str, tag: &str) -> Result<Vec<Build>, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/locations/{LOCATION}/builds",
        t.endpoints.cloud_build,
        segment(project)
    );
    // Tags are [\w.-] only (validated by the caller's naming), so the
    // filter needs no escaping beyond its quotes.
    let filter = format!("tags=\"{tag}\"");
    let list: BuildList = t
        .json(
            "cloudbuild.projects.locations.builds.list",
            t.request(Method::GET, url)
                .query(&[("filter", filter.as_str()), ("pageSize", "50")]),
        )
        .await?;
    if !list.next_page_token.is_empty() {
        tracing::debug!(
            tag,
            "more than one page of tagged builds; the newest are used"
        );
    }
    Ok(list.builds)
}

pub async fn cancel(t: &Transport, project: &str, id: &str) -> Result<Build, GcpError> {
    let name = format!("projects/{project}/locations/{LOCATION}/builds/{id}");
    let url = format!(
        "{}/v1/projects/{}/locations/{LOCATION}/builds/{}:cancel",
        t.endpoints.cloud_build,
        segment(project),
        segment(id)
    );
    let body = BTreeMap::from([("name", name.as_str()), ("projectId", project), ("id", id)]);
    t.json(
        "cloudbuild.projects.locations.builds.cancel",
        t.request(Method::POST, url).json(&body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::service_account_email;

    #[test]
    fn default_service_account_names_reduce_to_emails() {
        assert_eq!(
            service_account_email(
                "projects/p/serviceAccounts/123-compute@developer.gserviceaccount.com"
            )
            .as_deref(),
            Some("123-compute@developer.gserviceaccount.com")
        );
        assert_eq!(
            service_account_email("123@cloudbuild.gserviceaccount.com").as_deref(),
            Some("123@cloudbuild.gserviceaccount.com")
        );
        assert_eq!(service_account_email(""), None);
    }
}
