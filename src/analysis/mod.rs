//! Source analysis: what the app is (language, version, framework, package
//! manager), how to install, build and start it, and on which port, with the
//! evidence for each choice. A Procfile `web:` line and an existing
//! Dockerfile take precedence. The result is a typed [`BuildPlan`]; when the
//! app has no Dockerfile, [`dockerfile`] renders one from it. One module per
//! stack detects it.
//!
//! Everything read from the repository is untrusted: names that end up in a
//! Dockerfile are checked against a safe character set, and commands are
//! only ever emitted as JSON exec-form arguments.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod dockerfile;
mod dotnet;
mod env_reads;
mod go;
mod java;
mod node;
mod own_dockerfile;
mod php;
mod ports;
mod procfile;
mod python;
mod ruby;
mod rust;
mod versions;

use dotnet::dotnet;
use go::go;
use java::java;
use node::node;
use php::php;
use python::python;
use ruby::ruby;
use rust::rust;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Language {
    Python,
    Node,
    Go,
    Java,
    Ruby,
    Php,
    Rust,
    Dotnet,
    Static,
    /// The app's own Dockerfile decides.
    Dockerfile,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Go => "go",
            Language::Java => "java",
            Language::Ruby => "ruby",
            Language::Php => "php",
            Language::Rust => "rust",
            Language::Dotnet => "dotnet",
            Language::Static => "static",
            Language::Dockerfile => "dockerfile",
        }
    }
}

/// Why the analysis chose what it chose: a file, maybe a line, a note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub file: String,
    pub line: Option<usize>,
    pub note: String,
}

/// Something the app needs to boot correctly that the plan cannot
/// provide: a setting to pass, a version that was changed, a port that
/// breaks Cloud Run's contract. `env` names the `--env` to set, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
    pub env: Option<String>,
}

/// Packages a compiled dependency needs: `build` in a builder stage with
/// a compiler, `runtime` (shared libraries) in the slim image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeDeps {
    pub build: Vec<String>,
    pub runtime: Vec<String>,
    /// The dependencies that need them, for the evidence.
    pub because: Vec<String>,
}

/// How to turn the source into a container that listens on $PORT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    pub language: Language,
    /// Major (or major.minor) version of the runtime.
    pub version: Option<String>,
    pub framework: Option<String>,
    pub package_manager: Option<String>,
    /// Shell command lines, for people and for running natively.
    pub install: Vec<String>,
    pub build: Vec<String>,
    /// The start command as a shell line; it reads $PORT.
    pub start: String,
    /// Cloud Run's contract: the app listens on $PORT, 8080 by default.
    pub port: u16,
    pub evidence: Vec<Evidence>,
    /// Files the Dockerfile needs: what to copy first for layer caching.
    pub dependency_files: Vec<String>,
    /// Language-specific names the Dockerfile uses (binary, jar, dll...).
    pub artifact: Option<String>,
    /// Build output directory for static sites.
    pub static_dir: Option<String>,
    /// A front-end build in a Node stage of its own: a static site's whole
    /// output, or the assets another stack's server serves.
    #[serde(default)]
    pub assets: Option<AssetBuild>,
    /// Environment the image sets (names and values vetted).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Directories the app reads at run time, copied next to a compiled
    /// binary.
    #[serde(default)]
    pub runtime_dirs: Vec<String>,
    /// Compiled dependencies: a builder stage with their toolchain.
    #[serde(default)]
    pub native: Option<NativeDeps>,
    /// The user the container runs as, when the app's Dockerfile sets it.
    #[serde(default)]
    pub user: Option<String>,
    /// With the app's own Dockerfile: the stack found beside it.
    #[serde(default)]
    pub detected: Option<Language>,
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

/// A package.json build run in a stage of its own, before the app's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetBuild {
    pub package_manager: String,
    pub node_version: String,
    pub install: Vec<String>,
    pub build: Vec<String>,
    pub dependency_files: Vec<String>,
    /// Where the build writes, relative to the source root (vetted).
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("no supported app found in {dir} (looked for Dockerfile, Procfile, requirements.txt, pyproject.toml, Pipfile, package.json, go.mod, pom.xml, build.gradle, Gemfile, composer.json, Cargo.toml, *.csproj, index.html){}", apps_hint(.apps))]
    NotRecognized { dir: String, apps: Vec<String> },
    #[error("{dir} does not exist or is not a directory")]
    NoSuchDirectory { dir: String },
    #[error("{file}: cannot tell how to start the app: {reason}")]
    NoStart { file: String, reason: String },
    #[error("{file}: {value:?} cannot be used in a Dockerfile (only letters, digits and ._/-:@ are allowed)")]
    UnsafeValue { file: String, value: String },
    #[error("reading {file}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

fn apps_hint(apps: &[String]) -> String {
    if apps.is_empty() {
        String::new()
    } else {
        format!(
            "; apps found below it: {} (deploy one with source.subdirectory, or `deployd analyze DIR/SUB`)",
            apps.join(", ")
        )
    }
}

/// Manifests that mark a directory as an app, for the monorepo hint.
const MANIFESTS: &[&str] = &[
    "Dockerfile",
    "package.json",
    "requirements.txt",
    "pyproject.toml",
    "Pipfile",
    "go.mod",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "Gemfile",
    "composer.json",
    "Cargo.toml",
];

/// Subdirectories (two levels down at most) holding an app: "sub
/// (manifest)", sorted; dependency and hidden directories are skipped.
fn apps_below(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut walk = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = walk.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let skip = name.starts_with('.')
                || ["node_modules", "vendor", "target", "dist", "build", "venv"]
                    .contains(&name.as_str());
            if skip || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if let Some(m) = MANIFESTS.iter().find(|m| path.join(m).is_file()) {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.push(format!("{rel} ({m})"));
            } else if depth < 1 {
                walk.push((path, depth + 1));
            }
        }
    }
    out.sort();
    out.truncate(20);
    out
}

/// Characters a repository-derived name may contain before it is written
/// into a Dockerfile outside JSON exec form.
pub fn safe_name(file: &str, value: &str) -> Result<String, AnalyzeError> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-:@".contains(c))
        && !value.split('/').any(|p| p == "..");
    if ok {
        Ok(value.to_string())
    } else {
        Err(AnalyzeError::UnsafeValue {
            file: file.into(),
            value: value.into(),
        })
    }
}

struct Src<'a> {
    dir: &'a Path,
    evidence: Vec<Evidence>,
    warnings: Vec<Warning>,
}

impl Src<'_> {
    fn has(&self, f: &str) -> bool {
        self.dir.join(f).is_file()
    }

    fn read(&self, f: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(f)).ok()
    }

    fn note(&mut self, file: &str, line: Option<usize>, note: impl Into<String>) {
        self.evidence.push(Evidence {
            file: file.into(),
            line,
            note: note.into(),
        });
    }

    fn warn(&mut self, file: &str, line: Option<usize>, message: impl Into<String>) {
        self.warn_env(file, line, message, None);
    }

    fn warn_env(
        &mut self,
        file: &str,
        line: Option<usize>,
        message: impl Into<String>,
        env: Option<String>,
    ) {
        let w = Warning {
            file: file.into(),
            line,
            message: message.into(),
            env,
        };
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    /// The first line of `file` containing `needle` (case-insensitive).
    fn find_line(&self, file: &str, needle: &str) -> Option<usize> {
        let text = self.read(file)?;
        let n = needle.to_ascii_lowercase();
        text.lines()
            .position(|l| l.to_ascii_lowercase().contains(&n))
            .map(|i| i + 1)
    }

    /// Files directly in `dir` (relative), sorted, by extension.
    fn files_with_ext(&self, sub: &str, ext: &str) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(ext))
            .map(|n| {
                if sub.is_empty() {
                    n
                } else {
                    format!("{sub}/{n}")
                }
            })
            .collect();
        out.sort();
        out
    }
}

impl BuildPlan {
    /// A plan with nothing decided yet but the language and Cloud Run's
    /// default port; detectors fill in what they find.
    fn new(language: Language) -> Self {
        Self {
            language,
            version: None,
            framework: None,
            package_manager: None,
            install: vec![],
            build: vec![],
            start: String::new(),
            port: 8080,
            evidence: vec![],
            dependency_files: vec![],
            artifact: None,
            static_dir: None,
            assets: None,
            env: vec![],
            runtime_dirs: vec![],
            native: None,
            user: None,
            detected: None,
            warnings: vec![],
        }
    }
}

pub fn analyze(dir: &Path) -> Result<BuildPlan, AnalyzeError> {
    if !dir.is_dir() {
        return Err(AnalyzeError::NoSuchDirectory {
            dir: dir.display().to_string(),
        });
    }
    let mut s = Src {
        dir,
        evidence: vec![],
        warnings: vec![],
    };
    let web = procfile::web(&mut s);
    if s.has("Dockerfile") {
        let mut plan = own_dockerfile::report(&mut s, web.as_ref());
        plan.evidence = std::mem::take(&mut s.evidence);
        plan.warnings = std::mem::take(&mut s.warnings);
        return Ok(plan);
    }
    let mut plan = detect(&mut s)?;
    if let Some((line, cmd)) = web {
        plan.start = procfile::translate(&mut s, &mut plan, line, cmd)?;
    }
    ports::decide(&mut s, &mut plan);
    env_reads::warn(&mut s, &plan);
    plan.evidence = std::mem::take(&mut s.evidence);
    plan.warnings = std::mem::take(&mut s.warnings);
    Ok(plan)
}

/// The stack, from its manifests.
fn detect(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    // The server-providing manifest decides the language: a package.json
    // that only builds assets does not make a Laravel or Rails app a Node
    // one, it becomes a build stage of that app.
    let node_role = s.has("package.json").then(|| node::role(s));
    let other_server = [
        "requirements.txt",
        "pyproject.toml",
        "Pipfile",
        "go.mod",
        "pom.xml",
    ]
    .iter()
    .chain(&[
        "build.gradle",
        "build.gradle.kts",
        "Gemfile",
        "composer.json",
        "Cargo.toml",
    ])
    .any(|m| s.has(m))
        || !s.files_with_ext("", ".csproj").is_empty();
    let mut plan = if s.has("requirements.txt") || s.has("pyproject.toml") || s.has("Pipfile") {
        python(s)?
    } else if node_role == Some(node::Role::Server) || (node_role.is_some() && !other_server) {
        match node_role {
            Some(node::Role::StaticSite(framework, out)) => node::static_site(s, framework, &out)?,
            _ => node(s)?,
        }
    } else if s.has("go.mod") {
        go(s)?
    } else if s.has("pom.xml") || s.has("build.gradle") || s.has("build.gradle.kts") {
        java(s)?
    } else if s.has("Gemfile") {
        ruby(s)?
    } else if s.has("composer.json") {
        php(s)?
    } else if s.has("Cargo.toml") {
        rust(s)?
    } else if !s.files_with_ext("", ".csproj").is_empty() {
        dotnet(s)?
    } else if let Some(d) = ["", "public", "dist", "build", "site"]
        .into_iter()
        .find(|d| s.has(&join(d, "index.html")))
    {
        let shown = if d.is_empty() { "." } else { d };
        s.note(
            &join(d, "index.html"),
            None,
            format!("a static site served from {shown}"),
        );
        BuildPlan {
            version: Some("1".into()),
            start: "nginx -g 'daemon off;'".into(),
            static_dir: Some(shown.into()),
            ..BuildPlan::new(Language::Static)
        }
    } else {
        return Err(AnalyzeError::NotRecognized {
            dir: s.dir.display().to_string(),
            apps: apps_below(s.dir),
        });
    };
    if plan.assets.is_none() && !matches!(plan.language, Language::Node | Language::Static) {
        plan.assets = node::assets_for(s, plan.language)?;
    }
    Ok(plan)
}

fn join(d: &str, f: &str) -> String {
    if d.is_empty() {
        f.to_string()
    } else {
        format!("{d}/{f}")
    }
}

/// A bare major.minor from a version constraint (">=3.11,<4" -> "3.11").
fn version_from(constraint: &str, parts: usize) -> Option<String> {
    let start = constraint.find(|c: char| c.is_ascii_digit())?;
    let v: String = constraint[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v: Vec<&str> = v.split('.').filter(|p| !p.is_empty()).take(parts).collect();
    (!v.is_empty()).then(|| v.join("."))
}
