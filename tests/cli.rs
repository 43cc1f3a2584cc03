//! The real binary, as a person or a script runs it.

use std::process::Command;

mod common;

fn deployd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deployd"));
    c.env("DEPLOYD_RETRY_BASE_DELAY_MS", "20")
        .env_remove("RUST_LOG");
    c
}

fn example() -> String {
    format!("{}/examples/hello", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn deploy_with_embedded_sandbox_ends_with_a_verified_url() {
    let out = deployd()
        .args([
            "deploy",
            "--sandbox",
            &example(),
            "--service",
            "hello",
            "--allow-unauthenticated",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "==> source",
        "==> analyze",
        "==> preflight",
        "==> build",
        "==> deploy",
        "==> verify",
    ] {
        assert!(stdout.contains(stage), "{stage} in {stdout}");
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("SUCCESS: "))
        .expect("success line");
    assert!(
        last.starts_with("SUCCESS: http://127.0.0.1:") && last.ends_with(" ms"),
        "{last}"
    );
}

#[test]
fn json_lines_end_with_the_outcome() {
    let out = deployd()
        .args([
            "deploy",
            "--sandbox",
            &example(),
            "--service",
            "hello-json",
            "--allow-unauthenticated",
            "--json",
        ])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let last = lines.last().expect("events");
    assert_eq!(last["kind"], "outcome");
    assert_eq!(last["data"]["success"], true);
    assert_eq!(last["data"]["verified"], true);
    let id = &lines[0]["deployment_id"];
    assert!(lines.iter().all(|l| &l["deployment_id"] == id));
}

#[test]
fn failed_deploy_exits_nonzero_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.py"), "print('no dockerfile')\n").expect("write");
    let out = deployd()
        .args([
            "deploy",
            "--sandbox",
            &dir.path().display().to_string(),
            "--service",
            "nodocker",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED in analyze: [UNSUPPORTED_SOURCE]"),
        "{stdout}"
    );
    assert!(stdout.contains("what to do:"), "{stdout}");
}

#[test]
fn invalid_service_name_is_refused() {
    let out = deployd()
        .args(["deploy", "--sandbox", &example(), "--service", "Not_Valid"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("target.service"),
        "{stderr}"
    );
}

/// `deployd serve --sandbox` in one process, `deployd deploy --server` in
/// another, then ctrl-c: the daemon stops cleanly.
#[test]
fn serve_and_deploy_as_two_processes() {
    let common::Served {
        guard: mut server,
        grpc,
        metrics,
        state: _state,
    } = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
        ],
    );
    let server_url = format!("http://127.0.0.1:{grpc}");
    let out = deployd()
        .args([
            "deploy",
            "--server",
            &server_url,
            "--project",
            "demo-project",
            &example(),
            "--service",
            "two-procs",
            "--allow-unauthenticated",
        ])
        .output()
        .expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SUCCESS: http://127.0.0.1:"), "{stdout}");

    let metrics_text = reqwest::blocking_get(&format!("http://127.0.0.1:{metrics}/metrics"));
    assert!(
        metrics_text.contains("deployd_deployments_total{result=\"success\"} 1"),
        "{metrics_text}"
    );

    // ctrl-c: the daemon shuts down and exits 0.
    common::signal(&server.child, rustix::process::Signal::INT, false).expect("SIGINT");
    let status = server.child.wait().expect("daemon exits");
    assert!(status.success(), "{status:?}");
}

mod reqwest {
    /// A one-shot HTTP GET without a runtime of the test's own.
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            ::reqwest::get(url)
                .await
                .expect("get")
                .text()
                .await
                .expect("body")
        })
    }
}

/// `--log-format json`: one JSON object per line, and every line the
/// pipeline logs during a run carries the run's deployment id.
#[test]
fn json_logs_carry_the_deployment_id() {
    let out = deployd()
        .env("RUST_LOG", "deployd=info")
        .args([
            "--log-format",
            "json",
            "deploy",
            "--sandbox",
            &example(),
            "--service",
            "logged",
            "--allow-unauthenticated",
            "--json",
        ])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|e| e["deployment_id"].as_str().map(str::to_string))
        .expect("deployment id in the events");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let pipeline: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("deployd::pipeline"))
        })
        .collect();
    assert!(
        pipeline.len() >= 8,
        "deploy started, six stages, deploy finished: {}",
        pipeline.len()
    );
    for l in pipeline {
        assert_eq!(l["span"]["deployment_id"], id.as_str(), "{l}");
        let spans = l["spans"].as_array().expect("span list");
        assert!(
            spans.iter().all(|s| s["deployment_id"] == id.as_str()),
            "{l}"
        );
    }
}
