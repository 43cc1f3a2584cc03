//! A revision that fails explains itself: its container's lines from Cloud
//! Logging (entries.list, filtered to the revision) are quoted in the
//! outcome, with the Logs Explorer link, on the sandbox's emulated Cloud
//! Logging.

mod common;

use common::*;
use deployd::api::proto;
use serde_json::json;

fn logs_of(h: &Harness, service: &str, lines: &[&str]) {
    h.sandbox
        .apply_faults(&json!({"next_revision_logs": [{"service": service, "severity": "ERROR", "lines": lines}]}))
        .expect("applied");
}

#[tokio::test]
async fn a_revision_that_never_listens_quotes_its_traceback() {
    let h = Harness::start().await;
    h.sandbox.revisions_not_ready(PROJECT, "crashes", 1);
    logs_of(
        &h,
        "crashes",
        &[
            "Starting app",
            "Traceback (most recent call last):",
            "  File \"/app/main.py\", line 2, in <module>",
            "    import flask",
            "ModuleNotFoundError: No module named 'flask'",
        ],
    );
    let (_, o) = deploy(&h, deploy_request("crashes", &example_app())).await;
    let f = o.error.expect("failure");
    assert_eq!(f.code, "REVISION_NOT_READY", "{f:?}");
    assert!(
        f.message
            .contains("  | ModuleNotFoundError: No module named 'flask'")
            && f.message.contains("  | Traceback (most recent call last):")
            && !f.message.contains("Starting app"),
        "{}",
        f.message
    );
    let link = f
        .remediation
        .iter()
        .find(|r| r.contains("console.cloud.google.com/logs/query;query="))
        .unwrap_or_else(|| panic!("a Logs Explorer link: {:?}", f.remediation));
    assert!(
        link.contains("cloud_run_revision") && link.contains(&o.revision),
        "{link}"
    );
    // The client asked for the revision's entries, newest first.
    let asked = h.sandbox.requests_of("logging.entries.list");
    assert_eq!(asked.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&asked[0].body).expect("json");
    assert_eq!(body["resourceNames"][0], format!("projects/{PROJECT}"));
    assert_eq!(body["orderBy"], "timestamp desc");
    let filter = body["filter"].as_str().expect("filter");
    for term in [
        "resource.type=\"cloud_run_revision\"",
        "resource.labels.service_name=\"crashes\"",
        &format!("resource.labels.revision_name=\"{}\"", o.revision),
        "timestamp>=\"",
    ] {
        assert!(filter.contains(term), "{term} in {filter}");
    }
}

#[tokio::test]
async fn an_app_on_a_fixed_port_is_told_to_read_port() {
    let h = Harness::start().await;
    h.sandbox.revisions_not_ready(PROJECT, "port3000", 1);
    logs_of(
        &h,
        "port3000",
        &["> node server.js", "Server listening on 3000"],
    );
    let (_, o) = deploy(&h, deploy_request("port3000", &example_app())).await;
    let f = o.error.expect("failure");
    assert_eq!(f.code, "REVISION_NOT_READY");
    assert!(
        f.remediation[0].contains("listens on port 3000")
            && f.remediation[0].contains("$PORT (8080)"),
        "{:?}",
        f.remediation
    );
    // The platform's own line is there too.
    assert!(
        f.message.contains("STARTUP TCP probe failed"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn an_unhealthy_revision_quotes_its_logs() {
    let h = Harness::start().await;
    let (_, o) = deploy(&h, deploy_request("flaky", &example_app())).await;
    assert!(o.success);
    logs_of(&h, "flaky", &["GET / 500", "KeyError: 'DATABASE_URL'"]);
    let app = app_version("2");
    let mut req = deploy_request("flaky", app.path());
    // It starts, but never answers what its health check expects.
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        expect_body: "a body it never sends".into(),
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    let f = o.error.expect("failure");
    assert_eq!(f.code, "UNHEALTHY");
    assert!(
        f.message.contains("  | KeyError: 'DATABASE_URL'"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn logs_that_cannot_be_read_still_leave_the_link() {
    let h = Harness::start().await;
    h.sandbox
        .apply_faults(&json!({"withhold_permissions": ["logging.logEntries.list"]}))
        .expect("applied");
    h.sandbox.revisions_not_ready(PROJECT, "dark", 1);
    let (_, o) = deploy(&h, deploy_request("dark", &example_app())).await;
    let f = o.error.expect("failure");
    assert_eq!(
        f.code, "REVISION_NOT_READY",
        "the failure stays what it was"
    );
    let said = f
        .remediation
        .iter()
        .find(|r| r.contains("could not be read"))
        .unwrap_or_else(|| panic!("{:?}", f.remediation));
    assert!(
        said.contains("PERMISSION_DENIED") || said.contains("logging.logEntries.list"),
        "{said}"
    );
    assert!(
        said.contains("console.cloud.google.com/logs/query"),
        "{said}"
    );
}
