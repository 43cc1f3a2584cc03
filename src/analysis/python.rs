//! Python: pip, Poetry, uv, Pipenv and PDM projects; Django, Flask, FastAPI
//! and other WSGI/ASGI apps.

use super::*;

pub(super) fn python(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
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
    // Extras that bring a server along: `fastapi[standard]` and
    // `fastapi[all]` install uvicorn.
    let compact: String = deps.chars().filter(|c| !c.is_whitespace()).collect();
    let provided = |server: &str| {
        has_dep(server)
            || (server == "uvicorn"
                && ["fastapi[standard", "fastapi[all"]
                    .iter()
                    .any(|e| compact.contains(e)))
    };
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
        if !provided(server) {
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
pub(super) fn find_app(s: &mut Src, ctor: &str) -> Option<(String, String)> {
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
pub(super) fn find_file_module(s: &mut Src, file: &str) -> Option<String> {
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
