//! The sandbox runs what was built, where this machine can: a revision's
//! build context is unpacked into a private directory, its dependencies
//! installed there (a virtualenv for `requirements.txt`, `node_modules` for
//! `package.json`), and the image's command (the Dockerfile's last stage:
//! WORKDIR, ENV, ENTRYPOINT, CMD) started natively with `PORT` and the
//! revision's env, in a clean environment. A revision is ready once its
//! process listens on `PORT`. A rehearsal, not isolation: the process runs
//! as the sandbox's user.

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
}

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
            }
            "ENV" => env.extend(env_pairs(args)),
            "ENTRYPOINT" => entrypoint = command(args),
            "CMD" => cmd = command(args),
            _ => {}
        }
    }
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err("the image has no ENTRYPOINT or CMD".into());
    }
    let has = |name: &str| files.iter().any(|(n, _)| n == name);
    let mut install = vec![];
    if has("requirements.txt") {
        install.push(vec![
            "python3".into(),
            "-m".into(),
            "venv".into(),
            ".venv".into(),
        ]);
        install.push(vec![
            ".venv/bin/pip".into(),
            "install".into(),
            "--quiet".into(),
            "--disable-pip-version-check".into(),
            "-r".into(),
            "requirements.txt".into(),
        ]);
    }
    let package_has_deps = files
        .iter()
        .find(|(n, _)| n == "package.json")
        .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
        .is_some_and(|p| p["dependencies"].as_object().is_some_and(|d| !d.is_empty()));
    if package_has_deps {
        install.push(vec![
            "npm".into(),
            "install".into(),
            "--omit=dev".into(),
            "--no-audit".into(),
            "--no-fund".into(),
        ]);
    }
    Ok(Plan { argv, env, install })
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

/// A revision's process; stopped (with its process group) when dropped.
pub struct Process {
    child: tokio::process::Child,
    pub port: u16,
    /// Its output, until moved to the log.
    pub lines: Arc<Mutex<Vec<LoggedLine>>>,
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
    port: u16,
    env: Vec<(String, String)>,
    startup: Duration,
) -> Result<Process, NotStarted> {
    let lines: Arc<Mutex<Vec<LoggedLine>>> = Arc::default();
    let fail = |message: String, lines: &Arc<Mutex<Vec<LoggedLine>>>| NotStarted {
        message,
        lines: std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner())),
    };
    let dir = tempfile::Builder::new()
        .prefix("deployd-sandbox-revision-")
        .tempdir()
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
    let path_var = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
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
            return Ok(Process {
                child,
                port,
                lines,
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
        let shell = plan(&files(
            "FROM x\nCMD node server.js\n",
            &[("package.json", "{\"dependencies\": {\"express\": \"4\"}}")],
        ))
        .expect("plan");
        assert_eq!(shell.argv, ["/bin/sh", "-c", "node server.js"]);
        assert_eq!(shell.install[0][0], "npm");
        assert!(plan(&files("FROM x\nRUN true\n", &[])).is_err());
    }
}
