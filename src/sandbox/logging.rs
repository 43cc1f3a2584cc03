//! Cloud Logging v2's `entries.list` for Cloud Run revisions: the lines
//! their containers logged, filtered by the terms deployd and Logs
//! Explorer use for a revision (the monitored resource's type and labels,
//! timestamps, severity, the log name), in the API's shape.

use axum::response::Response;
use serde_json::{json, Value};

use super::routes::{error, error_info, ok};
use super::world::{LogEntry, World, SEVERITIES};

/// One `field OP "value"` term of a filter.
struct Term {
    field: String,
    op: &'static str,
    value: String,
}

fn parse_filter(filter: &str) -> Result<Vec<Term>, String> {
    let mut terms = vec![];
    for raw in filter
        .split(" AND ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (field, op, value) = ["<=", ">=", "!=", "=", "<", ">"]
            .iter()
            .find_map(|op| raw.split_once(op).map(|(f, v)| (f.trim(), *op, v.trim())))
            .ok_or_else(|| format!("Unparseable filter: {raw}"))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
            .unwrap_or_else(|| value.to_string());
        let known = matches!(
            field,
            "resource.type" | "timestamp" | "severity" | "logName"
        ) || field.starts_with("resource.labels.");
        if !known {
            return Err(format!("Unparseable filter: unsupported field {field}"));
        }
        terms.push(Term {
            field: field.to_string(),
            op,
            value,
        });
    }
    Ok(terms)
}

fn rank(severity: &str) -> usize {
    SEVERITIES
        .iter()
        .position(|s| s.eq_ignore_ascii_case(severity))
        .unwrap_or(0)
}

fn log_name(e: &LogEntry) -> String {
    format!(
        "projects/{}/logs/run.googleapis.com%2F{}",
        e.project, e.line.stream
    )
}

fn compare<T: PartialOrd>(have: T, op: &str, want: T) -> bool {
    match op {
        "=" => have == want,
        "!=" => have != want,
        "<" => have < want,
        "<=" => have <= want,
        ">" => have > want,
        _ => have >= want,
    }
}

fn matches(e: &LogEntry, t: &Term) -> bool {
    match t.field.as_str() {
        "resource.type" => compare("cloud_run_revision", t.op, t.value.as_str()),
        "severity" => compare(rank(&e.line.severity), t.op, rank(&t.value)),
        "logName" => compare(log_name(e).as_str(), t.op, t.value.as_str()),
        "timestamp" => match (
            chrono::DateTime::parse_from_rfc3339(&e.timestamp),
            chrono::DateTime::parse_from_rfc3339(&t.value),
        ) {
            (Ok(have), Ok(want)) => compare(have, t.op, want),
            _ => false,
        },
        label => {
            let have = match label.trim_start_matches("resource.labels.") {
                "service_name" | "configuration_name" => &e.service,
                "revision_name" => &e.revision,
                "location" => &e.location,
                "project_id" => &e.project,
                _ => return false,
            };
            compare(have.as_str(), t.op, t.value.as_str())
        }
    }
}

fn render(e: &LogEntry) -> Value {
    json!({
        "logName": log_name(e),
        "resource": {"type": "cloud_run_revision", "labels": {
            "project_id": e.project, "location": e.location, "service_name": e.service,
            "configuration_name": e.service, "revision_name": e.revision}},
        "timestamp": e.timestamp,
        "receiveTimestamp": e.timestamp,
        "severity": e.line.severity,
        "textPayload": e.line.text,
        "insertId": e.insert_id,
        "labels": {"instanceId": "sandbox"},
    })
}

/// `POST /v2/entries:list`.
pub fn list(w: &World, body: &Value) -> Response {
    let Some(project) = body["resourceNames"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("projects/"))
    else {
        return error(
            400,
            "INVALID_ARGUMENT",
            "resourceNames must name a project: projects/PROJECT_ID",
        );
    };
    let Some(key) = w.project_key(project) else {
        return error_info(
            403,
            "PERMISSION_DENIED",
            &format!("The caller does not have permission, or project {project} does not exist."),
            "USER_PROJECT_DENIED",
            json!({"consumer": format!("projects/{project}")}),
        );
    };
    let p = &w.projects[&key];
    if !p.enabled_apis.contains("logging.googleapis.com") {
        return super::routes::service_disabled("logging.googleapis.com", project);
    }
    if !p.permissions.contains("logging.logEntries.list") {
        return error_info(
            403,
            "PERMISSION_DENIED",
            &format!("Permission 'logging.logEntries.list' denied on resource (or it may not exist): projects/{project}"),
            "IAM_PERMISSION_DENIED",
            json!({"permission": "logging.logEntries.list", "resource": format!("projects/{project}")}),
        );
    }
    let terms = match parse_filter(body["filter"].as_str().unwrap_or_default()) {
        Ok(t) => t,
        Err(e) => return error(400, "INVALID_ARGUMENT", &e),
    };
    let newest_first = match body["orderBy"].as_str().unwrap_or("timestamp asc") {
        "timestamp desc" => true,
        "timestamp asc" | "timestamp" => false,
        other => {
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid orderBy: {other}"),
            )
        }
    };
    let page_size = body["pageSize"].as_u64().unwrap_or(50).clamp(1, 1000) as usize;
    let offset: usize = match body["pageToken"].as_str() {
        None | Some("") => 0,
        Some(t) => match t.parse() {
            Ok(n) => n,
            Err(_) => return error(400, "INVALID_ARGUMENT", "Invalid page token"),
        },
    };
    let mut found: Vec<&LogEntry> = w
        .log_entries
        .iter()
        .filter(|e| e.project == p.id && terms.iter().all(|t| matches(e, t)))
        .collect();
    if newest_first {
        found.reverse();
    }
    let page: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|e| render(e))
        .collect();
    let mut out = json!({"entries": page});
    if offset + page_size < found.len() {
        out["nextPageToken"] = json!((offset + page_size).to_string());
    }
    ok(out)
}
