//! Artifact Registry v1: the Docker repository images are pushed to.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::error::GcpError;
use super::http::{segment, Transport};
use super::lro::{self, Operation, PollPolicy};
use crate::pipeline::error::Code;

#[derive(Debug, Deserialize)]
pub struct Repository {
    #[serde(default)]
    pub format: String,
}

pub async fn get(
    t: &Transport,
    project: &str,
    location: &str,
    repo: &str,
) -> Result<Option<Repository>, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/locations/{}/repositories/{}",
        t.endpoints.artifact_registry,
        segment(project),
        segment(location),
        segment(repo)
    );
    match t
        .json(
            "artifactregistry.projects.locations.repositories.get",
            t.request(Method::GET, url),
        )
        .await
    {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn create_docker(
    t: &Transport,
    project: &str,
    location: &str,
    repo: &str,
    poll: &PollPolicy,
) -> Result<(), GcpError> {
    const METHOD: &str = "artifactregistry.projects.locations.repositories.create";
    let url = format!(
        "{}/v1/projects/{}/locations/{}/repositories",
        t.endpoints.artifact_registry,
        segment(project),
        segment(location)
    );
    let body = json!({
        "format": "DOCKER",
        "description": "Images built by deployd",
        "labels": {"managed-by": "deployd"},
    });
    let op: Operation = t
        .json(
            METHOD,
            t.request(Method::POST, url)
                .query(&[("repositoryId", repo)])
                .json(&body),
        )
        .await?;
    lro::wait(t, METHOD, &t.endpoints.artifact_registry, "v1", op, poll).await?;
    Ok(())
}
