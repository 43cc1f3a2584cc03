//! IAM v1: service accounts and whether the caller may act as one.

use reqwest::Method;
use serde::Deserialize;

use super::error::GcpError;
use super::http::{segment, Transport};
use super::resourcemanager::Permissions;
use crate::pipeline::error::Code;

#[derive(Debug, Deserialize)]
pub struct ServiceAccount {
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub disabled: bool,
}

pub async fn get_service_account(
    t: &Transport,
    project: &str,
    email: &str,
) -> Result<Option<ServiceAccount>, GcpError> {
    let url = format!(
        "{}/v1/projects/{}/serviceAccounts/{}",
        t.endpoints.iam,
        segment(project),
        segment(email)
    );
    match t
        .json(
            "iam.projects.serviceAccounts.get",
            t.request(Method::GET, url),
        )
        .await
    {
        Ok(sa) => Ok(Some(sa)),
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn can_act_as(t: &Transport, project: &str, email: &str) -> Result<bool, GcpError> {
    const ACT_AS: &str = "iam.serviceAccounts.actAs";
    let url = format!(
        "{}/v1/projects/{}/serviceAccounts/{}:testIamPermissions",
        t.endpoints.iam,
        segment(project),
        segment(email)
    );
    let body = Permissions {
        permissions: vec![ACT_AS.into()],
    };
    let r: Permissions = t
        .json(
            "iam.projects.serviceAccounts.testIamPermissions",
            t.request(Method::POST, url).json(&body),
        )
        .await?;
    Ok(r.permissions.iter().any(|p| p == ACT_AS))
}
