//! Cloud Logging v2: a Cloud Run revision's container logs
//! (`entries.list`), read when a revision fails to start or to verify, so
//! the outcome can quote what the container said.

use std::time::SystemTime;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::GcpError;
use super::http::Transport;
use crate::pipeline::cloud::LogLine;
use crate::pipeline::model::Target;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    #[serde(default)]
    entries: Vec<Entry>,
    #[serde(default)]
    next_page_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(default)]
    log_name: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    text_payload: Option<String>,
    #[serde(default)]
    json_payload: Option<Value>,
}

impl Entry {
    /// The line as the container wrote it: the text, or a structured
    /// entry's `message` (its JSON when it has none).
    fn text(&self) -> String {
        if let Some(t) = &self.text_payload {
            return t.clone();
        }
        match &self.json_payload {
            Some(v) => v
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()),
            None => String::new(),
        }
    }
}

/// Cloud Run's monitored resource for `revision`, since `since`.
pub fn revision_filter(target: &Target, revision: &str, since: SystemTime) -> String {
    // The values are validated names ([a-z0-9-]); quoted all the same.
    let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"{}\" AND resource.labels.revision_name=\"{}\" AND resource.labels.location=\"{}\" AND timestamp>=\"{}\"",
        q(&target.service),
        q(revision),
        q(&target.region),
        chrono::DateTime::<chrono::Utc>::from(since)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Logs Explorer with `filter` filled in.
pub fn explorer_link(project: &str, filter: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // Everything but RFC 3986's unreserved characters.
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!(
        "https://console.cloud.google.com/logs/query;query={}?project={}",
        utf8_percent_encode(filter, QUERY),
        utf8_percent_encode(project, QUERY)
    )
}

/// The newest `limit` entries of the revision since `since`, oldest first.
pub async fn revision_logs(
    t: &Transport,
    target: &Target,
    revision: &str,
    since: SystemTime,
    limit: u32,
) -> Result<Vec<LogLine>, GcpError> {
    let url = format!("{}/v2/entries:list", t.endpoints.logging);
    let filter = revision_filter(target, revision, since);
    let mut out = vec![];
    let mut token = String::new();
    // Newest first, so the lines nearest the failure come in the first
    // page; a few pages at most.
    for _ in 0..5 {
        let mut body = json!({
            "resourceNames": [format!("projects/{}", target.project)],
            "filter": filter,
            "orderBy": "timestamp desc",
            "pageSize": limit.min(1000),
        });
        if !token.is_empty() {
            body["pageToken"] = json!(token);
        }
        let r: ListResponse = t
            .json(
                "logging.entries.list",
                t.request(Method::POST, url.clone()).json(&body),
            )
            .await?;
        out.extend(r.entries.into_iter().map(|e| {
            LogLine {
                text: e.text(),
                time: e.timestamp,
                severity: e.severity,
                stream: e
                    .log_name
                    .rsplit("%2F")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }
        }));
        if r.next_page_token.is_empty() || out.len() >= limit as usize {
            break;
        }
        token = r.next_page_token;
    }
    out.truncate(limit as usize);
    out.reverse();
    Ok(out)
}
