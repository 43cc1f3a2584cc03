//! The detected plan really starts the app: for the fixtures whose
//! toolchains this machine has (Python and Node), run the plan's install and
//! start commands natively, as the generated Dockerfile would, with PORT set,
//! and probe the app. Packages come from PyPI and the npm registry.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployd::pipeline::analyze::analyze;

mod common;
use common::{copy_dir, free_port, signal};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // The server leads its own process group (npm and gunicorn have
        // children); end the whole group.
        let _ = signal(self.0.id(), libc::SIGTERM, true);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs with the plan's commands, starts with its start command, and
/// returns the body of `GET /`.
fn run_natively(fixture: &str, bin: Option<&Path>) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&src, work.path());
    let plan = analyze(work.path()).expect("plan");
    // Tools installed for this run (a virtualenv) come first.
    let path = match bin {
        Some(b) => format!(
            "{}:{}",
            b.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    for line in plan.install.iter().chain(&plan.build) {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(work.path())
            .env("PATH", &path)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{fixture}: `{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_port();
    let child = Command::new("sh")
        .args(["-c", &format!("exec {}", plan.start)])
        .process_group(0)
        .stdin(Stdio::null())
        .current_dir(work.path())
        .env("PATH", &path)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let _running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(o) = body {
            return String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{fixture}: `{}` never answered on PORT={port}",
            plan.start
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_python_flask_plan_starts_the_app() {
    // A virtualenv stands in for the image's site-packages.
    let venv = tempfile::tempdir().expect("tempdir");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv.path())
        .status()
        .expect("python3");
    assert!(made.success());
    let body = run_natively("python-flask", Some(&venv.path().join("bin")));
    assert_eq!(body, "hello from flask\n");
}

#[test]
fn the_node_express_plan_starts_the_app() {
    let body = run_natively("node-express-npm", None);
    assert_eq!(body, "hello from express\n");
}
