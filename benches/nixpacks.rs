//! deployd's analysis against nixpacks' on this project's own fixtures, in
//! the same run: the share of fields each gets right, judged against what
//! the fixture needs (written by hand below, tool-neutral: a start command
//! is right when it runs the right program on the right target, a version
//! when it is the pinned release or one inside the declared range and still
//! supported, a port when the app is reached there), and the time each
//! takes per fixture.
//!
//!     cargo install nixpacks --version 1.41.0 --locked --root DIR
//!     NIXPACKS=DIR/bin/nixpacks cargo bench --bench nixpacks
//!
//! Without nixpacks only deployd's column is measured, and it says so.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deployd::analysis::{analyze, Language};

/// What a fixture needs.
struct Truth {
    fixture: &'static str,
    language: &'static str,
    framework: Option<&'static str>,
    /// Releases that are right (the pin, or the supported ones inside the
    /// range); empty when the fixture declares none (not judged).
    versions: &'static [&'static str],
    /// Alternatives, each a set of words the start command must contain.
    start: &'static [&'static [&'static str]],
    /// Words a right start command must not contain (a file the image does
    /// not have, a program that exists only on Heroku).
    never: &'static [&'static str],
    /// The port the app is reached on; `None`: it follows $PORT.
    port: Option<u16>,
}

const PY: &[&str] = &["3.11", "3.12", "3.13", "3.14"];

const TRUTH: &[Truth] = &[
    t(
        "python-flask",
        "python",
        Some("flask"),
        &[],
        &[&["gunicorn", "app:app"]],
        &[],
        None,
    ),
    t(
        "python-django-pipenv",
        "python",
        Some("django"),
        &["3.11"],
        &[&["gunicorn", "mysite.wsgi"]],
        &[],
        None,
    ),
    t(
        "python-old-gunicorn",
        "python",
        Some("flask"),
        &["3.11"],
        &[&["gunicorn", "app:app"]],
        &[],
        None,
    ),
    t(
        "python-poetry-lock",
        "python",
        Some("flask"),
        PY,
        &[&["gunicorn", "app:app"]],
        &[],
        None,
    ),
    t(
        "python-uv-lock",
        "python",
        Some("flask"),
        PY,
        &[&["gunicorn", "app:app"]],
        &[],
        None,
    ),
    t(
        "python-pipenv-lock",
        "python",
        Some("flask"),
        &["3.11"],
        &[&["gunicorn", "app:app"]],
        &[],
        None,
    ),
    t(
        "python-django-whitenoise",
        "python",
        Some("django"),
        &[],
        &[&["gunicorn", "shop.wsgi"]],
        &[],
        None,
    ),
    t(
        "node-express-npm",
        "node",
        Some("express"),
        &["22", "24"],
        &[&["npm", "start"], &["node", "server"]],
        &[],
        None,
    ),
    t(
        "node-literal-port",
        "node",
        None,
        &[],
        &[&["npm", "start"], &["node", "server.js"]],
        &[],
        Some(3000),
    ),
    t(
        "node-eol-engines",
        "node",
        None,
        &["22", "24"],
        &[&["npm", "start"], &["node", "index.js"]],
        &[],
        None,
    ),
    t(
        "node-pnpm-v6",
        "node",
        None,
        &[],
        &[&["pnpm", "start"]],
        &[],
        None,
    ),
    t(
        "node-yarn-berry",
        "node",
        None,
        &[],
        &[&["yarn", "start"]],
        &[],
        None,
    ),
    t(
        "vite-spa",
        "static",
        Some("vite"),
        &[],
        &[&["nginx"], &["caddy"], &["serve"]],
        &["node index.js", "vite"],
        None,
    ),
    t(
        "sveltekit-static",
        "static",
        Some("sveltekit"),
        &[],
        &[&["nginx"], &["caddy"], &["serve"]],
        &["node index.js", "vite dev"],
        None,
    ),
    t(
        "php-laravel-vite",
        "php",
        Some("laravel"),
        &["8.2", "8.3", "8.4"],
        &[
            &["artisan", "serve"],
            &["php", "-S"],
            &["php-fpm"],
            &["nginx"],
        ],
        &["node index.js"],
        None,
    ),
    t(
        "php-heroku-procfile",
        "php",
        Some("slim"),
        &["8.2", "8.3", "8.4"],
        &[
            &["php", "-S", "public"],
            &["php-fpm"],
            &["nginx"],
            &["apache2-foreground"],
        ],
        &["heroku-php"],
        None,
    ),
    t(
        "ruby-rails-jsbundling",
        "ruby",
        Some("rails"),
        &["3.3", "3.4"],
        &[&["rails", "server"], &["puma"]],
        &["node index.js"],
        None,
    ),
    t(
        "ruby-procfile-puma",
        "ruby",
        Some("sinatra"),
        &["3.3"],
        &[&["puma"]],
        &[],
        None,
    ),
    t(
        "java-procfile-jar",
        "java",
        Some("spring-boot"),
        &["17"],
        &[&["java", "-jar"]],
        &[],
        None,
    ),
    t(
        "java-gradle-kts",
        "java",
        None,
        &["17"],
        &[&["java", "-jar"]],
        &[],
        None,
    ),
    t(
        "go-gin-templates",
        "go",
        Some("gin"),
        &["1.23"],
        &[&["server"], &["out"], &["shop"]],
        &[],
        None,
    ),
    t(
        "rust-rocket-static",
        "rust",
        Some("rocket"),
        &[],
        &[&["site"]],
        &[],
        None,
    ),
    t(
        "httpd-dockerfile",
        "static",
        None,
        &[],
        &[&["httpd"], &["base image"]],
        &[],
        Some(80),
    ),
    t(
        "dockerfile-procfile-mismatch",
        "python",
        Some("flask"),
        &[],
        &[&["gunicorn", "8000"]],
        &["python app.py"],
        Some(8000),
    ),
];

#[allow(clippy::too_many_arguments)]
const fn t(
    fixture: &'static str,
    language: &'static str,
    framework: Option<&'static str>,
    versions: &'static [&'static str],
    start: &'static [&'static [&'static str]],
    never: &'static [&'static str],
    port: Option<u16>,
) -> Truth {
    Truth {
        fixture,
        language,
        framework,
        versions,
        start,
        never,
        port,
    }
}

/// One tool's answer, normalised.
#[derive(Debug, Default)]
struct Answer {
    language: String,
    framework: Option<String>,
    version: Option<String>,
    start: String,
    port: Option<u16>,
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn deployd_answer(name: &str) -> Answer {
    match analyze(&fixture(name)) {
        Ok(p) => Answer {
            language: match (p.language, p.detected) {
                (Language::Dockerfile, Some(d)) => d.as_str().to_string(),
                (l, _) => l.as_str().to_string(),
            },
            framework: p.framework,
            version: p.version,
            start: p.start,
            port: Some(p.port),
        },
        Err(_) => Answer::default(),
    }
}

/// `nixpacks plan DIR`: providers and metadata name the language and
/// framework, the setup phase's packages carry the version, and the start
/// phase the command. Nixpacks images take $PORT; the plan states no port.
fn nixpacks_answer(bin: &Path, name: &str) -> Answer {
    let Ok(out) = Command::new(bin).arg("plan").arg(fixture(name)).output() else {
        return Answer::default();
    };
    let Ok(plan) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Answer::default();
    };
    let providers: Vec<String> = plan["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let metadata = plan["variables"]["NIXPACKS_METADATA"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut tags: Vec<String> = metadata.split(',').map(str::to_string).collect();
    tags.extend(providers);
    let language = [
        "python",
        "node",
        "go",
        "java",
        "ruby",
        "php",
        "rust",
        "staticfile",
    ]
    .iter()
    .find(|l| tags.iter().any(|t| t == *l))
    .map(|l| if *l == "staticfile" { "static" } else { l })
    .unwrap_or("")
    .to_string();
    let framework = tags
        .iter()
        .find(|t| {
            !t.is_empty()
                && t.as_str() != language
                && ![
                    "python",
                    "node",
                    "go",
                    "java",
                    "ruby",
                    "php",
                    "rust",
                    "staticfile",
                ]
                .contains(&t.as_str())
        })
        .cloned();
    let packages: Vec<String> = plan["phases"]["setup"]["nixPkgs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    // nodejs_22, python311, ruby_3_3, php83, jdk17, go_1_23: the package
    // of the language itself (a PHP app's plan carries Node's too).
    let prefix = match language.as_str() {
        "node" => "nodejs",
        "java" => "jdk",
        other => other,
    };
    let version = packages
        .iter()
        .filter(|p| !prefix.is_empty() && p.starts_with(prefix))
        .find_map(|p| {
            let digits: String = p[prefix.len()..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '_')
                .map(|c| if c == '_' { '.' } else { c })
                .collect();
            if digits.is_empty() {
                return None;
            }
            Some(
                if (language == "python" || language == "php") && !digits.contains('.') {
                    let (major, minor) = digits.split_at(1);
                    format!("{major}.{minor}")
                } else {
                    digits
                },
            )
        });
    Answer {
        language,
        framework,
        version,
        start: plan["start"]["cmd"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        port: None,
    }
}

/// Fields right, of fields judged; the framework (which nixpacks' plan
/// does not name) is judged only when `with_framework`.
fn score(truth: &Truth, a: &Answer) -> (u32, u32) {
    score_fields(truth, a, true)
}

fn score_fields(truth: &Truth, a: &Answer, with_framework: bool) -> (u32, u32) {
    let mut right = 0;
    let mut judged = 0;
    let mut judge = |ok: bool| {
        judged += 1;
        right += u32::from(ok);
    };
    judge(a.language == truth.language);
    if let Some(f) = truth.framework.filter(|_| with_framework) {
        judge(
            a.framework
                .as_deref()
                .is_some_and(|x| x.contains(f) || f.contains(x)),
        );
    }
    if !truth.versions.is_empty() {
        judge(a.version.as_deref().is_some_and(|v| {
            truth
                .versions
                .iter()
                .any(|w| v == *w || v.starts_with(&format!("{w}.")))
        }));
    }
    judge(
        truth
            .start
            .iter()
            .any(|words| words.iter().all(|w| a.start.contains(w)))
            && !truth.never.iter().any(|w| a.start.contains(w)),
    );
    judge(match truth.port {
        None => true,
        Some(p) => a.port == Some(p),
    });
    (right, judged)
}

fn main() {
    let nixpacks = std::env::var_os("NIXPACKS").map(std::path::PathBuf::from);
    let mut totals = [(0u32, 0u32, Duration::ZERO); 2];
    // Like for like with nixpacks' process per plan: deployd's binary too.
    let mut deployd_process = Duration::ZERO;
    // The same shares without the framework field.
    let mut bare = [(0u32, 0u32); 2];
    println!("{:<30} {:>10} {:>10}", "fixture", "deployd", "nixpacks");
    for truth in TRUTH {
        let started = Instant::now();
        let mine = deployd_answer(truth.fixture);
        totals[0].2 += started.elapsed();
        let started = Instant::now();
        let ran = Command::new(env!("CARGO_BIN_EXE_deployd"))
            .args(["analyze", "--json"])
            .arg(fixture(truth.fixture))
            .output();
        deployd_process += started.elapsed();
        assert!(ran.is_ok(), "deployd analyze runs");
        let (br, bj) = score_fields(truth, &mine, false);
        bare[0] = (bare[0].0 + br, bare[0].1 + bj);
        let (r, j) = score(truth, &mine);
        totals[0].0 += r;
        totals[0].1 += j;
        let theirs = nixpacks.as_ref().map(|bin| {
            let started = Instant::now();
            let a = nixpacks_answer(bin, truth.fixture);
            totals[1].2 += started.elapsed();
            let (br, bj) = score_fields(truth, &a, false);
            bare[1] = (bare[1].0 + br, bare[1].1 + bj);
            let (r, j) = score(truth, &a);
            totals[1].0 += r;
            totals[1].1 += j;
            (format!("{r}/{j}"), a)
        });
        println!(
            "{:<30} {:>10} {:>10}",
            truth.fixture,
            format!("{r}/{j}"),
            theirs.as_ref().map_or("-".to_string(), |t| t.0.clone())
        );
        if std::env::var_os("VERBOSE").is_some() {
            println!("    deployd:  {mine:?}");
            if let Some((_, a)) = &theirs {
                println!("    nixpacks: {a:?}");
            }
        }
    }
    let share = |(r, j, _): (u32, u32, Duration)| 100.0 * f64::from(r) / f64::from(j.max(1));
    let per = |(_, _, d): (u32, u32, Duration)| d.as_secs_f64() * 1000.0 / TRUTH.len() as f64;
    let process_ms = deployd_process.as_secs_f64() * 1000.0 / TRUTH.len() as f64;
    println!(
        "deployd:  {:.0}% of fields right, {:.2} ms per fixture in process, {process_ms:.2} ms as a process",
        share(totals[0]),
        per(totals[0])
    );
    match nixpacks {
        Some(_) => println!(
            "nixpacks: {:.0}% of fields right, {:.2} ms per fixture (a process per plan); deployd/nixpacks: share of right fields {:.2}x, time as processes {:.2}x",
            share(totals[1]),
            per(totals[1]),
            share(totals[0]) / share(totals[1]).max(1.0),
            process_ms / per(totals[1]).max(1e-9)
        ),
        None => println!("nixpacks: not measured (set NIXPACKS to its binary)"),
    }
    let pct = |(r, j): (u32, u32)| 100.0 * f64::from(r) / f64::from(j.max(1));
    println!(
        "without the framework field: deployd {:.0}%, nixpacks {}",
        pct(bare[0]),
        if bare[1].1 == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", pct(bare[1]))
        }
    );
}
