//! The Grafana dashboards checked against a JSON Schema generated from
//! Grafana's own published types (npm @grafana/schema 13.2.3, see
//! dashboards/schema/generate.sh), with Python's jsonschema, which .ci/run
//! installs. A mutated dashboard must fail the same check. Outside CI the
//! schema check skips, saying so, where jsonschema is not installed.

use std::path::PathBuf;
use std::process::Command;

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const VALIDATE: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
# Grafana's TypeScript AnnotationQuery declares only the built-in store's
# target; a Prometheus annotation's own fields (which Grafana reads and
# saves at the top level) are allowed here, with their types.
item = schema["definitions"]["Dashboard"]["properties"]["annotations"]["properties"]["list"]["items"]
item["properties"].update({
    "expr": {"type": "string"}, "step": {"type": "string"},
    "titleFormat": {"type": "string"}, "textFormat": {"type": "string"},
    "tagKeys": {"type": "string"}, "useValueForTime": {"type": "boolean"},
})
validator = jsonschema.Draft7Validator(schema)
bad = 0
for path in sys.argv[2:]:
    doc = json.load(open(path))
    for e in validator.iter_errors(doc):
        bad += 1
        print(f"{path}: {list(e.absolute_path)}: {e.message}")
sys.exit(1 if bad else 0)
"#;

fn jsonschema_available() -> bool {
    common::outside_tool(
        "python3",
        &["-c", "import jsonschema"],
        "python3 -m pip install jsonschema",
    )
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-c", VALIDATE])
        .arg(root().join("dashboards/schema/dashboard.schema.json"))
        .args(files)
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn dashboards() -> Vec<PathBuf> {
    [
        "deployd-overview.json",
        "deployd-latency.json",
        "deployd-failures.json",
        "deployd-delivery.json",
    ]
    .iter()
    .map(|f| root().join("dashboards/grafana").join(f))
    .collect()
}

#[test]
fn dashboards_match_grafanas_schema() {
    if !jsonschema_available() {
        return;
    }
    let (ok, out) = validate(&dashboards());
    assert!(ok, "{out}");

    // The check can fail: a dashboard with wrong types is rejected.
    let text = std::fs::read_to_string(&dashboards()[0]).expect("read");
    let mut d: serde_json::Value = serde_json::from_str(&text).expect("json");
    d["schemaVersion"] = serde_json::json!("41");
    d["panels"][0]["gridPos"]["h"] = serde_json::json!("tall");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, d.to_string()).expect("write");
    let (ok, out) = validate(&[bad]);
    assert!(!ok, "a broken dashboard passed");
    assert!(
        out.contains("schemaVersion") && out.contains("gridPos"),
        "{out}"
    );
}

/// What file provisioning and the queries rely on, checked without Python.
#[test]
fn dashboards_are_provisionable() {
    let mut uids = vec![];
    for path in dashboards() {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let name = path.display().to_string();
        assert_eq!(d["schemaVersion"], 41, "{name}");
        uids.push(d["uid"].as_str().expect("uid").to_string());
        let vars = d["templating"]["list"].as_array().expect("variables");
        assert!(
            vars.iter()
                .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
            "{name}"
        );
        // __inputs placeholders only work with the UI import, not provisioning.
        assert!(d.get("__inputs").is_none(), "{name}");
        for p in d["panels"].as_array().expect("panels") {
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{name}: {}",
                p["title"]
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {}", p["title"]);
            for t in targets {
                assert!(
                    t["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains("deployd_") || e.contains("deployd:")),
                    "{name}: {}",
                    p["title"]
                );
            }
        }
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), dashboards().len(), "dashboard uids are unique");
    for f in [
        "provisioning/dashboards/deployd.yml",
        "provisioning/datasources/prometheus.yml",
    ] {
        assert!(root().join("dashboards/grafana").join(f).is_file(), "{f}");
    }
}

/// Every alert links a runbook that exists and a dashboard that exists;
/// every dashboard links the others, marks deploys and rollbacks, and has
/// the job and environment variables the rules keep.
#[test]
fn alerts_lead_to_runbooks_and_dashboards() {
    let rules = std::fs::read_to_string(root().join("dashboards/prometheus/deployd.rules.yml"))
        .expect("rules");
    let uids: Vec<String> = dashboards()
        .iter()
        .map(|p| {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json");
            d["uid"].as_str().expect("uid").to_string()
        })
        .collect();
    let mut alerts = 0;
    let mut current = None;
    let (mut runbooks, mut links) = (0, 0);
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts += 1;
            current = Some(name.to_string());
        }
        if let Some(url) = line.strip_prefix("runbook_url: ") {
            let name = current.as_deref().expect("inside an alert");
            let want =
                format!("\"{{{{ $externalLabels.runbook_base }}}}/docs/runbooks/{name}.md\"");
            assert_eq!(url, want, "{name}");
            let book = root().join(format!("docs/runbooks/{name}.md"));
            let text =
                std::fs::read_to_string(&book).unwrap_or_else(|_| panic!("{}", book.display()));
            assert!(
                text.starts_with(&format!("# {name}\n")) && text.contains("## What to do"),
                "{name}"
            );
            runbooks += 1;
        }
        if let Some(dash) = line.strip_prefix("dashboard: ") {
            let uid = dash.trim_matches('"').trim_start_matches("/d/");
            assert!(
                uids.iter().any(|u| u == uid),
                "{current:?}: no dashboard {uid}"
            );
            links += 1;
        }
    }
    assert!(alerts >= 9, "{alerts}");
    assert_eq!(runbooks, alerts, "every alert has a runbook_url");
    assert_eq!(links, alerts, "every alert has a dashboard");
    for path in dashboards() {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let name = path.display().to_string();
        assert_eq!(d["links"][0]["type"], "dashboards", "{name}");
        assert!(
            d["tags"]
                .as_array()
                .expect("tags")
                .contains(&"deployd".into()),
            "{name}"
        );
        let names: Vec<&str> = d["annotations"]["list"]
            .as_array()
            .expect("annotations")
            .iter()
            .filter_map(|a| a["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["Annotations & Alerts", "Deploys", "Rollbacks"],
            "{name}"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for v in ["job", "env", "instance", "DS_LOKI", "DS_TEMPO"] {
            assert!(vars.contains(&v), "{name}: variable {v}");
        }
        for p in d["panels"].as_array().expect("panels") {
            let links = p["fieldConfig"]["defaults"]["links"]
                .as_array()
                .expect("data links");
            assert!(
                links
                    .iter()
                    .any(|l| l["url"].as_str().is_some_and(|u| u.contains("DS_LOKI")))
                    && links
                        .iter()
                        .any(|l| l["url"].as_str().is_some_and(|u| u.contains("DS_TEMPO"))),
                "{name}: {} links to logs and traces",
                p["title"]
            );
            for t in p["targets"].as_array().expect("targets") {
                let e = t["expr"].as_str().expect("expr");
                assert!(
                    e.contains("job=~\"$job\"") && e.contains("env=~\"$env\""),
                    "{name}: {} keeps job and env: {e}",
                    p["title"]
                );
            }
        }
    }
}
