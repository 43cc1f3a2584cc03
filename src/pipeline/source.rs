//! The source stage: a local directory (only under the roots the daemon
//! allows), or a git repository cloned shallowly through the git CLI (no
//! hooks, no submodules, a time and a size limit, credentials from git's
//! usual mechanisms and never echoed), optionally narrowed to a
//! subdirectory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::error::StageError;
use super::model::SourceSpec;

/// Where local sources may come from. Empty: local sources are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    pub local_roots: Vec<PathBuf>,
    /// A checkout larger than this is refused.
    pub max_checkout_bytes: u64,
    /// Each git command's time limit.
    pub git_timeout: Duration,
}

impl SourcePolicy {
    pub fn new(local_roots: Vec<PathBuf>) -> Self {
        Self {
            local_roots,
            max_checkout_bytes: 2 * 1024 * 1024 * 1024,
            git_timeout: Duration::from_secs(300),
        }
    }
}

/// A checked-out source. Holds the clone's temporary directory, if any, so
/// it lives exactly as long as the run.
pub struct Workspace {
    pub dir: PathBuf,
    pub commit: Option<String>,
    _clone: Option<tempfile::TempDir>,
}

pub async fn fetch(
    spec: &SourceSpec,
    subdirectory: Option<&str>,
    policy: &SourcePolicy,
    work_root: &Path,
) -> Result<Workspace, StageError> {
    let mut ws = match spec {
        SourceSpec::LocalPath(p) => local(p, policy).await?,
        SourceSpec::Git { url, git_ref } => {
            clone(url, git_ref.as_deref(), policy, work_root).await?
        }
    };
    if let Some(sub) = subdirectory {
        let dir = ws.dir.join(sub);
        // The subdirectory must be a real directory inside the source, not a
        // symlink leading out of it.
        let real = tokio::fs::canonicalize(&dir).await.ok();
        let root = tokio::fs::canonicalize(&ws.dir)
            .await
            .unwrap_or_else(|_| ws.dir.clone());
        match real {
            Some(r) if r.is_dir() && r.starts_with(&root) => ws.dir = r,
            _ => {
                return Err(StageError::Source {
                    location: format!("{}/{sub}", ws.dir.display()),
                    reason: "the subdirectory does not exist in the source".into(),
                })
            }
        }
    }
    Ok(ws)
}

async fn local(p: &Path, policy: &SourcePolicy) -> Result<Workspace, StageError> {
    let err = |reason: String| StageError::Source {
        location: p.display().to_string(),
        reason,
    };
    if policy.local_roots.is_empty() {
        return Err(StageError::SourceNotAllowed {
            location: p.display().to_string(),
            reason: "this daemon does not accept local paths; send a git URL, or start it with --local-source-root DIR".into(),
        });
    }
    let dir = tokio::fs::canonicalize(p)
        .await
        .map_err(|e| err(e.to_string()))?;
    let allowed = policy
        .local_roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|root| dir.starts_with(root));
    if !allowed {
        return Err(StageError::SourceNotAllowed {
            location: p.display().to_string(),
            reason: format!(
                "it is outside the allowed roots ({})",
                policy
                    .local_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if !dir.is_dir() {
        return Err(err("not a directory".into()));
    }
    let commit = git(&dir, &["rev-parse", "HEAD"], Duration::from_secs(10))
        .await
        .ok();
    Ok(Workspace {
        dir,
        commit,
        _clone: None,
    })
}

/// The URL as it may be shown: user and password removed.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn clone(
    url: &str,
    git_ref: Option<&str>,
    policy: &SourcePolicy,
    work_root: &Path,
) -> Result<Workspace, StageError> {
    let shown = redact(url);
    let err = |reason: String| StageError::Source {
        location: match git_ref {
            Some(r) => format!("{shown}@{r}"),
            None => shown.clone(),
        },
        reason,
    };
    tokio::fs::create_dir_all(work_root)
        .await
        .map_err(|e| err(format!("cannot create work dir: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("clone-")
        .tempdir_in(work_root)
        .map_err(|e| err(format!("cannot create clone dir: {e}")))?;
    let dir = tmp.path().to_path_buf();
    let t = policy.git_timeout;
    // init + fetch of one ref works for branches, tags and commit shas alike.
    git(&dir, &["init", "--quiet"], t)
        .await
        .map_err(|e| err(explain(&e, git_ref)))?;
    git(&dir, &["remote", "add", "origin", url], t)
        .await
        .map_err(|e| err(explain(&e, git_ref)))?;
    let refspec = git_ref.unwrap_or("HEAD");
    git(
        &dir,
        &[
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-recurse-submodules",
            "origin",
            refspec,
        ],
        t,
    )
    .await
    .map_err(|e| err(explain(&e, git_ref)))?;
    git(&dir, &["checkout", "--quiet", "FETCH_HEAD"], t)
        .await
        .map_err(|e| err(explain(&e, git_ref)))?;
    let commit = git(&dir, &["rev-parse", "HEAD"], t)
        .await
        .map_err(|e| err(explain(&e, git_ref)))?;
    let size = dir_size(&dir);
    if size > policy.max_checkout_bytes {
        return Err(err(format!(
            "the checkout is {} MiB, over the {} MiB limit",
            size / (1024 * 1024),
            policy.max_checkout_bytes / (1024 * 1024)
        )));
    }
    Ok(Workspace {
        dir,
        commit: Some(commit),
        _clone: Some(tmp),
    })
}

/// Bytes of regular files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// git's own words, turned into the reason a person needs. git reports all
/// of these with exit code 128, so its message is the only signal there is.
fn explain(stderr: &str, git_ref: Option<&str>) -> String {
    let s = stderr.to_ascii_lowercase();
    let reason = if s.contains("could not resolve host")
        || s.contains("name or service not known")
        || s.contains("temporary failure in name resolution")
    {
        "the git host does not resolve (unknown host)".to_string()
    } else if s.contains("couldn't find remote ref") && git_ref.is_none() {
        "the repository is empty: it has no commits to deploy".to_string()
    } else if s.contains("couldn't find remote ref")
        || s.contains("not our ref")
        || s.contains("invalid refspec")
        || s.contains("unadvertised object")
    {
        format!(
            "ref {} not found in the repository",
            git_ref.unwrap_or("HEAD")
        )
    } else if s.contains("does not appear to be a git repository")
        || s.contains("not a git repository")
        || s.contains("repository not found")
    {
        "not a git repository (or no access to it)".to_string()
    } else if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("permission denied")
    {
        "access denied: configure git credentials for this host on the daemon".to_string()
    } else if s.contains("timed out") {
        "git timed out".to_string()
    } else {
        return stderr.trim().to_string();
    };
    reason
}

/// Runs git with hooks, prompts and submodules off; returns trimmed stdout.
async fn git(dir: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let out = tokio::time::timeout(
        timeout,
        Command::new("git")
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.file.allow=always",
                "-c",
                "submodule.recurse=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("git {} timed out after {timeout:?}", args[0]))?
    .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("git {} failed: {}", args[0], stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            redact("https://user:s3cret@github.com/acme/app.git"),
            "https://github.com/acme/app.git"
        );
        assert_eq!(
            redact("https://github.com/acme/app.git"),
            "https://github.com/acme/app.git"
        );
    }

    #[test]
    fn git_failures_are_explained() {
        let cases = [
            ("fatal: unable to access 'https://nope.invalid/x/': Could not resolve host: nope.invalid", Some("main"), "unknown host"),
            ("fatal: couldn't find remote ref nope", Some("nope"), "ref nope not found"),
            ("fatal: couldn't find remote ref HEAD", None, "repository is empty"),
            ("fatal: '/tmp/x' does not appear to be a git repository", None, "not a git repository"),
        ];
        for (stderr, r, want) in cases {
            assert!(explain(stderr, r).contains(want), "{stderr}");
        }
    }
}
