//! Service Usage v1: which APIs are enabled.

use reqwest::Method;
use serde::Deserialize;

use super::error::GcpError;
use super::http::{segment, Transport};

#[derive(Debug, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Deserialize)]
struct BatchGetResponse {
    #[serde(default)]
    services: Vec<Service>,
}

/// `services.batchGet` (at most 30 names per call).
pub async fn batch_get(
    t: &Transport,
    project: &str,
    services: &[&str],
) -> Result<Vec<Service>, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/services:batchGet",
        t.endpoints.service_usage,
        segment(project)
    );
    let names: Vec<(&str, String)> = services
        .iter()
        .map(|s| ("names", format!("projects/{project}/services/{s}")))
        .collect();
    let r: BatchGetResponse = t
        .json(
            "serviceusage.services.batchGet",
            t.request(Method::GET, url).query(&names),
        )
        .await?;
    Ok(r.services)
}
