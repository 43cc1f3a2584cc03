//! A git server on loopback: Git's own `git http-backend` (smart HTTP)
//! behind a small CGI bridge, so tests fetch over the same transport users
//! do, through a URL the daemon's source policy must allow.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncWriteExt;

pub struct GitServer {
    pub addr: SocketAddr,
    root: tempfile::TempDir,
    /// Requests served so far: a refused URL must leave this at zero.
    requests: Arc<AtomicUsize>,
    /// Milliseconds each request waits before it is served.
    delay_ms: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GitServer {
    pub async fn start() -> GitServer {
        let root = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind git server");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(cgi).with_state(Cgi {
            root: Arc::new(root.path().to_path_buf()),
            requests: requests.clone(),
            delay_ms: delay_ms.clone(),
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitServer {
            addr,
            root,
            requests,
            delay_ms,
            task,
        }
    }

    /// Every request waits this long first (a slow git host).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Serves a bare copy of the repository at `work_tree` as `NAME.git`;
    /// returns its URL. Publishing again replaces it.
    pub fn publish(&self, name: &str, work_tree: &Path) -> String {
        let bare = self.root.path().join(format!("{name}.git"));
        let _ = std::fs::remove_dir_all(&bare);
        run_git(
            self.root.path(),
            &["clone", "--quiet", "--bare", "--no-local"],
            &[work_tree, &bare],
        );
        // Fetching a commit by id needs this on the serving side (GitHub
        // and GitLab allow it).
        run_git(
            &bare,
            &["config", "uploadpack.allowAnySHA1InWant", "true"],
            &[],
        );
        self.url(name)
    }

    /// An empty repository (no commits) as `NAME.git`.
    pub fn publish_empty(&self, name: &str) -> String {
        let bare = self.root.path().join(format!("{name}.git"));
        run_git(self.root.path(), &["init", "--quiet", "--bare"], &[&bare]);
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn run_git(dir: &Path, args: &[&str], paths: &[&Path]) {
    let out = std::process::Command::new("git")
        .args(args)
        .args(paths)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone)]
struct Cgi {
    root: Arc<PathBuf>,
    requests: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicUsize>,
}

/// One request through `git http-backend`, as a CGI server would run it.
async fn cgi(
    State(Cgi {
        root,
        requests,
        delay_ms,
    }): State<Cgi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    requests.fetch_add(1, Ordering::SeqCst);
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay as u64)).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root.as_path())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let failed = |why: String| {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(why))
            .unwrap_or_default()
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("git http-backend: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o.stdout,
        Err(e) => return failed(format!("git http-backend: {e}")),
    };
    // CGI output: header lines, a blank line, then the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        });
    let Some((head_end, body_start)) = split else {
        return failed("git http-backend wrote no headers".into());
    };
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&out[..head_end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            resp = resp.status(code);
        } else {
            resp = resp.header(k.trim(), v);
        }
    }
    resp.body(Body::from(out[body_start..].to_vec()))
        .unwrap_or_default()
}

/// A git work tree made by the test, with helpers to commit and tag.
pub struct Repo(tempfile::TempDir);

impl Repo {
    pub fn new() -> Repo {
        let r = Repo(tempfile::tempdir().expect("tempdir"));
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(self.0.path())
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Copies `tests/fixtures/NAME` to `into` inside the tree.
    pub fn copy(&self, fixture_name: &str, into: &str) {
        super::copy_dir(&super::fixture(fixture_name), &self.0.path().join(into));
    }

    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-qm", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
}
