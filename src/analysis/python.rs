//! Python: pip, Poetry, uv, Pipenv and PDM projects; Django, Flask, FastAPI
//! and other WSGI/ASGI apps.

use super::*;

pub(super) fn python(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let pyproject = s.read("pyproject.toml").unwrap_or_default();
    // Every manager installs what its lock says; the lock is copied with
    // the manifest.
    let (pm, deps_files, install): (&str, Vec<&str>, Vec<String>) = if s.has("uv.lock") {
        (
            "uv",
            vec!["pyproject.toml", "uv.lock"],
            vec![
                "pip install --no-cache-dir uv==0.*".into(),
                "uv export --frozen --no-dev --no-emit-project -o .deployd-requirements.txt".into(),
                "pip install --no-cache-dir -r .deployd-requirements.txt".into(),
            ],
        )
    } else if pyproject.contains("[tool.poetry]") {
        let (files, major) = match s.read("poetry.lock") {
            Some(lock) => (vec!["pyproject.toml", "poetry.lock"], poetry_major(&lock)),
            None => {
                s.warn(
                    "pyproject.toml",
                    None,
                    "no poetry.lock: dependency versions are resolved at build time; commit the lock for repeatable builds",
                );
                (vec!["pyproject.toml"], "1.8".to_string())
            }
        };
        (
            "poetry",
            files,
            vec![
                format!("pip install --no-cache-dir poetry=={major}.*"),
                "POETRY_VIRTUALENVS_CREATE=false poetry install --no-root --only main --no-interaction"
                    .into(),
            ],
        )
    } else if pyproject.contains("[tool.pdm]") || s.has("pdm.lock") {
        let files = if s.has("pdm.lock") {
            vec!["pyproject.toml", "pdm.lock"]
        } else {
            vec!["pyproject.toml"]
        };
        (
            "pdm",
            files,
            vec![
                "pip install --no-cache-dir pdm==2.*".into(),
                "pdm export --prod -o .deployd-requirements.txt".into(),
                "pip install --no-cache-dir -r .deployd-requirements.txt".into(),
            ],
        )
    } else if s.has("Pipfile") {
        if s.has("Pipfile.lock") {
            (
                "pipenv",
                vec!["Pipfile", "Pipfile.lock"],
                vec![
                    "pip install --no-cache-dir pipenv==2024.*".into(),
                    // --deploy: refuse a lock that is out of date.
                    "pipenv install --system --deploy".into(),
                ],
            )
        } else {
            s.warn(
                "Pipfile",
                None,
                "no Pipfile.lock: dependency versions are resolved at build time; commit the lock for repeatable builds",
            );
            (
                "pipenv",
                vec!["Pipfile"],
                vec![
                    "pip install --no-cache-dir pipenv==2024.*".into(),
                    "pipenv install --system --skip-lock".into(),
                ],
            )
        }
    } else if s.has("requirements.txt") {
        (
            "pip",
            vec!["requirements.txt"],
            vec!["pip install --no-cache-dir -r requirements.txt".into()],
        )
    } else {
        (
            "pip",
            vec!["pyproject.toml"],
            vec!["pip install --no-cache-dir .".into()],
        )
    };
    let dep_file = deps_files[0];
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
    let version = python_version(s, &pyproject);
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
    let build = if framework == "django" {
        collectstatic(s)
    } else {
        vec![]
    };
    let native = native_deps(s, &has_dep);
    Ok(BuildPlan {
        version: Some(version),
        framework: (!framework.is_empty()).then(|| framework.to_string()),
        package_manager: Some(pm.into()),
        install,
        build,
        start,
        dependency_files: deps_files.into_iter().map(str::to_string).collect(),
        native,
        ..BuildPlan::new(Language::Python)
    })
}

/// Poetry's major.minor from the lock's header ("@generated by Poetry
/// 1.8.3"): a lock is read by the Poetry that wrote it.
fn poetry_major(lock: &str) -> String {
    lock.lines()
        .next()
        .and_then(|l| l.split("Poetry ").nth(1))
        .and_then(|v| version_from(v, 1))
        .map(|major| {
            if major == "1" {
                "1.8".to_string()
            } else {
                major
            }
        })
        .unwrap_or_else(|| "1.8".into())
}

/// The declared Python, from the most specific declaration, then capped
/// for locked packages that cannot run on newer releases.
fn python_version(s: &mut Src, pyproject: &str) -> String {
    let pipfile_pin = s.read("Pipfile").and_then(|p| {
        let req: toml::Value = toml::from_str(&p).ok()?;
        let r = &req.get("requires")?;
        r.get("python_full_version")
            .or_else(|| r.get("python_version"))?
            .as_str()
            .map(str::to_string)
    });
    let declared = s
        .read(".python-version")
        .map(|v| (".python-version", v.trim().to_string()))
        .or_else(|| {
            s.read("runtime.txt").map(|v| {
                (
                    "runtime.txt",
                    v.trim().trim_start_matches("python-").to_string(),
                )
            })
        })
        .or_else(|| pipfile_pin.map(|v| ("Pipfile", v)))
        .or_else(|| {
            pyproject
                .lines()
                .find(|l| l.contains("requires-python") || l.trim_start().starts_with("python ="))
                .and_then(|l| Some(("pyproject.toml", l.split_once('=')?.1.trim().to_string())))
        });
    let version = versions::choose(s, &versions::PYTHON, declared, 2);
    // gunicorn before 21 imports pkg_resources, which Python 3.12 images
    // (no setuptools) do not have.
    match locked_version(s, "gunicorn") {
        Some((file, v)) if version_from(&v, 1).and_then(|m| m.parse::<u32>().ok()) < Some(21) => {
            versions::cap(
                s,
                version,
                "3.11",
                file,
                &format!("gunicorn {v} imports pkg_resources, which Python 3.12 and later images do not provide; upgrade gunicorn to 21 or later to use them"),
            )
        }
        _ => version,
    }
}

/// A package's pinned version in requirements.txt or a lock file.
fn locked_version(s: &Src, name: &str) -> Option<(&'static str, String)> {
    if let Some(v) = s.read("requirements.txt").and_then(|t| {
        t.lines().find_map(|l| {
            let (n, v) = l.split_once("==")?;
            (n.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    }) {
        return Some(("requirements.txt", v));
    }
    if let Some(v) = s.read("Pipfile.lock").and_then(|t| {
        let lock: serde_json::Value = serde_json::from_str(&t).ok()?;
        lock["default"][name]["version"]
            .as_str()
            .map(|v| v.trim_start_matches("==").to_string())
    }) {
        return Some(("Pipfile.lock", v));
    }
    for lock in ["poetry.lock", "uv.lock", "pdm.lock"] {
        let Some(t) = s.read(lock) else { continue };
        let Ok(doc) = toml::from_str::<toml::Value>(&t) else {
            continue;
        };
        let found = doc
            .get("package")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
            .and_then(|p| p.get("version")?.as_str().map(str::to_string));
        if let Some(v) = found {
            return Some((lock, v));
        }
    }
    None
}

/// `collectstatic` when Django's settings gather static files (STATIC_ROOT,
/// STORAGES or whitenoise): without it whitenoise's manifest is missing
/// and `/` answers 500.
fn collectstatic(s: &mut Src) -> Vec<String> {
    let Some(settings) = django_settings(s) else {
        return vec![];
    };
    let text = s.read(&settings).unwrap_or_default();
    let Some(line) = ["STATIC_ROOT", "STORAGES", "whitenoise"]
        .iter()
        .find_map(|k| s.find_line(&settings, k))
    else {
        return vec![];
    };
    s.note(
        &settings,
        Some(line),
        "static files are collected at build time (collectstatic)",
    );
    // Settings that insist on a secret at import get a placeholder for the
    // build only; the service gets the real one through --env.
    let mut prefix = String::new();
    for name in super::env_reads::required_python(&text) {
        if name.contains("SECRET") {
            prefix.push_str(&format!("{name}=collectstatic-only "));
        }
    }
    vec![format!("{prefix}python manage.py collectstatic --noinput")]
}

/// The settings module of a Django project (`mysite/settings.py`, or the
/// package `mysite/settings/`'s base or production module).
pub(super) fn django_settings(s: &mut Src) -> Option<String> {
    let project = find_file_module(s, "wsgi.py")?;
    [
        "settings.py",
        "settings/production.py",
        "settings/base.py",
        "settings/__init__.py",
    ]
    .iter()
    .map(|f| format!("{project}/{f}"))
    .find(|f| s.has(f))
}

/// Packages that install from source (no wheels for Linux) and what they
/// compile against: (package, build packages, runtime packages).
const SDISTS: &[(&str, &[&str], &[&str])] = &[
    ("psycopg2", &["build-essential", "libpq-dev"], &["libpq5"]),
    (
        "mysqlclient",
        &[
            "build-essential",
            "default-libmysqlclient-dev",
            "pkg-config",
        ],
        &["libmariadb3"],
    ),
    ("uwsgi", &["build-essential"], &[]),
    (
        "python-ldap",
        &["build-essential", "libldap2-dev", "libsasl2-dev"],
        &["libldap-2.5-0"],
    ),
];

fn native_deps(s: &mut Src, has_dep: &dyn Fn(&str) -> bool) -> Option<NativeDeps> {
    let mut native = NativeDeps::default();
    for (pkg, build, runtime) in SDISTS {
        if has_dep(pkg) {
            native.because.push(pkg.to_string());
            for b in *build {
                if !native.build.iter().any(|x| x == b) {
                    native.build.push(b.to_string());
                }
            }
            native.runtime.extend(runtime.iter().map(|r| r.to_string()));
        }
    }
    if native.because.is_empty() {
        return None;
    }
    let file = ["requirements.txt", "pyproject.toml", "Pipfile"]
        .into_iter()
        .find(|f| s.has(f))
        .unwrap_or("requirements.txt");
    let line = s.find_line(file, &native.because[0]);
    s.note(
        file,
        line,
        format!(
            "{} compile from source: built in a stage with a compiler, run on the slim image",
            native.because.join(", ")
        ),
    );
    Some(native)
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
