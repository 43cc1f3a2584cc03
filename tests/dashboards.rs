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
                    t["expr"].as_str().is_some_and(|e| e.contains("deployd_")),
                    "{name}: {}",
                    p["title"]
                );
            }
        }
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "dashboard uids are unique");
    for f in [
        "provisioning/dashboards/deployd.yml",
        "provisioning/datasources/prometheus.yml",
    ] {
        assert!(root().join("dashboards/grafana").join(f).is_file(), "{f}");
    }
}
