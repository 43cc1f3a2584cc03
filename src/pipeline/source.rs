//! The source stage: a local directory, or a git repository cloned shallowly
//! through the git CLI into a directory the run owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::error::StageError;
use super::model::SourceSpec;

/// A checked-out source. Holds the clone's temporary directory, if any, so
/// it lives exactly as long as the run.
pub struct Workspace {
    pub dir: PathBuf,
    pub commit: Option<String>,
    _clone: Option<tempfile::TempDir>,
}

const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn fetch(spec: &SourceSpec, work_root: &Path) -> Result<Workspace, StageError> {
    match spec {
        SourceSpec::LocalPath(p) => {
            let err = |reason: String| StageError::Source {
                location: p.display().to_string(),
                reason,
            };
            let dir = tokio::fs::canonicalize(p)
                .await
                .map_err(|e| err(e.to_string()))?;
            if !dir.is_dir() {
                return Err(err("not a directory".into()));
            }
            let commit = git(&dir, &["rev-parse", "HEAD"]).await.ok();
            Ok(Workspace {
                dir,
                commit,
                _clone: None,
            })
        }
        SourceSpec::Git { url, git_ref } => clone(url, git_ref.as_deref(), work_root).await,
    }
}

async fn clone(
    url: &str,
    git_ref: Option<&str>,
    work_root: &Path,
) -> Result<Workspace, StageError> {
    let err = |reason: String| StageError::Source {
        location: match git_ref {
            Some(r) => format!("{url}@{r}"),
            None => url.to_string(),
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
    // init + fetch of one ref works for branches, tags and commit shas alike.
    git(&dir, &["init", "--quiet"]).await.map_err(err)?;
    git(&dir, &["remote", "add", "origin", url])
        .await
        .map_err(err)?;
    let refspec = git_ref.unwrap_or("HEAD");
    git(
        &dir,
        &["fetch", "--quiet", "--depth", "1", "origin", refspec],
    )
    .await
    .map_err(err)?;
    git(&dir, &["checkout", "--quiet", "FETCH_HEAD"])
        .await
        .map_err(err)?;
    let commit = git(&dir, &["rev-parse", "HEAD"]).await.map_err(err)?;
    Ok(Workspace {
        dir,
        commit: Some(commit),
        _clone: Some(tmp),
    })
}

/// Runs git with hooks and prompts off; returns trimmed stdout.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        CLONE_TIMEOUT,
        Command::new("git")
            .arg("-c")
            .arg("core.hooksPath=/dev/null")
            .arg("-c")
            .arg("protocol.file.allow=always")
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("git {} timed out", args[0]))?
    .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("git {} failed: {}", args[0], stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
