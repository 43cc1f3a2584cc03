//! The real binary, as a person or a script runs it.

use std::process::Command;

mod common;
use common::OutputChecked;

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
        .output_checked();
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

fn descriptor(name: &str) -> prost_reflect::MessageDescriptor {
    prost_reflect::DescriptorPool::decode(deployd::api::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set")
        .get_message_by_name(name)
        .expect("message")
}

/// `v` is `desc` in the canonical JSON mapping with defaults emitted: every
/// key is one of its fields' JSON names, every field without presence is
/// there, and nested messages hold to the same (Timestamps and Durations
/// are strings, maps are checked as objects).
fn check_canonical(v: &serde_json::Value, desc: &prost_reflect::MessageDescriptor, path: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object: {v}"));
    for f in desc.fields() {
        if !f.supports_presence() {
            assert!(
                obj.contains_key(f.json_name()),
                "{path}.{} is missing: {v}",
                f.json_name()
            );
        }
    }
    for (key, value) in obj {
        let f = desc
            .fields()
            .find(|f| f.json_name() == key)
            .unwrap_or_else(|| panic!("{path}.{key} is no field of {}", desc.full_name()));
        let prost_reflect::Kind::Message(m) = f.kind() else {
            continue;
        };
        let path = format!("{path}.{key}");
        if f.is_map() {
            assert!(value.is_object(), "{path}: {value}");
        } else if m.full_name().starts_with("google.protobuf.") {
            assert!(value.is_string(), "{path}: {value}");
        } else if f.is_list() {
            for item in value.as_array().expect("a list") {
                check_canonical(item, &m, &path);
            }
        } else {
            check_canonical(value, &m, &path);
        }
    }
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
        .output_checked();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let last = &lines.last().expect("events")["outcome"];
    assert_eq!(last["success"], true);
    assert_eq!(last["verified"], true);
    let id = &lines[0]["deploymentId"];
    assert!(lines.iter().all(|l| &l["deploymentId"] == id));
    // The proto's canonical JSON mapping, whole: every line is an Event
    // whose every field without presence is there, nested messages too, and
    // no key is foreign to the contract. A field added to the proto and
    // left out of the output fails here.
    let event = descriptor("deployd.v1.Event");
    for l in &lines {
        check_canonical(l, &event, "Event");
    }
    // The fields a hand-written mapping once dropped.
    for key in ["rolledBack", "probeStats", "finalUrl", "sourceCommitTime"] {
        assert!(last.get(key).is_some(), "outcome.{key}: {last}");
    }
    let probe = lines
        .iter()
        .find_map(|l| l.get("probe"))
        .expect("a probe event");
    for key in ["errorClass", "headersMs", "finalUrl"] {
        assert!(probe.get(key).is_some(), "probe.{key}: {probe}");
    }
    assert_eq!(lines[0]["stage"], "STAGE_SOURCE");
    assert!(lines[0]["seq"].is_string(), "uint64 as a string");
    // The shipped default: an HTTP startup probe on the health path.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP startup probe: GET / every 2 s (1 s timeout)"),
        "{stdout}"
    );
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
        .output_checked();
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
        .output_checked();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("InvalidArgument (INVALID_REQUEST)") && stderr.contains("target.service"),
        "{stderr}"
    );
    // Every rule broken is listed at once, a field a line.
    let out = deployd()
        .args(["deploy", "--sandbox", &example(), "--service", "Not_Valid"])
        .args(["--memory", "lots", "--health-attempts", "99"])
        .output_checked();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 fields are invalid:"), "{stderr}");
    for field in ["target.service", "health_check.attempts", "runtime.memory"] {
        assert!(stderr.contains(&format!("\n  {field}: ")), "{stderr}");
    }
}

/// `deployd serve --sandbox` in one process, `deployd deploy --server` in
/// another, then ctrl-c: the daemon stops cleanly.
#[test]
fn serve_and_deploy_as_two_processes() {
    let mut served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
        ],
    );
    let (grpc, metrics) = (served.grpc, served.metrics);
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
        .output_checked();
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
    common::signal(&served.guard.child, rustix::process::Signal::INT, false).expect("SIGINT");
    let status = served.guard.child.wait().expect("daemon exits");
    assert!(status.success(), "{status:?}");
}

mod reqwest {
    /// A one-shot JSON POST; the status and body.
    pub fn blocking_post(url: &str, body: serde_json::Value) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let r = ::reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("post");
            (r.status().as_u16(), r.text().await.expect("body"))
        })
    }

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
        .output_checked();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|e| e["deploymentId"].as_str().map(str::to_string))
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

/// Deployments from the command line, against `serve --sandbox` with its
/// default store ($XDG_STATE_HOME/deployd/deployd.db): `deploy --detach`,
/// `watch`, `status`, `list`, `cancel`; ctrl-c during a deploy asks the
/// daemon to cancel it; and the history outlives the daemon.
#[test]
fn deployments_from_the_command_line() {
    use std::io::{BufRead, BufReader};
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
        ],
    );
    let server = format!("http://127.0.0.1:{}", served.grpc);
    let run = |args: &[&str]| {
        let out = deployd()
            .args(args)
            .args(["--server", &server])
            .output_checked();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, id, err) = run(&[
        "deploy",
        "--project",
        "demo-project",
        &example(),
        "--service",
        "cli-detach",
        "--allow-unauthenticated",
        "--detach",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert!(err.contains(&format!("deployd watch {id}")), "{err}");

    let (code, out, err) = run(&["watch", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("SUCCESS: http://127.0.0.1:"), "{out}");
    let (code, out, _) = run(&["status", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("state     succeeded"), "{out}");
    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!(code, Some(0));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["state"], "DEPLOYMENT_STATE_SUCCEEDED");
    let (code, _, err) = run(&["cancel", &id]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("FailedPrecondition") && err.contains("already ended"),
        "{err}"
    );

    // ctrl-c while the build runs: the deployment is cancelled, not left
    // running, and the client says so and shows how it ended.
    let mut client = deployd()
        .args(["deploy", "--server", &server, "--project", "demo-project"])
        .args([
            &example(),
            "--service",
            "cli-ctrl-c",
            "--allow-unauthenticated",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    let stdout = client.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line.expect("line").contains("queued") {
            break;
        }
    }
    common::signal(&client, rustix::process::Signal::INT, false).expect("SIGINT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = client.wait().expect("exits");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cancel requested for deployment"), "{err}");
    assert!(rest.iter().any(|l| l.contains("CANCELLED")), "{rest:?}");
    let (_, out, _) = run(&["list", "--service", "cli-ctrl-c"]);
    assert!(out.contains("cancelled"), "{out}");

    // The history is in the default store, and a new daemon on it has it.
    let db = served.state.path().join("deployd/deployd.db");
    assert!(db.is_file(), "{}", db.display());
    let mut served = served;
    common::signal(&served.guard.child, rustix::process::Signal::TERM, false).expect("SIGTERM");
    assert!(served.guard.child.wait().expect("exits").success());
    let mut cmd = deployd();
    cmd.env("XDG_STATE_HOME", served.state.path());
    let again = common::serve(cmd, &["--sandbox"]);
    let out = deployd()
        .args([
            "status",
            &id,
            "--server",
            &format!("http://127.0.0.1:{}", again.grpc),
        ])
        .output_checked();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("state     succeeded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sandbox once refused any request body over axum's default 2 MB, so
/// an ordinary app with assets failed `deploy --sandbox`.
#[test]
fn a_twenty_megabyte_source_deploys_on_the_sandbox_with_default_settings() {
    let app = tempfile::tempdir().expect("dir");
    common::copy_dir(std::path::Path::new(&example()), app.path());
    // Incompressible, so the archive is as large as the source.
    let mut assets = vec![0u8; 20 * 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in assets.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::create_dir_all(app.path().join("static")).expect("mkdir");
    std::fs::write(app.path().join("static/video.bin"), &assets).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .env_remove("RUST_LOG")
        .args(["deploy", "--sandbox"])
        .arg(app.path())
        .args(["--service", "big", "--json"])
        .output_checked();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"success\":true"), "{stdout}");
}

/// `serve` raises its soft open-file limit to the hard one, so a burst of
/// deploys does not run out at the common soft 1,024.
#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let state = tempfile::tempdir().expect("state");
    let (grpc, metrics) = (common::free_port(), common::free_port());
    let script = format!(
        "ulimit -S -n 256 && exec \"$0\" serve --sandbox --listen 127.0.0.1:{grpc} --metrics-listen 127.0.0.1:{metrics}"
    );
    let child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_deployd")])
        .env("XDG_STATE_HOME", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let mut guard = common::ChildGuard::new(child);
    common::wait_for_port(grpc, &mut guard.child);
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", guard.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");
}

/// `--sandbox-listen` puts the embedded sandbox where it says (it used to
/// take an ephemeral port whatever the flag said).
#[test]
fn the_sandbox_listens_where_sandbox_listen_says() {
    let port = common::free_port();
    let served = common::serve(
        Command::new(env!("CARGO_BIN_EXE_deployd")),
        &[
            "--sandbox",
            "--sandbox-listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    // An HTTP server answers there (the sandbox: the daemon's own ports
    // are others).
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the sandbox's port");
    conn.write_all(b"GET /v1/projects/x HTTP/1.1\r\nhost: sandbox\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert_ne!(port, served.grpc);
    drop(served);
}

/// `deployd deploy` of the example, public, to a running daemon.
fn deploy_to(server_url: &str, service: &str, extra: &[&str]) -> Command {
    let mut c = deployd();
    c.args([
        "deploy",
        "--server",
        server_url,
        "--project",
        "demo-project",
        &example(),
        "--service",
        service,
        "--allow-unauthenticated",
    ])
    .args(extra);
    c
}

/// A canary from the command line, as the issue writes it, against a
/// daemon with its shipped settings but for the canary time scale (so a
/// 1-minute bake takes 0.6 s).
#[test]
fn canary_steps_from_the_command_line() {
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
            "--canary-time-scale",
            "0.01",
        ],
    );
    let server_url = format!("http://127.0.0.1:{}", served.grpc);
    let deploy = |extra: &[&str]| deploy_to(&server_url, "cli-canary", extra).output_checked();
    let first = deploy(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The analysis flags judge steps: without steps they are refused.
    let refused = deploy(&["--min-samples", "5"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--canary-steps"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A second version: every change to the tree makes a new revision.
    let out = deploy(&[
        "--canary-steps",
        "10:1m,50:1m,100",
        "--probe-interval",
        "1s",
        "--json",
        "--env",
        "VERSION=2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("canaryStep")).collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    assert_eq!(steps[0]["percent"], 10);
    assert_eq!(steps[0]["action"], "next");
    assert_eq!(steps[1]["percent"], 50);
    assert_eq!(steps[1]["action"], "promote");
    for s in &steps {
        assert_eq!(s["verdict"], "VERDICT_PASS", "{s}");
        let probes = s["measurements"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "error_ratio").cloned())
            .expect("error ratio");
        // A 1 s interval scaled 100x: a probe every 10 ms for 0.6 s.
        // uint64 is a string in the canonical JSON mapping.
        let samples: u64 = probes["samples"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(samples >= 10, "{probes}");
    }
    let outcome = &lines.last().expect("outcome")["outcome"];
    assert_eq!(outcome["success"], true);
    assert_eq!(outcome["canarySteps"].as_array().map(Vec::len), Some(2));
}

/// A fault set from outside, through the sandbox's control endpoint, while
/// a canary runs: the candidate starts failing half its requests at the
/// second step, and the canary is aborted there and rolled back.
#[test]
fn a_fault_set_from_outside_aborts_a_canary() {
    use std::io::BufRead;
    let port = common::free_port();
    let sandbox_listen = format!("127.0.0.1:{port}");
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--sandbox-listen",
            &sandbox_listen,
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
            "--canary-time-scale",
            "0.01",
        ],
    );
    let server_url = format!("http://127.0.0.1:{}", served.grpc);
    let deploy = |extra: &[&str]| deploy_to(&server_url, "cli-abort", extra);
    let first = deploy(&[]).output_checked();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let faults = format!("http://{sandbox_listen}/__sandbox/faults");
    // An unknown service is refused, naming it.
    let (status, body) = reqwest::blocking_post(
        &faults,
        serde_json::json!({"revisions": [{"service": "nope"}]}),
    );
    assert_eq!(status, 404, "{body}");
    let mut child = deploy(&[
        "--canary-steps",
        "10:2m,50:2m,100",
        "--probe-interval",
        "1s",
        "--json",
        "--env",
        "VERSION=2",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("client runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = vec![];
    let mut armed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        let step_two = line["progress"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("canary step 2/3"));
        if step_two && !armed {
            // The candidate is the service's latest revision.
            let (status, body) = reqwest::blocking_post(
                &faults,
                serde_json::json!({"revisions": [{"service": "cli-abort", "error_rate": 0.5}]}),
            );
            assert_eq!(status, 200, "{body}");
            armed = true;
        }
        lines.push(line);
    }
    let status = child.wait().expect("client exits");
    assert!(armed, "{lines:#?}");
    assert!(!status.success());
    let steps: Vec<(u64, String)> = lines
        .iter()
        .filter_map(|l| l.get("canaryStep"))
        .map(|c| {
            (
                c["percent"].as_u64().unwrap_or(0),
                c["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(steps, [(10, "next".to_string()), (50, "abort".to_string())]);
    let outcome = &lines.last().expect("outcome")["outcome"];
    assert_eq!(outcome["canaryAborted"], true, "{outcome}");
    assert_eq!(outcome["rolledBack"], true, "{outcome}");
    assert_eq!(outcome["error"]["code"], "CANARY_ABORTED");
}

#[test]
fn analyze_reports_warnings_with_the_env_to_set() {
    let dir = format!(
        "{}/tests/fixtures/python-django-whitenoise",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = deployd().args(["analyze", &dir]).output_checked();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .contains("warning  shop/settings.py:7: ALLOWED_HOSTS comes from DJANGO_ALLOWED_HOSTS")
            && stdout.contains("set it with --env DJANGO_ALLOWED_HOSTS=.run.app"),
        "{stdout}"
    );
    let out = deployd().args(["analyze", "--json", &dir]).output_checked();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON plan");
    let envs: Vec<&str> = plan["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["env"].as_str())
        .collect();
    assert_eq!(
        envs,
        [
            "DJANGO_SECRET_KEY=VALUE",
            "DJANGO_DEBUG=False",
            "DJANGO_ALLOWED_HOSTS=.run.app"
        ]
    );
    assert_eq!(
        plan["build"][0],
        "DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput"
    );
}

/// Text logs written to a pipe carry no ANSI colour codes (a terminal still
/// gets colours).
#[test]
fn text_logs_off_a_terminal_have_no_colour_codes() {
    let out = deployd()
        .env("RUST_LOG", "deployd=info")
        .args([
            "deploy",
            "--sandbox",
            &example(),
            "--service",
            "plain-logs",
            "--allow-unauthenticated",
        ])
        .output_checked();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deploy finished"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// A scenario file gives the embedded sandbox the faults the Rust tests
/// inject: two quota errors on build creation are retried (as
/// tests/deploy.rs sees them), three exhaust the attempts with the quota
/// failure and its remedies.
#[test]
fn a_scenario_file_injects_quota_errors_into_the_embedded_sandbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = |count: u32| {
        let path = dir.path().join(format!("quota-{count}.yaml"));
        std::fs::write(
            &path,
            format!(
                "api_errors:\n  - method: cloudbuild.projects.locations.builds.create\n    count: {count}\n    error: rate_limited\n"
            ),
        )
        .expect("write scenario");
        path.display().to_string()
    };
    let run = |file: &str| {
        deployd()
            .args(["deploy", "--sandbox", "--sandbox-faults", file, &example()])
            .args(["--service", "quota", "--allow-unauthenticated", "--json"])
            .args(["--retry-base-delay-ms", "20"])
            .output_checked()
    };
    let events = |out: &std::process::Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let out = run(&scenario(2));
    let lines = events(&out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let retries: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("retry")).collect();
    assert_eq!(retries.len(), 2, "{lines:#?}");
    assert!(
        retries
            .iter()
            .all(|r| r.to_string().contains("RESOURCE_EXHAUSTED")),
        "{retries:?}"
    );

    let out = run(&scenario(3));
    assert_eq!(out.status.code(), Some(1));
    let lines = events(&out);
    let outcome = &lines.last().expect("outcome")["outcome"];
    assert_eq!(outcome["success"], false);
    assert_eq!(outcome["error"]["retriable"], true, "{outcome}");
    assert!(
        outcome["error"]["remediation"][0]
            .as_str()
            .is_some_and(|r| r.contains("Wait")),
        "{outcome}"
    );

    // A scenario the sandbox cannot apply starts nothing and says why.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "disable_apis: [nope.googleapis.com]\n").expect("write");
    let out = run(&bad.display().to_string());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disable_apis[0]"), "{err}");
}

/// `deployd sandbox faults` changes a running sandbox through its control
/// endpoint: the Cloud Run API disabled makes the next deploy fail in
/// preflight, enabled again it succeeds.
#[test]
fn deployd_sandbox_faults_steers_a_running_sandbox() {
    let port = common::free_port();
    let sandbox_url = format!("http://127.0.0.1:{port}");
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--sandbox-listen",
            &format!("127.0.0.1:{port}"),
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
        ],
    );
    let server_url = format!("http://127.0.0.1:{}", served.grpc);
    let dir = tempfile::tempdir().expect("tempdir");
    let steer = |name: &str, doc: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, doc).expect("write");
        deployd()
            .args(["sandbox", "faults"])
            .arg(&path)
            .args(["--sandbox-url", &sandbox_url])
            .output_checked()
    };
    let out = steer("off.yaml", "disable_apis: [run.googleapis.com]\n");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: serde_json::Value = serde_json::from_str(said.trim()).expect("json");
    assert_eq!(
        applied["disabled_apis"][0], "run.googleapis.com",
        "{applied}"
    );

    let out = deploy_to(&server_url, "steered", &[]).output_checked();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("run.googleapis.com"), "{text}");

    let out = steer("on.json", r#"{"enable_apis": ["run.googleapis.com"]}"#);
    assert!(out.status.success());
    let out = deploy_to(&server_url, "steered", &[]).output_checked();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A refusal names the field and changes nothing; an unknown file type
    // and an unreachable sandbox are told apart.
    let out = steer(
        "bad.yaml",
        "builds: [{never_finishes: true, status: FAILURE}]\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("builds[0]"));
    let out = steer("x.txt", "{}");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".yaml, .yml or .json"));
    let path = dir.path().join("on.json");
    let out = deployd()
        .args(["sandbox", "faults"])
        .arg(&path)
        .args([
            "--sandbox-url",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ])
        .output_checked();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the sandbox"));
}

/// What a person rehearsing a broken start sees: the outcome quotes the
/// revision's own error line, read from the (emulated) Cloud Logging, and
/// links Logs Explorer. The real binary with its shipped settings.
#[test]
fn a_revision_that_does_not_start_quotes_its_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("broken-start.yaml");
    std::fs::write(
        &scenario,
        "revisions_not_ready: [{service: broken-start}]\nnext_revision_logs:\n  - service: broken-start\n    lines: [\"python: can't open file '/app/server.py': [Errno 2] No such file or directory\"]\n",
    )
    .expect("write");
    let out = deployd()
        .args(["deploy", "--sandbox", "--sandbox-faults"])
        .arg(&scenario)
        .args([
            &example(),
            "--service",
            "broken-start",
            "--allow-unauthenticated",
        ])
        .output_checked();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("REVISION_NOT_READY"), "{text}");
    assert!(
        text.contains(
            "| python: can't open file '/app/server.py': [Errno 2] No such file or directory"
        ),
        "{text}"
    );
    assert!(
        text.contains("https://console.cloud.google.com/logs/query;query="),
        "{text}"
    );
}

/// gcloud 528, pointed at `serve --sandbox --sandbox-listen`'s fixed
/// address, reads the build a deploy through the daemon made, and Cloud
/// Logging. (gcloud's `run` commands speak Cloud Run's v1 Knative API on
/// regional hosts, which the sandbox does not emulate.)
#[test]
fn gcloud_reads_a_sandbox_at_its_listen_address() {
    if !common::outside_tool(
        "gcloud",
        &["--version"],
        "the Google Cloud CLI, preinstalled here",
    ) {
        return;
    }
    let port = common::free_port();
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--sandbox-listen",
            &format!("127.0.0.1:{port}"),
            "--local-source-root",
            env!("CARGO_MANIFEST_DIR"),
        ],
    );
    let server_url = format!("http://127.0.0.1:{}", served.grpc);
    let out = deploy_to(&server_url, "via-gcloud", &[]).output_checked();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = tempfile::tempdir().expect("tempdir");
    let token = config.path().join("token");
    std::fs::write(&token, "sandbox-token").expect("token");
    let base = format!("http://127.0.0.1:{port}/");
    let gcloud = |args: &[&str]| {
        let out = Command::new("gcloud")
            .args(args)
            .arg("--format=json")
            .env("CLOUDSDK_CONFIG", config.path())
            .env("CLOUDSDK_CORE_PROJECT", "demo-project")
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
            .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "1")
            .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &token)
            .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBUILD", &base)
            .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_LOGGING", &base)
            .output_checked();
        assert!(
            out.status.success(),
            "gcloud {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let builds = gcloud(&["builds", "list"]);
    let builds = builds.as_array().expect("builds");
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert_eq!(builds[0]["status"], "SUCCESS");
    assert!(
        builds[0]["tags"].to_string().contains("deployment-"),
        "{builds:?}"
    );
    let entries = gcloud(&[
        "logging",
        "read",
        "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"via-gcloud\"",
        "--limit=5",
    ]);
    assert!(entries.is_array(), "{entries}");
}

/// The sandbox runs what it deployed, as `deployd serve --sandbox` ships:
/// the verified URL answers with the example app's own body from its own
/// process; a second version whose start command is wrong fails as Cloud
/// Run fails (REVISION_NOT_READY), quoting the process's error line from
/// the emulated Cloud Logging, while the first version's process still
/// serves; an app that hard-codes port 3000 fails the startup wait and is
/// told so; and no process outlives the sandbox.
#[test]
fn the_sandbox_runs_the_app_it_deploys() {
    let apps = tempfile::tempdir().expect("apps");
    let tmp = tempfile::tempdir().expect("the sandbox's TMPDIR");
    let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let app = |name: &str, dockerfile: Option<&str>, main: Option<String>| {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(hello.join("Dockerfile"), dir.join("Dockerfile")).expect("copy");
        std::fs::copy(hello.join("main.py"), dir.join("main.py")).expect("copy");
        if let Some(d) = dockerfile {
            std::fs::write(dir.join("Dockerfile"), d).expect("write");
        }
        if let Some(m) = main {
            std::fs::write(dir.join("main.py"), m).expect("write");
        }
        dir.display().to_string()
    };
    let v1 = app("v1", None, None);
    let unhealthy = app(
        "unhealthy",
        None,
        Some(
            std::fs::read_to_string(hello.join("main.py"))
                .expect("main.py")
                .replace("send_response(200)", "send_response(500)"),
        ),
    );
    let broken = app(
        "broken",
        Some("FROM python:3.12-slim\nWORKDIR /app\nCOPY main.py .\nCMD [\"python\", \"server.py\"]\n"),
        None,
    );
    let fixed_port = app(
        "fixed",
        None,
        Some(
            std::fs::read_to_string(hello.join("main.py"))
                .expect("main.py")
                .replace(
                    "HTTPServer((\"\", int(os.environ.get(\"PORT\", \"8080\"))), Hello)",
                    "print(\"listening on 3000\", flush=True) or HTTPServer((\"\", 3000), Hello)",
                ),
        ),
    );
    let mut cmd = deployd();
    cmd.env("TMPDIR", tmp.path());
    let served = common::serve(
        cmd,
        &[
            "--sandbox",
            "--local-source-root",
            &apps.path().display().to_string(),
        ],
    );
    let server_url = format!("http://127.0.0.1:{}", served.grpc);
    let deploy = |path: &str, service: &str| {
        let out = deployd()
            .args([
                "deploy",
                "--health-attempts",
                "2",
                "--server",
                &server_url,
                "--project",
                "demo-project",
                path,
            ])
            .args(["--service", service, "--allow-unauthenticated"])
            .output_checked();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, said) = deploy(&v1, "native");
    assert_eq!(code, Some(0), "{said}");
    let url = said
        .lines()
        .find_map(|l| l.strip_prefix("SUCCESS: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the verified URL")
        .to_string();
    assert_eq!(
        reqwest::blocking_get(&url),
        "Hello from deployd's example app\n"
    );
    assert_eq!(
        common::processes_under(tmp.path()).len(),
        1,
        "{:?}",
        common::processes_under(tmp.path())
    );
    // The deploy says what answered its verify.
    assert!(
        said.contains("runs the app natively: `python main.py`"),
        "{said}"
    );

    let (code, said) = deploy(&broken, "native");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("REVISION_NOT_READY"), "{said}");
    assert!(
        said.contains("can't open file") && said.contains("server.py"),
        "{said}"
    );
    // Traffic stayed on the first version, whose process still serves.
    assert_eq!(
        reqwest::blocking_get(&url),
        "Hello from deployd's example app\n"
    );

    // A second version that starts but answers 500 takes the traffic,
    // fails its verify and is rolled back: the first version's process is
    // started again (as Cloud Run starts a revision scaled to zero) and
    // serves, and the broken one's is stopped.
    let (code, said) = deploy(&unhealthy, "native");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("rolled back"), "{said}");
    assert_eq!(
        reqwest::blocking_get(&url),
        "Hello from deployd's example app\n"
    );
    assert_eq!(
        common::processes_under(tmp.path()).len(),
        1,
        "only the first version runs: {:?}",
        common::processes_under(tmp.path())
    );

    let (code, said) = deploy(&fixed_port, "fixed-port");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("listens on port 3000"), "{said}");
    assert!(said.contains("| listening on 3000"), "{said}");

    drop(served);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !common::processes_under(tmp.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {:?}",
            common::processes_under(tmp.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Client errors that say what to do: no daemon at the address (given
/// without a scheme, taken as http://), and `analyze` of a path that is
/// not there.
#[test]
fn errors_that_say_what_to_do() {
    let port = common::free_port();
    let out = deployd()
        .args(["list", "--server", &format!("127.0.0.1:{port}")])
        .output_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach deployd at http://127.0.0.1:{port} ("
        )),
        "{err}"
    );
    assert!(
        err.contains("start it with `deployd serve`, or run this command with --sandbox"),
        "{err}"
    );
    assert!(!err.contains("tcp connect error"), "{err}");

    let out = deployd()
        .args(["analyze", "/nonexistent/app"])
        .output_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/app does not exist"), "{err}");
}

/// The project and region come from the active gcloud configuration when
/// no flag or variable names them, and the run's first line says so.
#[test]
fn project_and_region_from_the_gcloud_configuration() {
    let served = common::serve(deployd(), &["--sandbox"]);
    let config = tempfile::tempdir().expect("CLOUDSDK_CONFIG");
    std::fs::create_dir(config.path().join("configurations")).expect("mkdir");
    std::fs::write(config.path().join("active_config"), "rehearsal").expect("write");
    std::fs::write(
        config.path().join("configurations/config_rehearsal"),
        "[core]\nproject = demo-project\n[run]\nregion = europe-west1\n",
    )
    .expect("write");
    let out = deployd()
        .args([
            "preflight",
            "--server",
            &format!("127.0.0.1:{}", served.grpc),
            "--service",
            "from-gcloud",
        ])
        .env("CLOUDSDK_CONFIG", config.path())
        .env_remove("DEPLOYD_PROJECT")
        .env_remove("DEPLOYD_REGION")
        .env_remove("CLOUDSDK_CORE_PROJECT")
        .env_remove("CLOUDSDK_RUN_REGION")
        .env_remove("CLOUDSDK_ACTIVE_CONFIG_NAME")
        .output_checked();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(
        said.lines().next(),
        Some("checking from-gcloud in project demo-project (from gcloud configuration \"rehearsal\" (core/project)), region europe-west1 (from gcloud configuration \"rehearsal\" (run/region))"),
        "{said}"
    );
    // Without any: the default region, said to be one.
    let out = deployd()
        .args([
            "preflight",
            "--server",
            &format!("127.0.0.1:{}", served.grpc),
            "--service",
            "from-gcloud",
            "--project",
            "demo-project",
        ])
        .env("CLOUDSDK_CONFIG", config.path().join("none"))
        .env_remove("DEPLOYD_REGION")
        .env_remove("CLOUDSDK_RUN_REGION")
        .output_checked();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("checking from-gcloud in project demo-project, region us-central1 (from the default; set --region or `gcloud config set run/region`)"),
        "{said}"
    );
}

/// What a person reads, run by run: success, a failure, an automatic
/// rollback, a rollback that fails, and a cancelled run, from the real
/// binary against `serve --sandbox`, compared with tests/snapshots/cli/
/// after filtering out what changes between runs (times, ports, ids,
/// digests). `UPDATE_SNAPSHOTS=1` rewrites them; review the diff.
#[test]
fn the_human_output_of_each_kind_of_run() {
    let apps = tempfile::tempdir().expect("apps");
    let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let app = |name: &str, status: u16| {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(hello.join("Dockerfile"), dir.join("Dockerfile")).expect("copy");
        let main = std::fs::read_to_string(hello.join("main.py")).expect("main.py");
        std::fs::write(
            dir.join("main.py"),
            main.replace("send_response(200)", &format!("send_response({status})")),
        )
        .expect("write");
        dir.display().to_string()
    };
    let (good, bad) = (app("good", 200), app("bad", 500));
    let empty = apps.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("notes.txt"), "no app here\n").expect("write");
    let empty = empty.display().to_string();
    let port = common::free_port();
    let served = common::serve(
        deployd(),
        &[
            "--sandbox",
            "--sandbox-listen",
            &format!("127.0.0.1:{port}"),
            "--local-source-root",
            &apps.path().display().to_string(),
        ],
    );
    let server = format!("127.0.0.1:{}", served.grpc);
    let run = |args: &[&str]| {
        let out = deployd()
            .args(args)
            .args(["--server", &server])
            .output_checked();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let deploy = |path: &str, service: &str, more: &[&str]| {
        let mut args = vec![
            "deploy",
            "--quiet",
            "--project",
            "demo-project",
            "--region",
            "us-central1",
            path,
            "--service",
            service,
            "--allow-unauthenticated",
            "--health-attempts",
            "2",
        ];
        args.extend_from_slice(more);
        run(&args)
    };
    let faults = |doc: &str| {
        let path = apps.path().join("faults.yaml");
        std::fs::write(&path, doc).expect("write");
        let out = deployd()
            .args(["sandbox", "faults"])
            .arg(&path)
            .args(["--sandbox-url", &format!("http://127.0.0.1:{port}")])
            .output_checked();
        assert!(out.status.success(), "{out:?}");
    };
    let mut snapshots = vec![];

    let (code, out, err) = deploy(&good, "snap", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("  revision: "))
        .expect("revision")
        .to_string();
    snapshots.push(("success", out));

    let (code, out, err) = deploy(&empty, "snap-nothing", &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    snapshots.push(("failure", out));

    let (code, out, err) = deploy(&bad, "snap", &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    snapshots.push(("rollback", out));

    // The first version answers 500 too now: the rollback cannot verify.
    faults(&format!(
        "revisions: [{{service: snap, revision: {first}, error_rate: 1.0}}]\n"
    ));
    let (code, out, err) = deploy(&bad, "snap", &["--env", "V=3"]);
    assert_eq!(code, Some(1), "{out}{err}");
    snapshots.push(("failed-rollback", out));

    // A build that never ends, cancelled from another command.
    faults("builds: [{never_finishes: true}]\n");
    let (code, id, err) = deploy(&good, "snap-cancel", &["--detach"]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, out, _) = run(&["status", &id]);
        if out.contains("build") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, _, err) = run(&["cancel", &id]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["watch", &id]);
    assert_eq!(code, Some(1), "{out}{err}");
    // Whether the build logged its first line before the cancel is a race
    // of the run's load; the snapshot is of what the cancellation says.
    let out: String = out
        .lines()
        .filter(|l| !l.starts_with("    | "))
        .map(|l| format!("{l}\n"))
        .collect();
    snapshots.push(("cancelled", out));

    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/cli");
    let mut differ = vec![];
    for (name, text) in snapshots {
        let text = stable(&text, apps.path());
        let path = dir.join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(&path, &text).expect("write");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != text {
            differ.push(format!(
                "--- {} (UPDATE_SNAPSHOTS=1 to accept)\n{text}",
                path.display()
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// Output with what changes between runs replaced: the apps' directory,
/// times, ports, ids, digests, commits, sizes.
fn stable(text: &str, apps: &std::path::Path) -> String {
    let mut t = text.replace(&apps.display().to_string(), "[APPS]");
    let rules: &[(&str, &str)] = &[
        (r"\d+(\.\d+)? ?ms\b", "[T]"),
        (r"\(\d+(\.\d+)?s\)", "([T])"),
        (r"\bin \d+(\.\d+)?s\b", "in [T]"),
        (r"\d+(\.\d+)?s \(", "[T] ("),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"PORT=\d+", "PORT=[PORT]"),
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[ID]",
        ),
        (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
        (r"\b[0-9a-f]{64}\b", "[HASH]"),
        (r"\(sha256 [0-9a-f]{12}\)", "(sha256 [HASH])"),
        (r"\b[0-9a-f]{40}\b", "[COMMIT]"),
        (r"#\d{10,}", "#[GENERATION]"),
        (
            r"\d+ files \(\d+ bytes\) into \d+ bytes",
            "[N] files ([N] bytes) into [N] bytes",
        ),
        (r"\[\d{2}/\w{3}/\d{4} \d{2}:\d{2}:\d{2}\]", "[DATE]"),
        (
            r"%22\d{4}-\d{2}-\d{2}T\d{2}%3A\d{2}%3A\d{2}Z%22",
            "%22[TIME]%22",
        ),
        (r"(snap(?:-nothing|-cancel)?)-[0-9a-f]{8}\b", "$1-[REV]"),
    ];
    for (pattern, with) in rules {
        t = regex::Regex::new(pattern)
            .expect("pattern")
            .replace_all(&t, *with)
            .into_owned();
    }
    t
}

/// Daemon tuning on a client command that reaches another daemon would be
/// ignored: it is refused, naming the flag. The health check's settings
/// reach the daemon: a body the app does not answer fails the verify.
#[test]
fn client_flags_that_would_be_ignored_are_refused_and_health_flags_apply() {
    let out = deployd()
        .args(["deploy", "--server", "127.0.0.1:1", "--project", "p"])
        .args([&example(), "--service", "s", "--retry-base-delay-ms", "5"])
        .output_checked();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--retry-base-delay-ms tunes the embedded daemon of --sandbox"),
        "{err}"
    );
    let help = deployd().args(["deploy", "--help"]).output_checked();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Embedded daemon (with --sandbox only):"),
        "{help}"
    );
    // Every flag says what it does.
    let bare: Vec<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with("--") && !l.contains("  "))
        .filter(|l| l.split_whitespace().count() <= 2)
        .collect();
    assert!(bare.is_empty(), "flags without a description: {bare:?}");

    let out = deployd()
        .args(["deploy", "--sandbox", &example(), "--service", "body-check"])
        .args(["--allow-unauthenticated", "--health-attempts", "1"])
        .args([
            "--expect-body",
            "not in the answer",
            "--health-header",
            "X-Probe=1",
        ])
        .output_checked();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("not in the answer"), "{said}");
}

/// Against Google (the default backend), remediation commands grant roles
/// to the account of the daemon's Application Default Credentials when
/// they name one: `serve` says which member at start. (Google is not
/// reachable here; nothing is called before the first request.)
#[test]
fn serve_names_the_member_of_its_credentials() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA key");
    let dir = tempfile::tempdir().expect("dir");
    let adc = dir.path().join("sa.json");
    let doc = serde_json::json!({
        "type": "service_account",
        "project_id": "my-proj",
        "private_key_id": "k1",
        "private_key": key.serialize_pem(),
        "client_email": "deployer@my-proj.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&adc, doc.to_string()).expect("write");
    let mut cmd = deployd();
    cmd.env("GOOGLE_APPLICATION_CREDENTIALS", &adc);
    let served = common::serve(cmd, &[]);
    // The ports are bound before the credentials are read: wait for the line.
    let want = "serviceAccount:deployer@my-proj.iam.gserviceaccount.com";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(served.state.path().join("serve.stderr")).expect("log");
        if log.contains(want) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `deploy --image` deploys a prebuilt image as `gcloud run deploy --image`
/// does: no source, analyze or build stage; preflight, deploy and verify
/// run, and the image an earlier deploy built is what serves (its process,
/// on the sandbox). An image never pushed fails as Cloud Run fails, with a
/// remedy about pulling it; a malformed one is refused naming source.image.
#[test]
fn deploy_image_skips_source_analysis_and_build() {
    let examples = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let served = common::serve(deployd(), &["--sandbox", "--local-source-root", &examples]);
    let server = format!("http://127.0.0.1:{}", served.grpc);
    let events = |out: &std::process::Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let out = deploy_to(&server, "from-source", &["--json"]).output_checked();
    assert!(out.status.success());
    let built = events(&out).last().expect("outcome")["outcome"]["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert!(built.contains("@sha256:"), "{built}");

    let image_deploy = |service: &str, image: &str| {
        deployd()
            .args(["deploy", "--server", &server, "--project", "demo-project"])
            .args([
                "--image",
                image,
                "--service",
                service,
                "--allow-unauthenticated",
                "--json",
            ])
            .output_checked()
    };
    let out = image_deploy("prebuilt", &built);
    let lines = events(&out);
    assert!(out.status.success(), "{lines:#?}");
    let stages: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.get("stageStarted").is_some())
        .filter_map(|l| l["stage"].as_str())
        .collect();
    assert_eq!(
        stages,
        ["STAGE_DEPLOY", "STAGE_PREFLIGHT", "STAGE_VERIFY"].into(),
        "{lines:#?}"
    );
    let outcome = &lines.last().expect("outcome")["outcome"];
    assert_eq!(outcome["image"], built.as_str());
    assert_eq!(outcome["buildId"], "");
    let url = outcome["url"].as_str().expect("url");
    assert_eq!(
        reqwest::blocking_get(url),
        "Hello from deployd's example app\n",
        "the built image's own app serves"
    );

    let missing = "us-central1-docker.pkg.dev/demo-project/deployd/never-pushed:v1";
    let out = image_deploy("missing", missing);
    assert_eq!(out.status.code(), Some(1));
    let lines = events(&out);
    let error = &lines.last().expect("outcome")["outcome"]["error"];
    assert_eq!(error["code"], "REVISION_NOT_READY", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains(missing) && m.contains("not found")),
        "{error}"
    );
    assert!(
        error["remediation"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("Cloud Run could not pull the image")),
        "{error}"
    );

    let out = image_deploy("bad", "Not An Image");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("source.image:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
