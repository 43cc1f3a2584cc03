//! The detected plan really starts the app: for the fixtures whose
//! toolchains this machine has (Python and Node), run the plan's install and
//! start commands natively, as the generated Dockerfile would, with PORT set,
//! and probe the app. Packages come from PyPI and the npm registry.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deployd::analysis::analyze;
use deployd::analysis::dockerfile::render;

mod common;
use common::{copy_dir, free_port, ChildGuard};

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
    let _running = ChildGuard::group(child);
    get_when_up(port, "/", &format!("{fixture}: `{}`", plan.start))
}

/// `GET path` on the port, retried until the server is up (60 s at most).
fn get_when_up(port: u16, path: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(body) = get(port, path) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never answered on PORT={port}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn get(port: u16, path: &str) -> Option<String> {
    Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
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

#[test]
fn the_static_site_plan_serves_on_the_port_it_is_given() {
    if !common::outside_tool("nginx", &["-v"], "apt-get install nginx") {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/static-dist");
    let plan = analyze(&src).expect("plan");
    let generated = render(&plan, false).expect("generated");
    let dockerfile = generated.dockerfile().expect("Dockerfile");
    // The image's start command, exactly as generated...
    let cmd: Vec<String> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .map(|json| serde_json::from_str(json).expect("exec-form CMD"))
        .expect("CMD");
    assert_eq!(cmd[..2], ["sh", "-c"]);
    let template = &generated
        .files
        .iter()
        .find(|(name, _)| name == ".deployd/nginx.conf.template")
        .expect("nginx template")
        .1;
    // ...with the image's paths moved into a directory of this test.
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path();
    // nginx's workers drop root privileges and must read the site.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir(root.join("tmp")).expect("tmp");
    copy_dir(
        &src.join(plan.static_dir.as_deref().unwrap_or(".")),
        &root.join("html"),
    );
    // /tmp first: the test's own directory is under it.
    let moved = |text: &str| {
        text.replace("/tmp/", &format!("{}/tmp/", root.display()))
            .replace(
                "/etc/nginx/nginx.conf.template",
                &format!("{}/nginx.conf.template", root.display()),
            )
            .replace("/usr/share/nginx/html", &format!("{}/html", root.display()))
    };
    std::fs::write(root.join("nginx.conf.template"), moved(template)).expect("template");
    let port = free_port();
    let child = Command::new("sh")
        .args(["-c", &moved(&cmd[2])])
        .env("PORT", port.to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let _running = ChildGuard::group(child);
    let index = std::fs::read_to_string(root.join("html/index.html")).expect("index");
    assert_eq!(get_when_up(port, "/", "the static site"), index);
    // Client-side routes fall back to the app's index.
    assert_eq!(
        get(port, "/some/client/route").as_deref(),
        Some(index.as_str())
    );
    let rendered = std::fs::read_to_string(root.join("tmp/nginx.conf")).expect("rendered");
    assert!(rendered.contains(&format!("listen {port};")), "{rendered}");
}
