//! Org Policy v2: effective list-constraint policies.

use reqwest::Method;
use serde::Deserialize;

use super::error::GcpError;
use super::http::{segment, Transport};
use crate::pipeline::cloud::ListPolicy;

#[derive(Debug, Deserialize, Default)]
struct Policy {
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize, Default)]
struct Spec {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    allow_all: bool,
    #[serde(default)]
    deny_all: bool,
    values: Option<Values>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Values {
    #[serde(default)]
    allowed_values: Vec<String>,
    #[serde(default)]
    denied_values: Vec<String>,
}

pub async fn effective_list_policy(
    t: &Transport,
    project: &str,
    constraint: &str,
) -> Result<ListPolicy, GcpError> {
    let url = format!(
        "{}/v2/projects/{}/policies/{}:getEffectivePolicy",
        t.endpoints.org_policy,
        segment(project),
        segment(constraint)
    );
    let p: Policy = t
        .json(
            "orgpolicy.projects.policies.getEffectivePolicy",
            t.request(Method::GET, url),
        )
        .await?;
    Ok(reduce(p))
}

fn strip(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|s| s.strip_prefix("is:").map(str::to_string).unwrap_or(s))
        .collect()
}

/// Unconditional rules only; no rules means the default, allow all.
fn reduce(p: Policy) -> ListPolicy {
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for r in p.spec.rules {
        if r.deny_all {
            return ListPolicy::DenyAll;
        }
        if r.allow_all {
            return ListPolicy::AllowAll;
        }
        if let Some(v) = r.values {
            allowed.extend(strip(v.allowed_values));
            denied.extend(strip(v.denied_values));
        }
    }
    if !allowed.is_empty() {
        ListPolicy::Allowed(allowed)
    } else if !denied.is_empty() {
        ListPolicy::Denied(denied)
    } else {
        ListPolicy::AllowAll
    }
}
