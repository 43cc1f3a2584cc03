//! The source stage: a local directory (only under the roots the daemon
//! allows), or a git repository cloned shallowly through the git CLI (no
//! hooks, no submodules, a time and a size limit, credentials from git's
//! usual mechanisms and never echoed), optionally narrowed to a
//! subdirectory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::addr::{check_addresses, host_matches};
use super::error::StageError;
use super::model::SourceSpec;
use super::rules::shown;

pub const DEFAULT_MAX_CHECKOUT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the git host's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where sources may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Directories local sources may come from; empty: local sources are
    /// refused (git URLs only).
    pub local_roots: Vec<PathBuf>,
    /// A checkout larger than this is refused.
    pub max_checkout_bytes: u64,
    /// Each git command's time limit.
    pub git_timeout: Duration,
    /// Git hosts that may resolve to loopback or private addresses, and
    /// the only ones reached over plain `http://` (`*.corp.example` allows
    /// subdomains). Link-local addresses are refused whatever this says.
    pub private_hosts: Vec<String>,
    /// Whether `ssh://` and `user@host:path` URLs are accepted.
    pub allow_ssh: bool,
}

impl Default for SourcePolicy {
    /// What `deployd serve` runs with: git URLs over https to public hosts.
    fn default() -> Self {
        Self {
            local_roots: vec![],
            max_checkout_bytes: DEFAULT_MAX_CHECKOUT_BYTES,
            git_timeout: DEFAULT_GIT_TIMEOUT,
            private_hosts: vec![],
            allow_ssh: false,
        }
    }
}

impl SourcePolicy {
    pub fn new(local_roots: Vec<PathBuf>) -> Self {
        Self {
            local_roots,
            ..Self::default()
        }
    }

    fn private_ok(&self, host: &str) -> bool {
        self.private_hosts.iter().any(|p| host_matches(p, host))
    }
}

/// How a git URL is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitTransport {
    Https,
    Http,
    Ssh,
}

/// A git URL that is syntactically safe to hand to git: one of the
/// transports above, a host that is a name or an address, and nothing git
/// could read as an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    pub transport: GitTransport,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && (host.parse::<IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
}

impl GitUrl {
    pub fn parse(s: &str) -> Result<GitUrl, String> {
        let refuse = |why: &str| Err(format!("{} {why}", shown(s)));
        if s.len() > 2048 {
            return refuse("is over 2048 bytes");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return refuse("contains whitespace or control characters");
        }
        if s.starts_with('-') {
            return refuse("starts with '-'");
        }
        const ONLY: &str = "is not a git URL deployd fetches: use https://HOST/PATH (or, where the daemon allows them, ssh://, USER@HOST:PATH, or http:// to a private host); local paths, file:// and other transports are refused";
        if let Some((scheme, _)) = s.split_once("://") {
            let transport = match scheme {
                "https" => GitTransport::Https,
                "http" => GitTransport::Http,
                "ssh" => GitTransport::Ssh,
                _ => return refuse(ONLY),
            };
            let u = url::Url::parse(s).map_err(|e| format!("{} is not a URL ({e})", shown(s)))?;
            let host = u
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if !host_ok(&host) || u.username().starts_with('-') {
                return refuse("has no usable host");
            }
            if u.path().len() <= 1 {
                return refuse("names no repository");
            }
            let port = u.port_or_known_default().unwrap_or(22);
            return Ok(GitUrl {
                transport,
                host,
                port,
            });
        }
        // scp-like syntax: [user@]host:path, where no '/' comes before the ':'.
        let Some((authority, path)) = s.split_once(':') else {
            return refuse(ONLY);
        };
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (u, h),
            None => ("", authority),
        };
        let looks_scp = !authority.contains('/') && !path.is_empty() && !path.starts_with('-');
        if !looks_scp || !host_ok(host) || host.contains(':') || user.starts_with('-') {
            return refuse(ONLY);
        }
        Ok(GitUrl {
            transport: GitTransport::Ssh,
            host: host.to_string(),
            port: 22,
        })
    }
}

/// A checked-out source. Holds the clone's temporary directory, if any, so
/// it lives exactly as long as the run.
pub struct Workspace {
    pub dir: PathBuf,
    pub commit: Option<String>,
    /// The commit's committer time, in Unix seconds: where lead time for
    /// changes starts.
    pub commit_time: Option<i64>,
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
        // The run skips the source stage for an image; nothing to fetch.
        SourceSpec::Image(image) => {
            return Err(StageError::Source {
                location: image.clone(),
                reason: "a prebuilt image has no source to fetch".into(),
            })
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
        let location = format!("{}/{sub}", ws.dir.display());
        match real {
            Some(r) if r.is_dir() && r.starts_with(&root) => ws.dir = r,
            Some(r) if !r.starts_with(&root) => {
                return Err(StageError::SourceNotAllowed {
                    location,
                    reason: "the subdirectory leads outside the source (through a symlink)".into(),
                })
            }
            Some(_) => {
                return Err(StageError::Source {
                    location,
                    reason: "the subdirectory is not a directory".into(),
                })
            }
            None => {
                return Err(StageError::Source {
                    location,
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
    // Most local sources are not checkouts, and a process per deploy was
    // a quarter of the daemon's CPU: read HEAD, and ask git only for a
    // layout the reader does not know.
    let commit = match read_head(&dir) {
        Head::NotARepository => None,
        Head::Commit(c) => Some(c),
        Head::Unknown => git(&dir, &[], &["rev-parse", "HEAD"], Duration::from_secs(10))
            .await
            .ok(),
    };
    let commit_time = match &commit {
        Some(c) => commit_time(&dir, &[], c, Duration::from_secs(10)).await,
        None => None,
    };
    Ok(Workspace {
        dir,
        commit,
        commit_time,
        _clone: None,
    })
}

/// Committer times already read, by commit id (a commit's time never
/// changes): deploying one checkout again asks git nothing.
static COMMIT_TIMES: std::sync::Mutex<Option<std::collections::HashMap<String, i64>>> =
    std::sync::Mutex::new(None);
const COMMIT_TIMES_KEPT: usize = 4096;

/// The committer time of `commit` (an object id, never an option) in the
/// repository holding `dir`; `None` when git cannot tell (a checkout git
/// refuses to read, an object missing from a shallow clone).
async fn commit_time(dir: &Path, config: &[String], commit: &str, t: Duration) -> Option<i64> {
    if !is_object_id(commit) {
        return None;
    }
    let cached = COMMIT_TIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(commit).copied());
    if cached.is_some() {
        return cached;
    }
    // A checkout's own config must not make `show` verify a signature
    // (which runs the program gpg.program names).
    let mut config = config.to_vec();
    config.push("log.showSignature=false".into());
    let out = git(dir, &config, &["show", "-s", "--format=%ct", commit], t)
        .await
        .ok()?;
    let seconds: i64 = out.trim().parse().ok()?;
    let mut guard = COMMIT_TIMES.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(Default::default);
    if map.len() >= COMMIT_TIMES_KEPT {
        map.clear();
    }
    map.insert(commit.to_string(), seconds);
    Some(seconds)
}

/// What `.git` says HEAD is.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    NotARepository,
    Commit(String),
    /// A layout this reader does not follow (reftable, odd refs).
    Unknown,
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// HEAD's commit of the checkout holding `dir`, read from its files: the
/// `.git` directory (or a worktree's `gitdir:` file), loose refs, then
/// `packed-refs`.
fn read_head(dir: &Path) -> Head {
    let Some(dotgit) = dir.ancestors().map(|d| d.join(".git")).find(|g| g.exists()) else {
        return Head::NotARepository;
    };
    let git_dir = if dotgit.is_file() {
        let Ok(text) = std::fs::read_to_string(&dotgit) else {
            return Head::Unknown;
        };
        match text.trim().strip_prefix("gitdir:") {
            Some(p) => {
                let p = Path::new(p.trim());
                match dotgit.parent() {
                    Some(base) if p.is_relative() => base.join(p),
                    _ => p.to_path_buf(),
                }
            }
            None => return Head::Unknown,
        }
    } else {
        dotgit
    };
    // A worktree's refs live in the common directory.
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) else {
        return Head::Unknown;
    };
    let head = head.trim();
    if is_object_id(head) {
        return Head::Commit(head.to_string());
    }
    let Some(name) = head.strip_prefix("ref: ") else {
        return Head::Unknown;
    };
    if name.contains("..") || !name.starts_with("refs/") {
        return Head::Unknown;
    }
    for base in [&git_dir, &common] {
        if let Ok(id) = std::fs::read_to_string(base.join(name)) {
            let id = id.trim();
            return if is_object_id(id) {
                Head::Commit(id.to_string())
            } else {
                Head::Unknown
            };
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).unwrap_or_default();
    for line in packed.lines() {
        if let Some((id, r)) = line.split_once(' ') {
            if r == name && is_object_id(id) {
                return Head::Commit(id.to_string());
            }
        }
    }
    // A branch with no commit yet, or refs kept some other way.
    Head::Unknown
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

/// Why a git URL is not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The host has no address (now): the source is unavailable.
    Unresolved(String),
    /// The policy forbids it: a transport that is off, or an address in
    /// the daemon's own network.
    NotAllowed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unresolved(why) | Refusal::NotAllowed(why) => f.write_str(why),
        }
    }
}

/// The addresses git may connect to for `url`, or why it may not fetch it
/// at all: a transport the daemon has off, or a host that resolves into
/// the daemon's own network without being named in `private_hosts`.
async fn authorize(url: &GitUrl, policy: &SourcePolicy) -> Result<Vec<SocketAddr>, Refusal> {
    let host = &url.host;
    match url.transport {
        GitTransport::Ssh if !policy.allow_ssh => {
            return Err(Refusal::NotAllowed(
                "ssh git URLs are off on this daemon (start it with --source-allow-ssh), or use https://"
                    .into(),
            ))
        }
        GitTransport::Http if !policy.private_ok(host) => {
            return Err(Refusal::NotAllowed(format!(
                "plain http:// is only used for hosts named in --source-private-hosts, and {host} is not one; use https://"
            )))
        }
        _ => {}
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, url.port)],
        Err(_) => tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), url.port)),
        )
        .await
        .map_err(|_| {
            Refusal::Unresolved(format!(
                "the git host {host} did not resolve within {RESOLVE_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| {
            Refusal::Unresolved(format!(
                "the git host {host} does not resolve (unknown host: {e})"
            ))
        })?
        .collect(),
    };
    if addrs.is_empty() {
        return Err(Refusal::Unresolved(format!(
            "the git host {host} does not resolve (unknown host)"
        )));
    }
    check_addresses(host, &addrs, policy.private_ok(host)).map_err(|why| {
        Refusal::NotAllowed(format!(
            "{why}; name the host in --source-private-hosts if the git server is meant to be reached there"
        ))
    })?;
    Ok(addrs)
}

/// `-c` settings of every git command: no hooks, no fsmonitor, no
/// submodules, only the URL's own transport, no redirects to other hosts
/// and, over http(s), connections only to the addresses just approved.
fn clone_config(url: &GitUrl, addrs: &[SocketAddr]) -> Vec<String> {
    let mut c: Vec<String> = vec![
        "protocol.allow=never".into(),
        "http.followRedirects=false".into(),
    ];
    c.push(match url.transport {
        GitTransport::Https => "protocol.https.allow=always".into(),
        GitTransport::Http => "protocol.http.allow=always".into(),
        GitTransport::Ssh => "protocol.ssh.allow=always".into(),
    });
    if url.transport != GitTransport::Ssh {
        let pinned: Vec<String> = addrs
            .iter()
            .map(|a| match a.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            })
            .collect();
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        c.push(format!(
            "http.curloptResolve={host}:{}:{}",
            url.port,
            pinned.join(",")
        ));
    }
    c
}

async fn clone(
    url: &str,
    git_ref: Option<&str>,
    policy: &SourcePolicy,
    work_root: &Path,
) -> Result<Workspace, StageError> {
    let shown_url = redact(url);
    let location = match git_ref {
        Some(r) => format!("{shown_url}@{r}"),
        None => shown_url.clone(),
    };
    let err = |reason: String| StageError::Source {
        location: location.clone(),
        reason,
    };
    // The request was validated, so this only fails for a caller of the
    // pipeline that skipped validation.
    let parsed = GitUrl::parse(url).map_err(err)?;
    if let Some(r) = git_ref {
        super::rules::git_ref(r).map_err(err)?;
    }
    let addrs = authorize(&parsed, policy).await.map_err(|r| match r {
        Refusal::Unresolved(reason) => err(reason),
        Refusal::NotAllowed(reason) => StageError::SourceNotAllowed {
            location: location.clone(),
            reason,
        },
    })?;
    let config = clone_config(&parsed, &addrs);
    tokio::fs::create_dir_all(work_root)
        .await
        .map_err(|e| err(format!("cannot create work dir: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("clone-")
        .tempdir_in(work_root)
        .map_err(|e| err(format!("cannot create clone dir: {e}")))?;
    let dir = tmp.path().to_path_buf();
    let t = policy.git_timeout;
    let explained = |e: String| err(explain(&e, git_ref));
    // init + fetch of one ref works for branches, tags and commit shas
    // alike. Every value from the request comes after `--`, so git never
    // reads one as an option.
    git(&dir, &config, &["init", "--quiet"], t)
        .await
        .map_err(explained)?;
    git(&dir, &config, &["remote", "add", "--", "origin", url], t)
        .await
        .map_err(explained)?;
    let refspec = git_ref.unwrap_or("HEAD");
    git(
        &dir,
        &config,
        &[
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-recurse-submodules",
            "--no-tags",
            "--",
            "origin",
            refspec,
        ],
        t,
    )
    .await
    .map_err(explained)?;
    git(&dir, &config, &["checkout", "--quiet", "FETCH_HEAD"], t)
        .await
        .map_err(explained)?;
    let commit = git(&dir, &config, &["rev-parse", "HEAD"], t)
        .await
        .map_err(explained)?;
    let commit_time = commit_time(&dir, &config, &commit, t).await;
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
        commit_time,
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
        || (s.contains("repository '") && s.contains("' not found"))
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

/// Runs git with hooks, fsmonitor, prompts and submodules off, plus
/// `config` (`-c` settings); returns trimmed stdout.
async fn git(
    dir: &Path,
    config: &[String],
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "submodule.recurse=false",
    ]);
    for c in config {
        cmd.arg("-c").arg(c);
    }
    let out = tokio::time::timeout(
        timeout,
        cmd.args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            // An ssh that asks for a password would wait for the timeout.
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .stdin(std::process::Stdio::null())
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

    fn sh_git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// HEAD read from files agrees with `git rev-parse HEAD` in every
    /// layout a checkout has: loose and packed refs, detached, a
    /// subdirectory, a worktree; and a plain directory is no repository.
    #[test]
    fn head_is_read_as_git_reads_it() {
        let repo = tempfile::tempdir().expect("dir");
        let r = repo.path();
        sh_git(r, &["init", "-q"]);
        assert_eq!(read_head(r), Head::Unknown, "no commit yet");
        std::fs::create_dir_all(r.join("sub/dir")).expect("mkdir");
        std::fs::write(r.join("sub/dir/f"), "x").expect("write");
        sh_git(r, &["add", "."]);
        sh_git(r, &["commit", "-qm", "one"]);
        let first = sh_git(r, &["rev-parse", "HEAD"]);
        assert_eq!(read_head(r), Head::Commit(first.clone()));
        assert_eq!(read_head(&r.join("sub/dir")), Head::Commit(first.clone()));
        sh_git(r, &["pack-refs", "--all"]);
        assert_eq!(read_head(r), Head::Commit(first.clone()), "packed");
        sh_git(r, &["commit", "-q", "--allow-empty", "-m", "two"]);
        let second = sh_git(r, &["rev-parse", "HEAD"]);
        sh_git(r, &["checkout", "-q", "--detach", &first]);
        assert_eq!(read_head(r), Head::Commit(first.clone()), "detached");
        let wt = tempfile::tempdir().expect("dir");
        let wt_path = wt.path().join("wt");
        sh_git(
            r,
            &[
                "worktree",
                "add",
                "-q",
                wt_path.to_str().expect("utf8"),
                "main",
            ],
        );
        assert_eq!(read_head(&wt_path), Head::Commit(second), "worktree");
        let plain = tempfile::tempdir().expect("dir");
        assert_eq!(read_head(plain.path()), Head::NotARepository);
    }

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
    fn only_safe_git_urls_parse() {
        let ok = [
            ("https://github.com/acme/app.git", GitTransport::Https, 443),
            ("http://git.corp:8080/app", GitTransport::Http, 8080),
            ("ssh://git@github.com/acme/app.git", GitTransport::Ssh, 22),
            ("git@github.com:acme/app.git", GitTransport::Ssh, 22),
            ("https://[::1]:9/x", GitTransport::Https, 9),
        ];
        for (url, transport, port) in ok {
            let u = GitUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((u.transport, u.port), (transport, port), "{url}");
        }
        for bad in [
            "file:///etc",
            "/srv/repo.git",
            "./repo",
            "../repo",
            "ext::sh -c touch% /tmp/x",
            "git://github.com/acme/app",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x:y",
            "ssh://-oProxyCommand=x/y",
            "ssh://-u@host/y",
            "https://github.com/acme/app\r\nX: y",
            "https://github.com",
            "https://exa mple.com/x",
        ] {
            assert!(GitUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_policy_decides_transports_and_addresses() {
        let policy = SourcePolicy::default();
        let url = |s: &str| GitUrl::parse(s).expect("parses");
        for (u, want) in [
            ("ssh://git@127.0.0.1/x", "ssh git URLs are off"),
            ("http://127.0.0.1/x", "plain http:// is only used"),
            ("https://127.0.0.1/x", "a loopback address"),
            ("https://10.1.2.3/x", "a private address"),
            ("https://169.254.169.254/x", "link-local"),
            ("https://[::1]/x", "a loopback address"),
        ] {
            let e = authorize(&url(u), &policy).await.expect_err(u);
            assert!(matches!(e, Refusal::NotAllowed(_)), "{u}: {e:?}");
            assert!(e.to_string().contains(want), "{u}: {e}");
        }
        let private = SourcePolicy {
            private_hosts: vec!["127.0.0.1".into(), "169.254.169.254".into()],
            ..SourcePolicy::default()
        };
        assert!(authorize(&url("http://127.0.0.1:9/x"), &private)
            .await
            .is_ok());
        // Link-local stays refused whatever the list says.
        assert!(authorize(&url("https://169.254.169.254/x"), &private)
            .await
            .is_err());
    }

    #[test]
    fn the_defaults_are_usable() {
        let p = SourcePolicy::default();
        assert_eq!(p.git_timeout, DEFAULT_GIT_TIMEOUT);
        assert_eq!(p.max_checkout_bytes, DEFAULT_MAX_CHECKOUT_BYTES);
        assert!(p.git_timeout >= Duration::from_secs(60));
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
