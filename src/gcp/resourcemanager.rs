//! Cloud Resource Manager v3: the project, and what the caller may do in it.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::error::GcpError;
use super::http::{segment, Transport};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// "projects/{number}".
    pub name: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub state: String,
}

impl Project {
    pub fn number(&self) -> &str {
        self.name.strip_prefix("projects/").unwrap_or(&self.name)
    }
}

pub async fn get_project(t: &Transport, project: &str) -> Result<Project, GcpError> {
    let url = format!(
        "{}/v3/projects/{}",
        t.endpoints.resource_manager,
        segment(project)
    );
    t.json(
        "cloudresourcemanager.projects.get",
        t.request(Method::GET, url),
    )
    .await
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Permissions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
}

pub async fn test_permissions(
    t: &Transport,
    project: &str,
    permissions: &[&str],
) -> Result<Vec<String>, GcpError> {
    let url = format!(
        "{}/v3/projects/{}:testIamPermissions",
        t.endpoints.resource_manager,
        segment(project)
    );
    let body = Permissions {
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    };
    let r: Permissions = t
        .json(
            "cloudresourcemanager.projects.testIamPermissions",
            t.request(Method::POST, url).json(&body),
        )
        .await?;
    Ok(r.permissions)
}
