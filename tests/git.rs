//! Git sources through the real binary with its shipped defaults: only the
//! flag that lets the loopback test server in is set, nothing that tunes
//! timeouts or limits. (A derived `Default` once gave every git command a
//! zero time limit, and every test passed because none used the defaults.)

mod common;

use std::path::Path;
use std::process::Output;

use common::{GitServer, Repo};

/// The real binary with no DEPLOYD_* tuning from the environment.
async fn deployd(args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DEPLOYD_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("deployd runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn published_app(srv: &GitServer) -> (String, String) {
    let repo = Repo::new();
    repo.copy("python-flask", "");
    let commit = repo.commit("v1");
    (srv.publish("app", repo.path()), commit)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_url_deploys_with_the_shipped_defaults() {
    let srv = GitServer::start().await;
    let (url, commit) = published_app(&srv).await;
    let out = deployd(&[
        "deploy",
        "--sandbox",
        "--source-private-hosts",
        "127.0.0.1",
        "--git-url",
        &url,
        "--service",
        "from-git",
        "--allow-unauthenticated",
    ])
    .await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("(commit {commit})")), "{all}");
    assert!(all.contains("SUCCESS: http://127.0.0.1:"), "{all}");
    assert!(srv.requests() > 0);
}

/// The same through `deployd serve` and a client process, at a tag.
#[tokio::test(flavor = "multi_thread")]
async fn serve_fetches_a_git_url_at_a_ref() {
    let srv = GitServer::start().await;
    let repo = Repo::new();
    repo.copy("python-flask", "");
    let tagged = repo.commit("v1");
    repo.git(&["tag", "v1.0.0"]);
    std::fs::write(repo.path().join("VERSION"), "2").expect("write");
    repo.commit("v2");
    let url = srv.publish("tagged", repo.path());

    // Blocks this worker briefly; the git server runs on the other.
    let served = common::serve(
        std::process::Command::new(env!("CARGO_BIN_EXE_deployd")),
        &["--sandbox", "--source-private-hosts", "127.0.0.1"],
    );
    let grpc = served.grpc;
    let out = deployd(&[
        "deploy",
        "--server",
        &format!("http://127.0.0.1:{grpc}"),
        "--project",
        "demo-project",
        "--git-url",
        &url,
        "--git-ref",
        "v1.0.0",
        "--service",
        "git-served",
        "--allow-unauthenticated",
    ])
    .await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("(commit {tagged})")), "{all}");
    drop(served);
}

/// `--git-ref=--upload-pack=CMD` once ran CMD. It is refused before
/// anything runs, and nothing reaches the git server.
#[tokio::test(flavor = "multi_thread")]
async fn a_ref_cannot_become_a_git_option() {
    let srv = GitServer::start().await;
    let (url, _) = published_app(&srv).await;
    let marker = tempfile::tempdir().expect("tempdir");
    let pwned = marker.path().join("pwned");
    for git_ref in [
        format!("--upload-pack=touch {}", pwned.display()),
        format!("-c core.sshCommand=touch {}", pwned.display()),
        "main..other".to_string(),
    ] {
        let out = deployd(&[
            "deploy",
            "--sandbox",
            "--source-private-hosts",
            "127.0.0.1",
            "--git-url",
            &url,
            &format!("--git-ref={git_ref}"),
            "--service",
            "injected",
        ])
        .await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(
            all.contains("InvalidArgument") && all.contains("source.git_ref"),
            "{all}"
        );
    }
    assert!(!Path::new(&pwned).exists(), "the ref ran a command");
    assert_eq!(srv.requests(), 0);
}

/// URLs that would bypass the local-source roots or reach the daemon's own
/// network: refused as invalid, or by policy, with no request made.
#[tokio::test(flavor = "multi_thread")]
async fn git_urls_cannot_bypass_the_source_policy() {
    let srv = GitServer::start().await;
    let (url, _) = published_app(&srv).await;
    let bare = tempfile::tempdir().expect("tempdir");
    for (git_url, code, want) in [
        (
            format!("file://{}", bare.path().display()),
            2,
            "source.git_url",
        ),
        (bare.path().display().to_string(), 2, "source.git_url"),
        ("ext::sh -c id".to_string(), 2, "source.git_url"),
        // Loopback, without --source-private-hosts: the shipped default.
        (url.clone(), 1, "SOURCE_NOT_ALLOWED"),
        (url.replace("http://", "https://"), 1, "a loopback address"),
        (
            "https://169.254.169.254/repo.git".to_string(),
            1,
            "link-local",
        ),
        (
            "ssh://git@127.0.0.1/app.git".to_string(),
            1,
            "ssh git URLs are off",
        ),
    ] {
        let out = deployd(&[
            "deploy",
            "--sandbox",
            "--git-url",
            &git_url,
            "--service",
            "bypass",
        ])
        .await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(code), "{git_url}: {all}");
        assert!(all.contains(want), "{git_url}: {all}");
    }
    assert_eq!(srv.requests(), 0);
}

/// The Analyze RPC through `deployd analyze --server`, against `serve` with
/// its shipped defaults: a git URL at a ref is cloned and analyzed by the
/// daemon (the plan names the resolved commit), a local path under an
/// allowed root gives the plan local analysis gives, and one outside the
/// roots is answered with SOURCE_NOT_ALLOWED, not refused. Nothing deploys.
#[tokio::test(flavor = "multi_thread")]
async fn analyze_asks_the_daemon_for_a_plan() {
    let srv = GitServer::start().await;
    let (url, commit) = published_app(&srv).await;
    let fixtures = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let served = common::serve(
        std::process::Command::new(env!("CARGO_BIN_EXE_deployd")),
        &[
            "--sandbox",
            "--source-private-hosts",
            "127.0.0.1",
            "--local-source-root",
            &fixtures,
        ],
    );
    let server = format!("http://127.0.0.1:{}", served.grpc);

    let out = deployd(&["analyze", "--server", &server, "--git-url", &url, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON answer");
    assert_eq!(r["sourceCommit"], commit.as_str(), "{r}");
    assert_eq!(r["plan"]["language"], "python", "{r}");
    assert_eq!(r["plan"]["framework"], "flask", "{r}");
    assert!(
        r["plan"]["dockerfile"]
            .as_str()
            .is_some_and(|d| d.contains("FROM python:")),
        "{r}"
    );
    assert!(r.get("error").is_none(), "{r}");

    // The daemon's plan of a local path is the local analysis' plan.
    let dir = format!("{fixtures}/python-django-whitenoise");
    let remote = deployd(&["analyze", "--server", &server, &dir, "--json"]).await;
    let local = deployd(&["analyze", &dir, "--json"]).await;
    assert!(remote.status.success(), "{}", text(&remote));
    let remote: serde_json::Value = serde_json::from_slice(&remote.stdout).expect("JSON");
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).expect("JSON");
    assert_eq!(remote["plan"], local, "the daemon's plan is the local one");

    // Outside the daemon's roots: an answer saying so, exit 1.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let out = deployd(&[
        "analyze",
        "--server",
        &server,
        &elsewhere.path().display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("[SOURCE_NOT_ALLOWED]"),
        "{}",
        text(&out)
    );
    drop(served);
}
