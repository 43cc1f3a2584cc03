//! The detected plan really starts the app. Where the sandbox's runner
//! rehearses the generated image (pip, npm, Debian's php, nginx for static
//! sites), the fixture is deployed to a sandbox that runs apps and its URL
//! is asked. Lock-file installers the runner does not rehearse (Poetry, uv,
//! Pipenv, pnpm, Yarn, a Vite build stage) run here by the plan's own
//! install and start commands, with PORT set. Packages come from PyPI and
//! the npm registry.

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
    let dirs: Vec<&Path> = bin.into_iter().collect();
    run_natively_with(fixture, &dirs, &[], true)
}

/// The same with `dirs` first on PATH (a virtualenv, a global npm prefix
/// standing in for the image's), extra environment, and optionally without
/// the install commands (when they need a registry this machine cannot
/// reach).
fn run_natively_with(
    fixture: &str,
    dirs: &[&Path],
    env: &[(&str, String)],
    install: bool,
) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&src, work.path());
    let plan = analyze(work.path()).expect("plan");
    let mut path: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    path.push(std::env::var("PATH").unwrap_or_default());
    let path = path.join(":");
    let steps: Vec<&String> = if install {
        plan.install.iter().chain(&plan.build).collect()
    } else {
        vec![]
    };
    for line in steps {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(work.path())
            .env("PATH", &path)
            .envs(env.iter().map(|(k, v)| (k, v)))
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
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
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

/// `GET path` on loopback `port`: the body of a 200 answer (HTTP/1.0,
/// so the server closes the connection; no curl needed).
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = vec![];
    c.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// Python with venv and pip (Debian: python3-venv), or a skip.
fn python_venv_here() -> bool {
    common::outside_tool(
        "python3",
        &["-m", "venv", "--help"],
        "a python3 with venv: apt-get install python3-venv",
    )
}

/// Node, or a skip.
fn node_here() -> bool {
    common::outside_tool("node", &["--version"], "apt-get install nodejs")
}

/// npm, or a skip.
fn npm_here() -> bool {
    common::outside_tool("npm", &["--version"], "apt-get install nodejs npm")
}

/// A fresh virtualenv: the image's site-packages.
fn venv() -> tempfile::TempDir {
    let venv = tempfile::tempdir().expect("tempdir");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv.path())
        .status()
        .expect("python3");
    assert!(made.success());
    venv
}

/// The versions the lock pins are the ones running: the fixtures' apps
/// answer with the Flask version they imported.
fn locked_flask(lock: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(lock),
    )
    .expect("lock");
    let at = text.find("flask").expect("flask in the lock");
    let v = text[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|p| p.matches('.').count() == 2)
        .expect("a version after flask");
    v.to_string()
}

#[test]
fn the_poetry_plan_installs_from_its_lock() {
    if !python_venv_here() {
        return;
    }
    let v = venv();
    // With virtualenvs.create off Poetry installs into the active
    // environment: the virtualenv here, the image's Python there.
    let env = [("VIRTUAL_ENV", v.path().display().to_string())];
    let body = run_natively_with("python-poetry-lock", &[&v.path().join("bin")], &env, true);
    let want = locked_flask("python-poetry-lock/poetry.lock");
    assert_eq!(body, format!("flask {want} from poetry.lock\n"));
}

#[test]
fn the_uv_plan_installs_from_its_lock() {
    if !python_venv_here() {
        return;
    }
    let v = venv();
    let body = run_natively("python-uv-lock", Some(&v.path().join("bin")));
    let want = locked_flask("python-uv-lock/uv.lock");
    assert_eq!(body, format!("flask {want} from uv.lock\n"));
}

#[test]
fn the_pipenv_plan_installs_from_its_lock() {
    if !python_venv_here() {
        return;
    }
    let v = venv();
    let bin = v.path().join("bin");
    // `--system` installs into the interpreter on PATH: the virtualenv's,
    // as in the image it is the image's.
    let env = [
        ("PIPENV_IGNORE_VIRTUALENVS", "1".to_string()),
        ("VIRTUAL_ENV", v.path().display().to_string()),
    ];
    let body = run_natively_with("python-pipenv-lock", &[&bin], &env, true);
    assert_eq!(body, "flask 3.0.3 from Pipfile.lock\n");
}

/// A global npm prefix of the test's own, on PATH first: where the plan's
/// `npm install -g` puts pnpm, and where yarn 1 stands in for the one
/// Node's images ship.
fn npm_prefix() -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let prefix = tempfile::tempdir().expect("tempdir");
    let env = vec![("npm_config_prefix", prefix.path().display().to_string())];
    (prefix, env)
}

#[test]
fn the_pnpm_plan_installs_with_the_major_its_lock_needs() {
    if !npm_here() {
        return;
    }
    let (prefix, env) = npm_prefix();
    let bin = prefix.path().join("bin");
    let body = run_natively_with("node-pnpm-v6", &[&bin], &env, true);
    assert_eq!(body, "hello from pnpm 8 (1m)\n");
    let out = Command::new(bin.join("pnpm"))
        .arg("--version")
        .output()
        .expect("pnpm");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("8."));
}

#[test]
fn the_yarn_classic_plan_installs_from_its_lock() {
    if !npm_here() {
        return;
    }
    let (prefix, env) = npm_prefix();
    let got = Command::new("npm")
        .args(["install", "-g", "--silent", "yarn@1"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .expect("npm");
    assert!(got.success());
    let bin = prefix.path().join("bin");
    let body = run_natively_with("node-yarn-classic", &[&bin], &env, true);
    assert_eq!(body, "hello from yarn 1 (1m)\n");
}

#[test]
fn a_literal_port_is_where_the_app_is_reached() {
    if !node_here() {
        return;
    }
    // The plan's port is what Cloud Run would send traffic to; the app
    // ignores $PORT, so the test probes the plan's port.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-literal-port");
    let plan = analyze(&src).expect("plan");
    assert_eq!(plan.port, 3000);
    if get(3000, "/").is_some() {
        eprintln!("port 3000 is taken on this machine: the run is skipped");
        return;
    }
    let child = Command::new("sh")
        .args(["-c", &format!("exec {}", plan.start)])
        .process_group(0)
        .current_dir(&src)
        .env("PORT", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let _running = ChildGuard::group(child);
    assert_eq!(
        get_when_up(3000, "/", "node-literal-port"),
        "hello on a fixed port\n"
    );
}

#[test]
fn a_heroku_php_plan_runs_on_debians_php() {
    if !common::outside_tool("php", &["--version"], "apt-get install php-cli composer")
        || !common::outside_tool("composer", &["--version"], "apt-get install composer")
    {
        return;
    }
    // Heroku's apache script became PHP's server on the same docroot; its
    // packages are on Packagist, which this machine cannot reach, so only
    // the start command runs. The front controller answers every path.
    let body = run_natively_with("php-heroku-procfile", &[], &[], false);
    assert_eq!(body, "hello from php at /\n");
}

#[test]
fn a_vite_build_is_served_from_its_output() {
    if !common::outside_tool("nginx", &["-v"], "apt-get install nginx") || !npm_here() {
        return;
    }
    // The assets stage's own commands, as the image's Node stage runs them.
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vite-spa"),
        work.path(),
    );
    let plan = analyze(work.path()).expect("plan");
    let assets = plan.assets.as_ref().expect("an assets stage");
    for line in assets.install.iter().chain(&assets.build) {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(work.path())
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "`{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let index = serve_static_site(work.path());
    // Vite rewrote the entry into a hashed bundle that nginx serves too.
    assert!(index.contains("/assets/"), "{index}");
}

/// Serves the plan's static output with the generated nginx config and
/// start command; returns the index it served.
fn serve_static_site(src: &Path) -> String {
    let plan = analyze(src).expect("plan");
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
    if let Some(asset) = index
        .split('"')
        .find(|p| p.starts_with("/assets/") && p.ends_with(".js"))
    {
        assert!(get(port, asset).is_some_and(|js| !js.is_empty()), "{asset}");
    }
    index
}

/// The sandbox's own runner, as `deploy --sandbox` uses it: the fixture is
/// deployed to a sandbox that runs apps, in a run directory of the test's
/// own; returns the harness (dropping it stops the processes), the
/// directory, the events and the outcome.
async fn rehearse(
    src: &Path,
    service: &str,
    memory: &str,
) -> (
    common::Harness,
    tempfile::TempDir,
    Vec<deployd::api::proto::Event>,
    deployd::api::proto::Outcome,
) {
    let run_root = tempfile::tempdir().expect("run root");
    let config = deployd::sandbox::SandboxConfig {
        run_apps: true,
        run_root: Some(run_root.path().to_path_buf()),
        native_startup: Duration::from_secs(60),
        ..deployd::sandbox::SandboxConfig::fast()
    };
    let h = common::Harness::start_with(config).await;
    let mut req = common::deploy_request(service, src);
    if let Some(r) = req.runtime.as_mut() {
        r.memory = memory.to_string();
    }
    let (events, outcome) = common::deploy(&h, req).await;
    (h, run_root, events, outcome)
}

async fn get_async(url: &str) -> Result<(u16, String), String> {
    let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

fn said(events: &[deployd::api::proto::Event]) -> String {
    format!("{events:#?}")
}

/// The generated static-site image, run by the sandbox: nginx with the
/// generated config, its image paths (/etc/nginx, /usr/share/nginx/html,
/// /tmp) mapped into the revision's directory. Client-side routes fall
/// back to the index, and nginx stops with the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_serves_a_static_site_through_nginx() {
    if !common::outside_tool("nginx", &["-v"], "apt-get install nginx") {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/static-dist");
    let (h, root, events, o) = rehearse(&src, "static-native", "").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    assert!(
        said(&events).contains("runs the app natively"),
        "{}",
        said(&events)
    );
    let index = std::fs::read_to_string(src.join("dist/index.html")).expect("index");
    assert_eq!(get_async(&o.url).await, Ok((200, index.clone())));
    assert_eq!(
        get_async(&format!("{}/some/client/route", o.url)).await,
        Ok((200, index))
    );
    assert!(!common::processes_under(root.path()).is_empty());
    drop(h);
    common::assert_none_left_under(root.path());
}

/// The generated Node image, run by the sandbox: `npm ci` in the
/// revision's directory, then its start command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_runs_the_express_app() {
    if !npm_here() {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-express-npm");
    let (h, root, events, o) = rehearse(&src, "express-native", "").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    assert_eq!(
        get_async(&o.url).await,
        Ok((200, "hello from express\n".to_string()))
    );
    drop(h);
    common::assert_none_left_under(root.path());
}

/// The generated PHP image on Debian's php.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_runs_php_on_debians_php() {
    if !common::outside_tool("php", &["--version"], "apt-get install php-cli") {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/php-plain");
    let (h, root, events, o) = rehearse(&src, "php-native", "").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    assert_eq!(get_async(&o.url).await, Ok((200, "hello".to_string())));
    drop(h);
    common::assert_none_left_under(root.path());
}

/// A revision's memory limit holds: an app that grows past its 256Mi is
/// killed, with the line Cloud Run logs for that, in the revision's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_past_its_memory_limit_is_stopped_as_cloud_run_does() {
    if !python_venv_here() {
        return;
    }
    let app = tempfile::tempdir().expect("app");
    std::fs::write(
        app.path().join("Dockerfile"),
        "FROM python:3.12-slim\nWORKDIR /app\nCOPY main.py .\nCMD [\"python\", \"main.py\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(
        app.path().join("main.py"),
        r#"import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
held = []
class App(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/grow":
            # Written, so resident: 32 MiB at a time, up to 1 GiB.
            for _ in range(32):
                held.append(b"x" * (32 << 20))
                time.sleep(0.05)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
HTTPServer(("", int(os.environ["PORT"])), App).serve_forever()
"#,
    )
    .expect("main.py");
    let (h, root, events, o) = rehearse(app.path(), "memory-native", "256Mi").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    let grown = get_async(&format!("{}/grow", o.url)).await;
    assert!(
        !matches!(grown, Ok((200, _))),
        "the app grew past its limit and still answered: {grown:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = h
            .sandbox
            .log_lines(deployd::sandbox::DEFAULT_PROJECT, "memory-native")
            .into_iter()
            .map(|(_, text)| text)
            .find(|text| text.starts_with("Memory limit of"));
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no memory-limit line in the logs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        line.starts_with("Memory limit of 256 MiB exceeded with "),
        "{line}"
    );
    assert!(common::processes_under(root.path()).is_empty());
    drop(h);
    common::assert_none_left_under(root.path());
}

/// A stack this machine cannot run (a Go binary a builder stage makes)
/// gets the stand-in, and the deploy's events say so: it never pretends
/// the app answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_that_cannot_run_here_says_the_stand_in_answers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go-cmd");
    let (h, root, events, o) = rehearse(&src, "go-stand-in", "").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    let text = said(&events);
    assert!(
        text.contains("cannot run on this machine (its command uses /server")
            && text.contains("a stand-in answers in its place, not the app"),
        "{text}"
    );
    assert!(common::processes_under(root.path()).is_empty());
    drop(h);
}

/// The generated Flask image, run by the sandbox: a virtualenv, the
/// plan's pip installs (gunicorn), and its start command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_runs_the_flask_app() {
    if !python_venv_here() {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python-flask");
    let (h, root, events, o) = rehearse(&src, "flask-native", "").await;
    assert!(o.success, "{o:?}\n{}", said(&events));
    assert!(
        said(&events).contains("runs the app natively"),
        "{}",
        said(&events)
    );
    assert_eq!(
        get_async(&o.url).await,
        Ok((200, "hello from flask\n".to_string()))
    );
    drop(h);
    common::assert_none_left_under(root.path());
}
