//! Source analysis: what the app is (language, version, framework, package
//! manager), how to install, build and start it, and on which port, with the
//! evidence for each choice. A Procfile `web:` line and an existing
//! Dockerfile take precedence. The result is a typed [`BuildPlan`]; when the
//! app has no Dockerfile, [`super::dockerfile`] renders one from it.
//!
//! Everything read from the repository is untrusted: names that end up in a
//! Dockerfile are checked against a safe character set, and commands are
//! only ever emitted as JSON exec-form arguments.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("no supported app found in {dir} (looked for Dockerfile, Procfile, requirements.txt, pyproject.toml, Pipfile, package.json, go.mod, pom.xml, build.gradle, Gemfile, composer.json, Cargo.toml, *.csproj, index.html)")]
    NotRecognized { dir: String },
    #[error("{file}: {value:?} cannot be used in a Dockerfile (only letters, digits and ._/-:@ are allowed)")]
    UnsafeValue { file: String, value: String },
    #[error("reading {file}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
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
        }
    }
}

pub fn analyze(dir: &Path) -> Result<BuildPlan, AnalyzeError> {
    let mut s = Src {
        dir,
        evidence: vec![],
    };
    let procfile_web = procfile_web(&mut s);
    if s.has("Dockerfile") {
        let port = s
            .read("Dockerfile")
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix("EXPOSE ")
                        .and_then(|p| p.split(['/', ' ']).next()?.parse().ok())
                })
            })
            .unwrap_or(8080);
        s.note("Dockerfile", None, "the app's own Dockerfile is used as is");
        return Ok(BuildPlan {
            start: procfile_web.unwrap_or_else(|| "(the Dockerfile's CMD)".into()),
            port,
            evidence: s.evidence,
            ..BuildPlan::new(Language::Dockerfile)
        });
    }
    let mut plan = if s.has("requirements.txt") || s.has("pyproject.toml") || s.has("Pipfile") {
        python(&mut s)?
    } else if s.has("package.json") {
        node(&mut s)?
    } else if s.has("go.mod") {
        go(&mut s)?
    } else if s.has("pom.xml") || s.has("build.gradle") || s.has("build.gradle.kts") {
        java(&mut s)?
    } else if s.has("Gemfile") {
        ruby(&mut s)?
    } else if s.has("composer.json") {
        php(&mut s)?
    } else if s.has("Cargo.toml") {
        rust(&mut s)?
    } else if !s.files_with_ext("", ".csproj").is_empty() {
        dotnet(&mut s)?
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
            dir: dir.display().to_string(),
        });
    };
    if let Some(web) = procfile_web {
        plan.start = web;
    }
    plan.evidence = s.evidence;
    Ok(plan)
}

fn join(d: &str, f: &str) -> String {
    if d.is_empty() {
        f.to_string()
    } else {
        format!("{d}/{f}")
    }
}

/// `web: <command>` from a Procfile takes precedence over any detection.
fn procfile_web(s: &mut Src) -> Option<String> {
    let text = s.read("Procfile")?;
    let (i, cmd) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.strip_prefix("web:").map(|c| (i, c.trim().to_string())))?;
    if cmd.is_empty() {
        return None;
    }
    s.note(
        "Procfile",
        Some(i + 1),
        "the web process type decides the start command",
    );
    Some(cmd)
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

fn python(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let pyproject = s.read("pyproject.toml").unwrap_or_default();
    let (pm, dep_file, install): (&str, &str, Vec<String>) = if s.has("uv.lock") {
        (
            "uv",
            "uv.lock",
            vec![
                "pip install --no-cache-dir uv==0.*".into(),
                "uv pip install --system --no-cache -r pyproject.toml".into(),
            ],
        )
    } else if pyproject.contains("[tool.poetry]") {
        (
            "poetry",
            "pyproject.toml",
            vec![
                "pip install --no-cache-dir poetry==1.8.*".into(),
                "poetry config virtualenvs.create false".into(),
                "poetry install --no-root --only main --no-interaction".into(),
            ],
        )
    } else if pyproject.contains("[tool.pdm]") || s.has("pdm.lock") {
        (
            "pdm",
            "pyproject.toml",
            vec![
                "pip install --no-cache-dir pdm==2.*".into(),
                "pdm export --prod -o requirements.txt".into(),
                "pip install --no-cache-dir -r requirements.txt".into(),
            ],
        )
    } else if s.has("Pipfile") {
        (
            "pipenv",
            "Pipfile",
            vec![
                "pip install --no-cache-dir pipenv==2024.*".into(),
                "pipenv install --system --deploy --skip-lock".into(),
            ],
        )
    } else if s.has("requirements.txt") {
        (
            "pip",
            "requirements.txt",
            vec!["pip install --no-cache-dir -r requirements.txt".into()],
        )
    } else {
        (
            "pip",
            "pyproject.toml",
            vec!["pip install --no-cache-dir .".into()],
        )
    };
    s.note(
        dep_file,
        None,
        format!("Python dependencies, installed with {pm}"),
    );
    let deps = [
        s.read("requirements.txt"),
        Some(pyproject.clone()),
        s.read("Pipfile"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("\n")
    .to_ascii_lowercase();
    // Whole dependency-name tokens, wherever the manifest lists them
    // (one per line, or inline arrays like `dependencies = ["flask>=3"]`).
    let tokens: Vec<&str> = deps
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|t| !t.is_empty())
        .collect();
    let has_dep = |name: &str| tokens.contains(&name);
    let version = s
        .read(".python-version")
        .and_then(|v| version_from(v.trim(), 2))
        .or_else(|| s.read("runtime.txt").and_then(|v| version_from(&v, 2)))
        .or_else(|| {
            pyproject
                .lines()
                .find(|l| l.contains("requires-python") || l.trim_start().starts_with("python ="))
                .and_then(|l| version_from(l.split_once('=')?.1, 2))
        })
        .unwrap_or_else(|| "3.12".into());
    let mut install = install;
    let (framework, start) = if has_dep("django") {
        let project = find_file_module(s, "wsgi.py").unwrap_or_else(|| "app".into());
        let module = safe_name("wsgi.py", &project)?;
        s.note(
            &format!("{}/wsgi.py", module.replace('.', "/")),
            None,
            "Django's WSGI application, served by gunicorn",
        );
        if !has_dep("gunicorn") {
            install.push("pip install --no-cache-dir gunicorn==23.*".into());
        }
        (
            "django",
            format!("gunicorn --bind 0.0.0.0:$PORT --workers 2 {module}.wsgi:application"),
        )
    } else if let Some((dep, ctor, default_module, server, pin, template)) =
        PY_APP_SERVERS.iter().find(|a| has_dep(a.0))
    {
        let (module, var) = find_app(s, ctor).unwrap_or((default_module.to_string(), "app".into()));
        let target = format!(
            "{}:{}",
            safe_name("app module", &module)?,
            safe_name("app variable", &var)?
        );
        if !has_dep(server) {
            install.push(format!("pip install --no-cache-dir {pin}"));
        }
        (*dep, template.replace("{target}", &target))
    } else {
        let main = ["main.py", "app.py", "server.py"]
            .into_iter()
            .find(|f| s.has(f))
            .unwrap_or("main.py");
        s.note(main, None, "no web framework found: run the main module");
        ("", format!("python {main}"))
    };
    let mut deps_files = vec![dep_file.to_string()];
    if dep_file == "uv.lock" {
        deps_files = vec!["pyproject.toml".into(), "uv.lock".into()];
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: (!framework.is_empty()).then(|| framework.to_string()),
        package_manager: Some(pm.into()),
        install,
        start,
        dependency_files: deps_files,
        ..BuildPlan::new(Language::Python)
    })
}

/// Python frameworks whose app object an app server runs: (dependency,
/// constructor, default module, server, its pinned install, start command
/// with `{target}` for `module:variable`).
const PY_APP_SERVERS: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "fastapi",
        "FastAPI(",
        "main",
        "uvicorn",
        "uvicorn==0.*",
        "uvicorn {target} --host 0.0.0.0 --port $PORT",
    ),
    (
        "flask",
        "Flask(",
        "app",
        "gunicorn",
        "gunicorn==23.*",
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 {target}",
    ),
];

/// The module and variable of `x = Framework(` in the top-level .py files.
fn find_app(s: &mut Src, ctor: &str) -> Option<(String, String)> {
    for f in s
        .files_with_ext("", ".py")
        .into_iter()
        .chain(s.files_with_ext("app", ".py"))
        .chain(s.files_with_ext("src", ".py"))
    {
        let text = s.read(&f)?;
        if let Some((i, line)) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(ctor) && l.contains('='))
        {
            let var = line
                .split('=')
                .next()?
                .trim()
                .trim_end_matches(':')
                .split(':')
                .next()?
                .trim()
                .to_string();
            let module = f.trim_end_matches(".py").replace('/', ".");
            s.note(
                &f,
                Some(i + 1),
                format!("the {} app object `{var}`", ctor.trim_end_matches('(')),
            );
            return Some((module, var));
        }
    }
    None
}

/// The dotted module of the directory holding `file` (e.g. mysite/wsgi.py).
fn find_file_module(s: &mut Src, file: &str) -> Option<String> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(s.dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().join(file).is_file())
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let d = dirs.first()?;
    d.file_name()?.to_str().map(str::to_string)
}

fn node(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("package.json").unwrap_or_default();
    let pkg: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let (pm, lock, install): (&str, Option<&str>, &str) = if s.has("pnpm-lock.yaml") {
        (
            "pnpm",
            Some("pnpm-lock.yaml"),
            "corepack enable && pnpm install --frozen-lockfile",
        )
    } else if s.has("yarn.lock") {
        (
            "yarn",
            Some("yarn.lock"),
            "corepack enable && yarn install --frozen-lockfile",
        )
    } else if s.has("package-lock.json") {
        ("npm", Some("package-lock.json"), "npm ci")
    } else {
        ("npm", None, "npm install")
    };
    s.note(
        lock.unwrap_or("package.json"),
        None,
        format!("Node.js dependencies, installed with {pm}"),
    );
    let dep = |name: &str| {
        pkg["dependencies"].get(name).is_some() || pkg["devDependencies"].get(name).is_some()
    };
    let version = pkg["engines"]["node"]
        .as_str()
        .and_then(|v| version_from(v, 1))
        .or_else(|| s.read(".nvmrc").and_then(|v| version_from(v.trim(), 1)))
        .unwrap_or_else(|| "22".into());
    let run = |script: &str| match pm {
        "npm" => format!("npm run {script}"),
        other => format!("{other} run {script}"),
    };
    let script = |name: &str| pkg["scripts"][name].as_str().map(str::to_string);
    let build = script("build")
        .map(|_| vec![run("build")])
        .unwrap_or_default();
    if script("build").is_some() {
        let line = s.find_line("package.json", "\"build\"");
        s.note("package.json", line, "a build script");
    }
    let (framework, start) = if dep("next") {
        ("next", run("start"))
    } else if dep("@nestjs/core") {
        let start = if script("start:prod").is_some() {
            run("start:prod")
        } else {
            "node dist/main".into()
        };
        ("nest", start)
    } else if let Some(_start) = script("start") {
        let line = s.find_line("package.json", "\"start\"");
        s.note("package.json", line, "the start script");
        (if dep("express") { "express" } else { "" }, run("start"))
    } else {
        let main = pkg["main"].as_str().unwrap_or("index.js").to_string();
        let main = safe_name("package.json main", &main)?;
        (
            if dep("express") { "express" } else { "" },
            format!("node {main}"),
        )
    };
    if !framework.is_empty() {
        let line = s.find_line(
            "package.json",
            &format!(
                "\"{}",
                if framework == "nest" {
                    "@nestjs/core"
                } else {
                    framework
                }
            ),
        );
        s.note(
            "package.json",
            line,
            format!("{framework} in the dependencies"),
        );
    }
    let mut deps_files = vec!["package.json".to_string()];
    if let Some(l) = lock {
        deps_files.push(l.into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: (!framework.is_empty()).then(|| framework.to_string()),
        package_manager: Some(pm.into()),
        install: vec![install.into()],
        build,
        start,
        dependency_files: deps_files,
        ..BuildPlan::new(Language::Node)
    })
}

fn go(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let gomod = s.read("go.mod").unwrap_or_default();
    let version = gomod
        .lines()
        .find_map(|l| l.strip_prefix("go "))
        .and_then(|v| version_from(v, 2))
        .unwrap_or_else(|| "1.23".into());
    let line = s.find_line("go.mod", "go ");
    s.note("go.mod", line, format!("Go {version} module"));
    let pkg = if s.has("main.go") {
        ".".to_string()
    } else {
        let mut cmds: Vec<String> = fs::read_dir(s.dir.join("cmd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("main.go").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        cmds.sort();
        match cmds.first() {
            Some(c) => format!("./cmd/{c}"),
            None => ".".into(),
        }
    };
    let pkg = safe_name("main package", &pkg)?;
    s.note(
        &if pkg == "." {
            "main.go".to_string()
        } else {
            format!("{}/main.go", pkg.trim_start_matches("./"))
        },
        None,
        "the main package",
    );
    let mut deps = vec!["go.mod".to_string()];
    if s.has("go.sum") {
        deps.push("go.sum".into());
    }
    Ok(BuildPlan {
        version: Some(version),
        package_manager: Some("go modules".into()),
        install: vec!["go mod download".into()],
        build: vec![format!(
            "CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/server {pkg}"
        )],
        start: "/out/server".into(),
        dependency_files: deps,
        artifact: Some(pkg),
        ..BuildPlan::new(Language::Go)
    })
}

fn java(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let (tool, file) = if s.has("pom.xml") {
        ("maven", "pom.xml")
    } else if s.has("build.gradle.kts") {
        ("gradle", "build.gradle.kts")
    } else {
        ("gradle", "build.gradle")
    };
    let text = s.read(file).unwrap_or_default();
    let spring = text.contains("spring-boot");
    let version = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("<java.version>")
                .or_else(|| l.strip_prefix("<maven.compiler.release>"))
                .or_else(|| l.contains("languageVersion").then_some(l))
                .or_else(|| l.starts_with("sourceCompatibility").then_some(l))
        })
        .and_then(|v| version_from(v.trim_start_matches("languageVersion"), 1))
        .unwrap_or_else(|| "21".into());
    s.note(file, None, format!("Java {version}, built with {tool}"));
    if spring {
        let line = s.find_line(file, "spring-boot");
        s.note(file, line, "Spring Boot");
    }
    let (build, jar_glob, deps) = match tool {
        "maven" if s.has("mvnw") => (
            "./mvnw -q -DskipTests package",
            "target/*.jar",
            vec!["pom.xml".to_string()],
        ),
        "maven" => (
            "mvn -q -DskipTests package",
            "target/*.jar",
            vec!["pom.xml".to_string()],
        ),
        _ if s.has("gradlew") => (
            "./gradlew --no-daemon -q build -x test",
            "build/libs/*.jar",
            vec![file.to_string()],
        ),
        _ => (
            "gradle --no-daemon -q build -x test",
            "build/libs/*.jar",
            vec![file.to_string()],
        ),
    };
    Ok(BuildPlan {
        version: Some(version),
        framework: spring.then(|| "spring-boot".into()),
        package_manager: Some(tool.into()),
        build: vec![build.into()],
        start: "java -Dserver.port=$PORT -jar /app/app.jar".into(),
        dependency_files: deps,
        artifact: Some(jar_glob.into()),
        ..BuildPlan::new(Language::Java)
    })
}

fn ruby(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let gemfile = s.read("Gemfile").unwrap_or_default();
    let version = s
        .read(".ruby-version")
        .and_then(|v| version_from(v.trim(), 2))
        .or_else(|| {
            gemfile
                .lines()
                .find(|l| l.trim_start().starts_with("ruby "))
                .and_then(|l| version_from(l, 2))
        })
        .unwrap_or_else(|| "3.3".into());
    s.note("Gemfile", None, "Ruby gems, installed with Bundler");
    let gem = |name: &str| {
        gemfile.lines().any(|l| {
            l.trim_start().starts_with(&format!("gem \"{name}\""))
                || l.trim_start().starts_with(&format!("gem '{name}'"))
        })
    };
    let (framework, start) = if gem("rails") {
        let line = s.find_line("Gemfile", "rails");
        s.note("Gemfile", line, "Rails");
        (
            "rails",
            "bundle exec rails server -b 0.0.0.0 -p $PORT".to_string(),
        )
    } else {
        let fw = if gem("sinatra") { "sinatra" } else { "rack" };
        if s.has("config.ru") {
            s.note("config.ru", None, "a Rack application");
        }
        (
            fw,
            "bundle exec rackup --host 0.0.0.0 --port $PORT".to_string(),
        )
    };
    let mut deps = vec!["Gemfile".to_string()];
    if s.has("Gemfile.lock") {
        deps.push("Gemfile.lock".into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: Some(framework.into()),
        package_manager: Some("bundler".into()),
        install: vec![
            "bundle config set --local without 'development test'".into(),
            "bundle install".into(),
        ],
        start,
        dependency_files: deps,
        ..BuildPlan::new(Language::Ruby)
    })
}

fn php(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("composer.json").unwrap_or_default();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let version = c["require"]["php"]
        .as_str()
        .and_then(|v| version_from(v, 2))
        .unwrap_or_else(|| "8.3".into());
    s.note(
        "composer.json",
        None,
        format!("PHP {version}, dependencies with Composer"),
    );
    let laravel = c["require"].get("laravel/framework").is_some();
    let docroot = if s.dir.join("public").is_dir() {
        "public"
    } else {
        "."
    };
    let start = if laravel {
        let line = s.find_line("composer.json", "laravel/framework");
        s.note("composer.json", line, "Laravel");
        "php artisan serve --host=0.0.0.0 --port=$PORT".to_string()
    } else {
        format!("php -S 0.0.0.0:$PORT -t {docroot}")
    };
    let mut deps = vec!["composer.json".to_string()];
    if s.has("composer.lock") {
        deps.push("composer.lock".into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: laravel.then(|| "laravel".into()),
        package_manager: Some("composer".into()),
        install: vec![
            "composer install --no-dev --no-interaction --prefer-dist --no-scripts".into(),
        ],
        start,
        dependency_files: deps,
        static_dir: Some(docroot.into()),
        ..BuildPlan::new(Language::Php)
    })
}

fn rust(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("Cargo.toml").unwrap_or_default();
    // The first [[bin]] name, else the package name.
    let mut section = "";
    let mut package = None;
    let mut bin = None;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            section = if t == "[package]" {
                "package"
            } else if t == "[[bin]]" {
                "bin"
            } else {
                ""
            };
            continue;
        }
        if let Some(v) = t
            .strip_prefix("name")
            .map(|r| r.trim_start())
            .and_then(|r| r.strip_prefix('='))
        {
            let v = v.trim().trim_matches('"').to_string();
            match section {
                "package" if package.is_none() => package = Some(v),
                "bin" if bin.is_none() => bin = Some(v),
                _ => {}
            }
        }
    }
    let name = bin.or(package).unwrap_or_else(|| "app".into());
    let name = safe_name("Cargo.toml", &name)?;
    let line = s.find_line("Cargo.toml", "name");
    s.note("Cargo.toml", line, format!("the binary target `{name}`"));
    let mut deps = vec!["Cargo.toml".to_string()];
    if s.has("Cargo.lock") {
        deps.push("Cargo.lock".into());
    }
    Ok(BuildPlan {
        version: Some("1".into()),
        package_manager: Some("cargo".into()),
        build: vec![format!("cargo build --release --bin {name}")],
        start: format!("/app/{name}"),
        dependency_files: deps,
        artifact: Some(name),
        ..BuildPlan::new(Language::Rust)
    })
}

fn dotnet(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let proj = s
        .files_with_ext("", ".csproj")
        .into_iter()
        .next()
        .unwrap_or_default();
    let text = s.read(&proj).unwrap_or_default();
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("<TargetFramework>net"))
        .and_then(|v| version_from(v, 2))
        .unwrap_or_else(|| "8.0".into());
    let assembly = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("<AssemblyName>")
                .and_then(|v| v.strip_suffix("</AssemblyName>"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| proj.trim_end_matches(".csproj").to_string());
    let assembly = safe_name(&proj, &assembly)?;
    let proj = safe_name("project file", &proj)?;
    s.note(&proj, None, format!(".NET {version}, assembly {assembly}"));
    let web = text.contains("Microsoft.NET.Sdk.Web");
    Ok(BuildPlan {
        version: Some(version),
        framework: web.then(|| "aspnetcore".into()),
        package_manager: Some("nuget".into()),
        install: vec![format!("dotnet restore {proj}")],
        build: vec![format!(
            "dotnet publish {proj} -c Release -o /out --no-restore"
        )],
        start: format!("dotnet /app/{assembly}.dll"),
        dependency_files: vec![proj],
        artifact: Some(assembly),
        ..BuildPlan::new(Language::Dotnet)
    })
}
