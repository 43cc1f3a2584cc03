//! The real binary, as a person or a script runs it.

use std::process::Command;

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
        stdout.contains("FAILED in analyze: [NO_DOCKERFILE]"),
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
