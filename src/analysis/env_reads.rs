//! Settings an app needs at boot that no image can provide: environment
//! variables it reads with no default, and the framework settings that
//! make a first deploy answer 400 or 500 (Django's ALLOWED_HOSTS and
//! DEBUG, Rails' secret key base, Laravel's APP_KEY). Each becomes a
//! warning with its file and line and the `--env` to pass.

use std::sync::LazyLock;

use regex::Regex;

use super::*;

/// Names the platform or the image sets.
const PROVIDED: &[&str] = &[
    "PORT",
    "NODE_ENV",
    "RAILS_ENV",
    "RACK_ENV",
    "HOME",
    "PATH",
    "K_SERVICE",
    "K_REVISION",
    "K_CONFIGURATION",
    "PYTHONUNBUFFERED",
    "DJANGO_SETTINGS_MODULE",
];

/// Reads that fail without the variable: `os.environ["X"]`.
static PY_REQUIRED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"os\.environ\[\s*["']([A-Z][A-Z0-9_]{0,63})["']\s*\]"#).expect("valid regex")
});
/// `ENV.fetch("X")` with no default and no block.
static RB_REQUIRED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"ENV\.fetch\(\s*["']([A-Z][A-Z0-9_]{0,63})["']\s*\)\s*(?:$|[^{\s]|\s+[^{d\s])"#)
        .expect("valid regex")
});
/// `process.env.X` not followed by a fallback (`||`, `??`, `?`) or a test.
static JS_READ: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"process\.env(?:\.([A-Z][A-Z0-9_]{0,63})|\[\s*["']([A-Z][A-Z0-9_]{0,63})["']\s*\])(\s*(?:\|\||\?\?|\?|===?|!==?))?"#)
        .expect("valid regex")
});

/// Names whose absence breaks an app, when it reads them with no default.
fn essential(name: &str) -> bool {
    [
        "URL", "URI", "SECRET", "KEY", "ORIGIN", "DSN", "TOKEN", "PASSWORD",
    ]
    .iter()
    .any(|w| name.contains(w))
        || name.starts_with("DATABASE")
}

/// Names `os.environ["X"]` requires in a Python file.
pub(super) fn required_python(text: &str) -> Vec<String> {
    let mut out: Vec<String> = PY_REQUIRED
        .captures_iter(text)
        .filter_map(|c| c.get(1).map(|m| m.as_str().to_string()))
        .filter(|n| !PROVIDED.contains(&n.as_str()))
        .collect();
    out.dedup();
    out
}

/// Source files worth reading: the app's own top-level code, and in each
/// directory just below it only the files where entry points and settings
/// live (probed by name, never listed), so analysis does not grow with the
/// repository.
fn source_files(dir: &Path) -> Vec<String> {
    const EXT: &[&str] = &["py", "js", "mjs", "cjs", "ts", "rb", "go", "php"];
    const SKIP: &[&str] = &[
        "node_modules",
        "vendor",
        "target",
        "dist",
        "build",
        "venv",
        ".venv",
        "test",
        "tests",
        "spec",
        "__pycache__",
        "public",
        "migrations",
    ];
    /// Where entry points and settings live below the root.
    const BELOW: &[&str] = &[
        "settings.py",
        "settings/base.py",
        "settings/production.py",
        "settings/prod.py",
        "config.py",
        "index.js",
        "index.ts",
        "index.mjs",
        "main.js",
        "main.ts",
        "main.py",
        "main.go",
        "server.js",
        "server.ts",
        "app.js",
        "app.ts",
        "app.py",
        "config.js",
        "config.ts",
        "database.yml",
        "application.rb",
        "environments/production.rb",
    ];
    const MAX_FILES: usize = 60;
    let is_source = |name: &str| EXT.iter().any(|x| name.ends_with(&format!(".{x}")));
    let mut out = vec![];
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().take(1000).collect();
    entries.sort_by_key(|e| e.file_name());
    let small = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() < 256 * 1024);
    for e in &entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || e.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if SKIP.contains(&name.as_str()) {
                continue;
            }
            for f in BELOW {
                if small(&e.path().join(f)) {
                    out.push(format!("{name}/{f}"));
                }
            }
        } else if is_source(&name)
            && !name.contains(".test.")
            && !name.contains(".spec.")
            && small(&e.path())
        {
            out.push(name);
        }
        if out.len() >= MAX_FILES {
            break;
        }
    }
    out.sort();
    out
}

pub(super) fn warn(s: &mut Src, plan: &BuildPlan) {
    for file in source_files(s.dir) {
        let Some(text) = s.read(&file) else { continue };
        for (i, line) in text.lines().enumerate() {
            for name in required_in_line(&file, line) {
                s.warn_env(
                    &file,
                    Some(i + 1),
                    format!("the app reads {name} with no default: it fails or misbehaves at boot without it"),
                    Some(format!("{name}=VALUE")),
                );
            }
        }
    }
    match plan.framework.as_deref() {
        Some("django") => django(s),
        Some("rails") => rails(s),
        Some("laravel") => laravel(s),
        _ => {}
    }
}

fn required_in_line(file: &str, line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with('#') || code.starts_with("//") {
        return vec![];
    }
    let mut names = vec![];
    if file.ends_with(".py") {
        names.extend(required_python(line));
    } else if file.ends_with(".rb") || file.ends_with(".yml") {
        names.extend(
            RB_REQUIRED
                .captures_iter(line)
                .filter_map(|c| c.get(1).map(|m| m.as_str().to_string())),
        );
    } else if [".js", ".mjs", ".cjs", ".ts"]
        .iter()
        .any(|x| file.ends_with(x))
    {
        // Reads inside a condition are optional by construction.
        let conditional = code.starts_with("if") || code.contains("if (");
        for c in JS_READ.captures_iter(line) {
            let name = c.get(1).or(c.get(2)).map(|m| m.as_str().to_string());
            if let Some(name) = name {
                if c.get(3).is_none() && !conditional && essential(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.retain(|n| !PROVIDED.contains(&n.as_str()));
    names.dedup();
    names
}

fn django(s: &mut Src) {
    let Some(settings) = super::python::django_settings(s) else {
        return;
    };
    let text = s.read(&settings).unwrap_or_default();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim();
        if let Some(value) = code.strip_prefix("ALLOWED_HOSTS") {
            let value = value.trim_start();
            if !value.starts_with('=') {
                continue;
            }
            let env = env_name_in(value);
            if let Some(name) = env {
                s.warn_env(
                    &settings,
                    Some(i + 1),
                    format!("ALLOWED_HOSTS comes from {name}: without Cloud Run's host in it Django answers 400 to every request"),
                    Some(format!("{name}=.run.app")),
                );
            } else if !value.contains(".run.app")
                && !value.contains("'*'")
                && !value.contains("\"*\"")
            {
                s.warn(
                    &settings,
                    Some(i + 1),
                    "ALLOWED_HOSTS does not include Cloud Run's host: Django answers 400 to every request when DEBUG is off; add \".run.app\" (or read it from the environment)",
                );
            }
        }
        if let Some(value) = code.strip_prefix("DEBUG") {
            let value = value.trim_start();
            if !value.starts_with('=') {
                continue;
            }
            if value.contains("True") && !value.contains("environ") && !value.contains("env(") {
                s.warn(
                    &settings,
                    Some(i + 1),
                    "DEBUG is on unconditionally: tracebacks and settings are shown to anyone; read it from the environment",
                );
            } else if let Some(name) = env_name_in(value) {
                // A default of true means production runs in debug unless told.
                let default_on = value.contains("'True'")
                    || value.contains("\"True\"")
                    || value.contains("'1'")
                    || value.contains("default=True");
                if default_on {
                    s.warn_env(
                        &settings,
                        Some(i + 1),
                        format!("DEBUG defaults to on unless {name} says otherwise"),
                        Some(format!("{name}=False")),
                    );
                }
            }
        }
    }
}

/// The environment variable a settings expression reads, if any.
fn env_name_in(expr: &str) -> Option<String> {
    static READ: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?:environ(?:\.get)?[\[(]|getenv\(|env(?:\.\w+)?\()\s*["']([A-Z][A-Z0-9_]{0,63})["']"#)
            .expect("valid regex")
    });
    READ.captures(expr)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

fn rails(s: &mut Src) {
    if s.has("config/credentials.yml.enc") {
        s.warn_env(
            "config/credentials.yml.enc",
            None,
            "Rails decrypts its credentials at boot in production: pass the key from config/master.key (never committed)",
            Some("RAILS_MASTER_KEY=VALUE".into()),
        );
    } else {
        s.warn_env(
            "Gemfile",
            s.find_line("Gemfile", "rails"),
            "Rails needs a secret key base in production: generate one with `bin/rails secret`",
            Some("SECRET_KEY_BASE=VALUE".into()),
        );
    }
}

fn laravel(s: &mut Src) {
    let file = if s.has(".env.example") {
        ".env.example"
    } else {
        "composer.json"
    };
    let line = s.find_line(file, "APP_KEY");
    s.warn_env(
        file,
        line,
        "Laravel encrypts sessions and cookies with APP_KEY and answers 500 without it: generate one with `php artisan key:generate --show`",
        Some("APP_KEY=base64:VALUE".into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_without_a_default_are_required() {
        let cases = [
            (
                "a.py",
                r#"DB = os.environ["DATABASE_URL"]"#,
                vec!["DATABASE_URL"],
            ),
            ("a.py", r#"DB = os.environ.get("DATABASE_URL")"#, vec![]),
            ("a.rb", r#"url = ENV.fetch("REDIS_URL")"#, vec!["REDIS_URL"]),
            (
                "a.rb",
                r#"url = ENV.fetch("REDIS_URL", "redis://x")"#,
                vec![],
            ),
            ("a.rb", r#"url = ENV.fetch("REDIS_URL") { "x" }"#, vec![]),
            (
                "a.js",
                "const db = process.env.DATABASE_URL;",
                vec!["DATABASE_URL"],
            ),
            (
                "a.js",
                "origin: process.env.CORS_ORIGIN,",
                vec!["CORS_ORIGIN"],
            ),
            (
                "a.js",
                "const db = process.env.DATABASE_URL || 'x';",
                vec![],
            ),
            (
                "a.js",
                "const db = process.env.DATABASE_URL ?? 'x';",
                vec![],
            ),
            ("a.js", "if (process.env.SECRET_TOKEN) {", vec![]),
            ("a.js", "const port = process.env.PORT;", vec![]),
            ("a.js", "const level = process.env.LOG_LEVEL;", vec![]),
            ("a.js", "// process.env.DATABASE_URL", vec![]),
        ];
        for (file, line, want) in cases {
            assert_eq!(required_in_line(file, line), want, "{line}");
        }
    }
}
