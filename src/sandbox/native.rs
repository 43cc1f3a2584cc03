//! The sandbox runs what was built, where this machine can: a revision's
//! build context is unpacked into a private directory, its dependencies
//! installed there (a virtualenv for `requirements.txt`, `node_modules` for
//! `package.json`), and the image's command (the Dockerfile's last stage:
//! WORKDIR, ENV, ENTRYPOINT, CMD) started natively with `PORT` and the
//! revision's env, in a clean environment. A revision is ready once its
//! process listens on `PORT`. A rehearsal, not isolation: the process runs
//! as the sandbox's user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::world::LoggedLine;

/// Lines of a process's output kept until they reach the log.
const LINES_KEPT: usize = 2000;

/// How a revision's container would start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub argv: Vec<String>,
    /// The image's ENV, in order.
    pub env: Vec<(String, String)>,
    /// Dependency installs, each a program and its arguments, run in the
    /// directory before the start.
    pub install: Vec<Vec<String>>,
    /// RUN steps the sandbox neither runs nor may skip (a build, another
    /// package manager): the image's app would not be what runs here.
    pub unsupported: Vec<String>,
    /// COPYs from the context to an absolute path outside WORKDIR (an
    /// nginx config, a site under /usr/share): source and destination.
    /// The revision's directory holds them under `.image/`, and the
    /// command's paths are mapped there.
    pub image_copies: Vec<(String, String)>,
}

/// RUN steps that change nothing the app needs in the revision's
/// directory (users, permissions, caches): skipped.
const SKIPPABLE: &[&str] = &[
    "useradd",
    "adduser",
    "groupadd",
    "addgroup",
    "chown",
    "chmod",
    "mkdir",
    "rm ",
    "ln ",
    "echo ",
    "true",
    "set ",
    "apt-get clean",
    "rm -rf",
];

/// A Dockerfile instruction's arguments, exec form (JSON) or shell form.
fn command(args: &str) -> Vec<String> {
    let args = args.trim();
    if args.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(args) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), args.to_string()]
}

/// `ENV A=1 B="2 3"` or the legacy `ENV A 1`.
fn env_pairs(args: &str) -> Vec<(String, String)> {
    let args = args.trim();
    if !args.contains('=')
        || args
            .split_whitespace()
            .next()
            .is_some_and(|w| !w.contains('='))
    {
        return match args.split_once(char::is_whitespace) {
            Some((k, v)) => vec![(k.to_string(), v.trim().to_string())],
            None => vec![],
        };
    }
    let mut out = vec![];
    let mut rest = args;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().to_string();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            },
            None => match after.split_once(char::is_whitespace) {
                Some((v, n)) => (v.to_string(), n),
                None => (after.to_string(), ""),
            },
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

/// The plan of the image built from `files` (its Dockerfile's last
/// stage); `Err` says why it cannot run here.
pub fn plan(files: &[(String, Vec<u8>)]) -> Result<Plan, String> {
    let Some((_, dockerfile)) = files.iter().find(|(n, _)| n == "Dockerfile") else {
        return Err("the build context has no Dockerfile".into());
    };
    let text = String::from_utf8_lossy(dockerfile);
    let mut env = vec![];
    let mut entrypoint: Vec<String> = vec![];
    let mut cmd: Vec<String> = vec![];
    let mut run_steps: Vec<String> = vec![];
    let mut copies: Vec<(String, String)> = vec![];
    let mut workdir = String::new();
    for ins in super::dockerfile::instructions(&text) {
        let (keyword, args) = ins
            .text
            .split_once(char::is_whitespace)
            .unwrap_or((ins.text.as_str(), ""));
        match keyword.to_ascii_uppercase().as_str() {
            // A new stage starts afresh: only the last one runs.
            "FROM" => {
                env.clear();
                entrypoint.clear();
                cmd.clear();
                run_steps.clear();
                copies.clear();
                workdir.clear();
            }
            "COPY" | "ADD" => {
                let words = match serde_json::from_str::<Vec<String>>(args.trim()) {
                    Ok(v) => v,
                    Err(_) => args.split_whitespace().map(str::to_string).collect(),
                };
                // A copy out of another stage is that stage's output, which
                // the sandbox does not build.
                if words.iter().any(|w| w.starts_with("--from")) {
                    continue;
                }
                let paths: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
                if let Some((dest, sources)) = paths.split_last() {
                    let outside = dest.starts_with('/')
                        && (workdir.is_empty() || !dest.starts_with(&format!("{workdir}/")))
                        && dest.trim_end_matches('/') != workdir;
                    if outside {
                        copies.extend(sources.iter().map(|s| (s.to_string(), dest.to_string())));
                    }
                }
            }
            "RUN" => run_steps.push(args.to_string()),
            "WORKDIR" => {
                let w = args.trim().trim_end_matches('/');
                workdir = if w.starts_with('/') {
                    w.to_string()
                } else {
                    format!("{workdir}/{w}")
                };
            }
            "ENV" => env.extend(env_pairs(args)),
            "ENTRYPOINT" => entrypoint = command(args),
            "CMD" => cmd = command(args),
            _ => {}
        }
    }
    // The revision's directory stands for WORKDIR: paths under it become
    // relative ones.
    let argv: Vec<String> = entrypoint
        .into_iter()
        .chain(cmd)
        .map(|a| match workdir.as_str() {
            "" => a,
            w => a.replace(&format!("{w}/"), "./"),
        })
        .collect();
    if argv.is_empty() {
        return Err("the image has no ENTRYPOINT or CMD".into());
    }
    let install = installs(&run_steps, files);
    let unsupported = run_steps
        .iter()
        .flat_map(|r| r.split("&&"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .filter(|p| !INSTALLERS.iter().chain(SKIPPABLE).any(|i| p.starts_with(i)))
        .collect();
    Ok(Plan {
        argv,
        env,
        install,
        unsupported,
        image_copies: copies,
    })
}

impl Plan {
    /// The image paths the revision's directory stands in for: each
    /// absolute COPY destination, and `/tmp` (private to the revision, so
    /// two revisions' pid and config files do not meet).
    fn image_prefixes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .image_copies
            .iter()
            .map(|(_, d)| d.trim_end_matches('/').to_string())
            .filter(|d| !d.is_empty())
            .chain(std::iter::once("/tmp".to_string()))
            .collect();
        // The longest first, so a file inside a copied directory maps once.
        out.sort_by_key(|p| std::cmp::Reverse(p.len()));
        out.dedup();
        out
    }

    /// Whether `path` is one the image has through its COPYs or `/tmp`.
    fn image_has(&self, path: &str) -> bool {
        self.image_prefixes()
            .iter()
            .any(|p| path == p || path.starts_with(&format!("{p}/")))
    }
}

/// `text` with every image path the plan maps moved under `root`: one
/// pass, whole path components only (`/tmpfoo` stays).
fn map_image_paths(text: &str, prefixes: &[String], root: &Path) -> String {
    let root = root.display().to_string();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    'scan: while i < text.len() {
        if bytes[i] == b'/' && (i == 0 || !is_path_char(bytes[i - 1])) {
            for p in prefixes {
                let end = i + p.len();
                if text[i..].starts_with(p.as_str())
                    && bytes
                        .get(end)
                        .is_none_or(|c| *c == b'/' || !is_path_char(*c))
                {
                    out.push_str(&root);
                    out.push_str(p);
                    i = end;
                    continue 'scan;
                }
            }
        }
        let ch = text[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/')
}

/// Commands that install dependencies, which the sandbox runs in the
/// revision's directory (other RUN steps, such as creating users or
/// installing system packages, it does not).
const INSTALLERS: &[&str] = &[
    "pip install",
    "pip3 install",
    "python -m pip install",
    "python3 -m pip install",
    "npm ci",
    "npm install",
    "composer install",
];

/// The dependency installs of the image's last stage: its RUN steps'
/// install commands (each `&&` part on its own), through a virtualenv for
/// pip; without any, `requirements.txt` or `package.json`'s dependencies.
fn installs(run_steps: &[String], files: &[(String, Vec<u8>)]) -> Vec<Vec<String>> {
    let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    let venv = vec!["python3".into(), "-m".into(), "venv".into(), ".venv".into()];
    let parts: Vec<String> = run_steps
        .iter()
        .flat_map(|r| r.split("&&"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| INSTALLERS.iter().any(|i| p.starts_with(i)))
        .collect();
    let mut out = vec![];
    if !parts.is_empty() {
        if parts.iter().any(|p| p.contains("pip")) {
            out.push(venv);
        }
        out.extend(parts.iter().map(|p| sh(p)));
        return out;
    }
    let has = |name: &str| files.iter().any(|(n, _)| n == name);
    if has("requirements.txt") {
        out.push(venv);
        out.push(sh(
            "pip install --quiet --disable-pip-version-check -r requirements.txt",
        ));
    }
    let package_has_deps = files
        .iter()
        .find(|(n, _)| n == "package.json")
        .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
        .is_some_and(|p| p["dependencies"].as_object().is_some_and(|d| !d.is_empty()));
    if package_has_deps {
        out.push(sh("npm install --omit=dev --no-audit --no-fund"));
    }
    out
}

/// Where `program` is: in the directory's virtualenv or node_modules, or
/// on the sandbox's PATH (`python` meaning `python3` where only that
/// exists, as in the python images).
fn resolve(program: &str, dir: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let p = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            dir.join(program)
        };
        return p.is_file().then_some(p);
    }
    let mut dirs = vec![dir.join(".venv/bin"), dir.join("node_modules/.bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let names: Vec<&str> = match program {
        "python" => vec!["python", "python3"],
        other => vec![other],
    };
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Why the plan cannot run on this machine, if it cannot: its program is
/// neither on the sandbox's PATH, nor in the build context, nor something
/// its dependency install could provide (a console script of a package).
/// Such a revision gets the stand-in instead of failing.
pub fn unrunnable(plan: &Plan, files: &[(String, Vec<u8>)]) -> Option<String> {
    if let Some(step) = plan.unsupported.first() {
        return Some(format!(
            "its Dockerfile runs `{step}`, which the sandbox does not rehearse"
        ));
    }
    // A shell form runs its script's first word.
    let program = match plan.argv.as_slice() {
        [sh, flag, script, ..] if sh.ends_with("/sh") && flag == "-c" => script
            .split_whitespace()
            // `exec` and `VAR=value` come before the program.
            .find(|w| *w != "exec" && !w.contains('='))
            .unwrap_or("sh")
            .to_string(),
        [p, ..] => p.clone(),
        [] => return Some("the image has no command".into()),
    };
    for step in &plan.install {
        let tool = match step.as_slice() {
            [_, _, script] => script.split_whitespace().next().unwrap_or_default(),
            other => other.first().map(String::as_str).unwrap_or_default(),
        };
        // pip comes with the virtualenv.
        let tool = if tool.starts_with("pip") {
            "python3"
        } else {
            tool
        };
        if resolve(tool, Path::new("/nonexistent")).is_none() {
            return Some(format!(
                "installing its dependencies needs {tool}, which this machine lacks"
            ));
        }
    }
    // A path of the image (a config file a COPY put in /etc, a binary a
    // builder stage made) that this machine lacks.
    let image_path = plan
        .argv
        .iter()
        .flat_map(|a| a.split(|c: char| c.is_whitespace() || c == '=' || c == '"' || c == '\''))
        .filter(|w| w.starts_with('/') && w.len() > 1)
        .find(|w| !Path::new(w).exists() && !plan.image_has(w));
    if let Some(path) = image_path {
        return Some(format!(
            "its command uses {path}, a path of the image that this machine does not have"
        ));
    }
    if program.contains('/') {
        let name = program.rsplit('/').next().unwrap_or_default();
        let in_context = files
            .iter()
            .any(|(n, _)| n == name || n.ends_with(&format!("/{name}")));
        return (!in_context && !Path::new(&program).is_file())
            .then(|| format!("its command {program} is built by a Dockerfile step, which the sandbox does not run"));
    }
    let installable = !plan.install.is_empty();
    (resolve(&program, Path::new("/nonexistent")).is_none() && !installable)
        .then(|| format!("its command {program} is not on this machine"))
}

/// Cloud Run's default memory limit per instance.
pub const DEFAULT_MEMORY: u64 = 512 * 1024 * 1024;

/// A Kubernetes quantity as Cloud Run takes memory limits: `512Mi`, `1Gi`,
/// `2G`, `100000000`.
pub fn memory_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let digits = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let n: u64 = q[..digits].parse().ok()?;
    let unit: u64 = match &q[digits..] {
        "" => 1,
        "k" | "K" => 1000,
        "Ki" => 1 << 10,
        "M" => 1000 * 1000,
        "Mi" => 1 << 20,
        "G" => 1000 * 1000 * 1000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// What a revision's process gets: its port, memory, time to listen, and
/// where its directory goes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub port: u16,
    pub memory: u64,
    pub startup: Duration,
    pub root: Option<PathBuf>,
}

/// A revision's process; stopped (with its process group) when dropped.
pub struct Process {
    child: tokio::process::Child,
    pub port: u16,
    /// Its output, until moved to the log.
    pub lines: Arc<Mutex<Vec<LoggedLine>>>,
    /// Stops its memory watch.
    watch: tokio_util::sync::CancellationToken,
    /// The write end of its guardian's stdin: when the sandbox dies, even
    /// by kill -9, the pipe closes and the guardian kills the group.
    _guardian: Option<tokio::process::ChildStdin>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.watch.cancel();
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            // The group: a shell's or npm's children go too.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

impl Process {
    /// Output lines not yet logged.
    pub fn take_lines(&self) -> Vec<LoggedLine> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Why a revision did not start: Cloud Run's message, and what the
/// process printed.
#[derive(Debug)]
pub struct NotStarted {
    pub message: String,
    pub lines: Vec<LoggedLine>,
}

fn keep(lines: &Arc<Mutex<Vec<LoggedLine>>>, stream: &str, text: String) {
    let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
    if l.len() < LINES_KEPT {
        l.push(LoggedLine {
            stream: stream.into(),
            severity: if stream == "stderr" { "ERROR" } else { "INFO" }.into(),
            text,
        });
    }
}

fn pipe_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    stream: &'static str,
    lines: Arc<Mutex<Vec<LoggedLine>>>,
) {
    tokio::spawn(async move {
        let mut r = BufReader::new(reader).lines();
        while let Ok(Some(line)) = r.next_line().await {
            keep(&lines, stream, line);
        }
    });
}

/// Unpacks, installs and starts the plan with `env` (PORT and the
/// revision's); ready once it listens on PORT within `startup`.
pub async fn start(
    files: Arc<super::world::Unpacked>,
    plan: Plan,
    limits: Limits,
    env: Vec<(String, String)>,
) -> Result<Process, NotStarted> {
    let Limits {
        port,
        memory,
        startup,
        root,
    } = limits;
    let lines: Arc<Mutex<Vec<LoggedLine>>> = Arc::default();
    let fail = |message: String, lines: &Arc<Mutex<Vec<LoggedLine>>>| NotStarted {
        message,
        lines: std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner())),
    };
    let root = root.unwrap_or_else(std::env::temp_dir);
    sweep(&root);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(|e| fail(format!("the sandbox cannot make a directory: {e}"), &lines))?;
    for (name, bytes) in &files.files {
        // Names come from the archive: nothing may lead outside.
        if name.split('/').any(|s| s == "..") || name.starts_with('/') {
            continue;
        }
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, bytes);
    }
    // The image's own paths (COPY destinations, /tmp) live in `.image/`;
    // the command and the copied config files name them there.
    let image_root = dir.path().join(".image");
    let prefixes = plan.image_prefixes();
    let _ = std::fs::create_dir_all(image_root.join("tmp"));
    for (src, dest) in &plan.image_copies {
        let src = src.trim_start_matches("./").trim_end_matches('/');
        let whole = src.is_empty() || src == ".";
        let single = files.files.iter().any(|(n, _)| n == src);
        for (name, bytes) in &files.files {
            if name.split('/').any(|s| s == "..") || name.starts_with('/') {
                continue;
            }
            let target = if single && name == src {
                if dest.ends_with('/') {
                    format!("{dest}{}", name.rsplit('/').next().unwrap_or(name))
                } else {
                    dest.clone()
                }
            } else if whole {
                format!("{}/{name}", dest.trim_end_matches('/'))
            } else if let Some(rest) = name.strip_prefix(&format!("{src}/")) {
                format!("{}/{rest}", dest.trim_end_matches('/'))
            } else {
                continue;
            };
            let path = image_root.join(target.trim_start_matches('/'));
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            // A config file copied on its own names image paths too.
            let bytes = match (single, std::str::from_utf8(bytes)) {
                (true, Ok(text)) => map_image_paths(text, &prefixes, &image_root).into_bytes(),
                _ => bytes.clone(),
            };
            let _ = std::fs::write(&path, bytes);
        }
    }
    // Servers that drop privileges (nginx's workers) must reach their files
    // through the directory; it stays unlistable to others.
    let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711));
    let plan = Plan {
        argv: plan
            .argv
            .iter()
            .map(|a| map_image_paths(a, &prefixes, &image_root))
            .collect(),
        ..plan
    };
    let path_var = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        dir.path().join(".venv/bin").display(),
        dir.path().join("node_modules/.bin").display()
    );
    let base_env = |cmd: &mut tokio::process::Command| {
        cmd.env_clear()
            .env("PATH", &path_var)
            .env("HOME", dir.path())
            .env("LANG", "C.UTF-8")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null());
    };
    for step in &plan.install {
        let Some(program) = resolve(&step[0], dir.path()) else {
            return Err(fail(format!("{} is not on this machine", step[0]), &lines));
        };
        let mut cmd = tokio::process::Command::new(program);
        base_env(&mut cmd);
        cmd.args(&step[1..]).kill_on_drop(true);
        let out = cmd
            .output()
            .await
            .map_err(|e| fail(format!("running {}: {e}", step.join(" ")), &lines))?;
        for l in String::from_utf8_lossy(&out.stderr).lines() {
            keep(&lines, "stderr", l.to_string());
        }
        if !out.status.success() {
            return Err(fail(
                format!(
                    "installing dependencies failed: {} exited {}",
                    step.join(" "),
                    out.status
                ),
                &lines,
            ));
        }
    }
    let Some(program) = resolve(&plan.argv[0], dir.path()) else {
        return Err(fail(
            format!(
                "the container's command {:?} is not on this machine",
                plan.argv[0]
            ),
            &lines,
        ));
    };
    // Through util-linux's setpriv where there is one, so the process dies
    // with the sandbox even when the sandbox is killed and no destructor
    // runs (PR_SET_PDEATHSIG; this crate has no unsafe code to set it).
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let mut cmd = match setpriv {
        Some(sp) => {
            let mut c = tokio::process::Command::new(sp);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&program);
            c
        }
        None => tokio::process::Command::new(&program),
    };
    base_env(&mut cmd);
    cmd.envs(plan.env.iter().cloned())
        .envs(env)
        .env("PORT", port.to_string())
        .args(&plan.argv[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("starting {:?}: {e}", plan.argv), &lines))?;
    if let Some(o) = child.stdout.take() {
        pipe_lines(o, "stdout", lines.clone());
    }
    if let Some(e) = child.stderr.take() {
        pipe_lines(e, "stderr", lines.clone());
    }
    let deadline = Instant::now() + startup;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let watch = tokio_util::sync::CancellationToken::new();
            let mut guardian = None;
            if let Some(pid) = child.id() {
                tokio::spawn(watch_memory(pid, memory, lines.clone(), watch.clone()));
                guardian = guard_group(pid);
            }
            return Ok(Process {
                child,
                port,
                lines,
                watch,
                _guardian: guardian,
                _dir: dir,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Let the readers catch the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(fail(format!("the container exited ({status})"), &lines));
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(fail("the container did not listen in time".into(), &lines));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shell in the process group `pgid` that waits on a pipe from the
/// sandbox and kills the group when it closes. setpriv's death signal
/// reaches only the process it starts, not the workers that one forks
/// (gunicorn's, nginx's), which would outlive a sandbox killed with -9.
fn guard_group(pgid: u32) -> Option<tokio::process::ChildStdin> {
    let mut guardian = tokio::process::Command::new("/bin/sh")
        .args([
            "-c",
            "read _closed; kill -s KILL -- -\"$0\"",
            &pgid.to_string(),
        ])
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(pgid as i32)
        .spawn()
        .ok()?;
    guardian.stdin.take()
}

/// Revision directories are named `{DIR_PREFIX}{sandbox pid}-…`.
const DIR_PREFIX: &str = "deployd-sandbox-revision-";

/// Removes revision directories left by sandboxes that died without
/// cleaning up (kill -9): those whose owner process is gone.
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(owner) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How often a process's memory is read.
const MEMORY_EVERY: Duration = Duration::from_millis(250);

/// Stops the process group of `pid` once its resident memory passes
/// `limit`, with the line Cloud Run logs for an instance it kills so.
async fn watch_memory(
    pid: u32,
    limit: u64,
    lines: Arc<Mutex<Vec<LoggedLine>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let page = rustix::param::page_size() as u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MEMORY_EVERY) => {}
        }
        let Some(used) = group_pages(pid).map(|p| p * page) else {
            return;
        };
        if used > limit {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let mib = |b: u64| b / (1 << 20);
            let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
            l.push(LoggedLine {
                stream: "varlog%2Fsystem".into(),
                severity: "ERROR".into(),
                text: format!(
                    "Memory limit of {} MiB exceeded with {} MiB used. Consider increasing the memory limit, see https://cloud.google.com/run/docs/configuring/memory-limits",
                    mib(limit),
                    mib(used)
                ),
            });
            return;
        }
    }
}

/// Resident pages of every process in the group `pgid`; `None` once the
/// group is gone.
fn group_pages(pgid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = e.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let group = after
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse::<u32>().ok());
        if group != Some(pgid) {
            continue;
        }
        any = true;
        total += std::fs::read_to_string(path.join("statm"))
            .ok()
            .and_then(|m| m.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    any.then_some(total)
}

/// A free loopback port for a revision's process.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dockerfile: &str, more: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        std::iter::once(("Dockerfile", dockerfile))
            .chain(more.iter().copied())
            .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_last_stage_decides_the_command_and_env() {
        let p = plan(&files(
            "FROM node AS build\nCMD [\"node\", \"build.js\"]\nFROM python:3.12\nENV A=1 B=\"two words\"\nENV LEGACY value here\nENTRYPOINT [\"python\"]\nCMD [\"main.py\"]\n",
            &[("requirements.txt", "flask\n")],
        ))
        .expect("plan");
        assert_eq!(p.argv, ["python", "main.py"]);
        assert_eq!(
            p.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two words".to_string()),
                ("LEGACY".to_string(), "value here".to_string())
            ]
        );
        assert_eq!(p.install.len(), 2, "a virtualenv and pip");
        let generated = plan(&files(
            "FROM python:3.12\nRUN pip install -r requirements.txt \\\n && pip install gunicorn==23.*\nRUN useradd app\nCMD [\"sh\", \"-c\", \"exec gunicorn app:app\"]\n",
            &[("requirements.txt", "flask\n")],
        ))
        .expect("plan");
        assert_eq!(
            generated
                .install
                .iter()
                .map(|s| s.last().cloned().unwrap_or_default())
                .collect::<Vec<_>>(),
            [
                ".venv",
                "pip install -r requirements.txt",
                "pip install gunicorn==23.*"
            ],
            "the RUN steps' installs, not useradd"
        );
        let shell = plan(&files(
            "FROM x\nCMD node server.js\n",
            &[("package.json", "{\"dependencies\": {\"express\": \"4\"}}")],
        ))
        .expect("plan");
        assert_eq!(shell.argv, ["/bin/sh", "-c", "node server.js"]);
        assert_eq!(
            shell.install[0][2],
            "npm install --omit=dev --no-audit --no-fund"
        );
        assert!(plan(&files("FROM x\nRUN true\n", &[])).is_err());
    }

    #[test]
    fn image_paths_move_into_the_revision_directory() {
        let f = files(
            "FROM nginx\nWORKDIR /app\nCOPY nginx.conf /etc/nginx/x.template\nCOPY dist/ /usr/share/nginx/html/\nCOPY --from=b /out /usr/share/other\nCOPY . .\nCMD sed s/a/b/ /etc/nginx/x.template > /tmp/y && nginx -c /tmp/y\n",
            &[("nginx.conf", "root /usr/share/nginx/html;\npid /tmp/n.pid;\n")],
        );
        let p = plan(&f).expect("plan");
        assert_eq!(
            p.image_copies,
            [
                (
                    "nginx.conf".to_string(),
                    "/etc/nginx/x.template".to_string()
                ),
                ("dist/".to_string(), "/usr/share/nginx/html/".to_string())
            ],
            "not WORKDIR's copy, not another stage's"
        );
        assert_eq!(unrunnable(&p, &f), None, "the image has its copies");
        let root = Path::new("/r");
        let prefixes = p.image_prefixes();
        assert_eq!(
            map_image_paths(&p.argv[2], &prefixes, root),
            "sed s/a/b/ /r/etc/nginx/x.template > /r/tmp/y && nginx -c /r/tmp/y"
        );
        assert_eq!(
            map_image_paths(
                "root /usr/share/nginx/html; /tmpfoo /x/tmp/y",
                &prefixes,
                root
            ),
            "root /r/usr/share/nginx/html; /tmpfoo /x/tmp/y",
            "whole components, at the start of a path"
        );
    }

    #[test]
    fn memory_limits_read_as_cloud_run_writes_them() {
        assert_eq!(memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(memory_bytes("1Gi"), Some(1 << 30));
        assert_eq!(memory_bytes("2G"), Some(2_000_000_000));
        assert_eq!(memory_bytes("1000000"), Some(1_000_000));
        assert_eq!(memory_bytes("12Qi"), None);
        assert_eq!(memory_bytes("Mi"), None);
    }

    #[test]
    fn what_this_machine_cannot_run_is_said() {
        let runs = |d: &str, more: &[(&str, &str)]| {
            let f = files(d, more);
            unrunnable(&plan(&f).expect("plan"), &f)
        };
        assert_eq!(
            runs("FROM x\nCMD [\"sh\", \"-c\", \"exit 0\"]\n", &[]),
            None
        );
        assert_eq!(runs("FROM x\nCMD exec sh start.sh\n", &[]), None);
        // Built by a RUN step of a builder stage: not in the context.
        let go = runs("FROM golang AS b\nRUN go build -o /server\nFROM scratch\nCOPY --from=b /server /server\nCMD [\"/server\"]\n", &[]);
        assert!(go.is_some_and(|w| w.contains("/server")));
        let nginx = runs("FROM nginx\nCOPY nginx.conf /etc/nginx/x.template\nCMD sed s/a/b/ /etc/nginx/base.template > /tmp/y && nginx\n", &[("nginx.conf", "")]);
        assert!(
            nginx.is_some_and(|w| w.contains("/etc/nginx/base.template")),
            "a path of the image that no COPY provides"
        );
        // WORKDIR is the revision's directory.
        let p = plan(&files(
            "FROM node\nWORKDIR /srv\nWORKDIR app\nCMD [\"node\", \"/srv/app/server.js\"]\n",
            &[],
        ))
        .expect("plan");
        assert_eq!(p.argv, ["node", "./server.js"]);
        assert!(runs("FROM x\nCMD [\"no-such-program-here\"]\n", &[])
            .is_some_and(|w| w.contains("not on this machine")));
        let poetry = runs("FROM python\nRUN pip install poetry && poetry install --only main\nCMD [\"uvicorn\", \"app:app\"]\n", &[]);
        assert!(
            poetry.is_some_and(|w| w.contains("poetry install")),
            "not rehearsed"
        );
        // A console script pip would install.
        assert_eq!(
            runs(
                "FROM x\nCMD [\"gunicorn\", \"app:app\"]\n",
                &[("requirements.txt", "gunicorn\n")]
            ),
            None
        );
    }
}
