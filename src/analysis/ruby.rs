//! Ruby: Bundler projects; Rails, Sinatra and other Rack apps. Servers run
//! in production (RAILS_ENV/RACK_ENV), Rails precompiles its assets, and
//! gems with C extensions are compiled in a stage of their own.

use super::*;

/// Gems that compile a C extension on install, and the -dev package (and
/// runtime library) each compiles against beyond a compiler.
const NATIVE_GEMS: &[(&str, &[&str], &[&str])] = &[
    ("pg", &["libpq-dev"], &["libpq5"]),
    ("mysql2", &["default-libmysqlclient-dev"], &["libmariadb3"]),
    ("psych", &["libyaml-dev"], &["libyaml-0-2"]),
    ("puma", &[], &[]),
    ("nio4r", &[], &[]),
    ("bootsnap", &[], &[]),
    ("bcrypt", &[], &[]),
    ("msgpack", &[], &[]),
    ("websocket-driver", &[], &[]),
    ("racc", &[], &[]),
    ("date", &[], &[]),
    ("json", &[], &[]),
    ("bigdecimal", &[], &[]),
    ("io-console", &[], &[]),
    ("ffi", &[], &[]),
    ("thin", &[], &[]),
    ("eventmachine", &[], &[]),
    ("debug", &[], &[]),
    ("byebug", &[], &[]),
];

/// Gem names in the lock's specs (`    name (version)`), or the Gemfile's
/// `gem` lines when there is no lock.
fn gems(s: &Src) -> Vec<String> {
    if let Some(lock) = s.read("Gemfile.lock") {
        return lock
            .lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
    }
    s.read("Gemfile")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("gem ")?;
            Some(
                rest.split(',')
                    .next()?
                    .trim()
                    .trim_matches(['"', '\''])
                    .to_string(),
            )
        })
        .collect()
}

fn ruby_version(s: &mut Src, gemfile: &str) -> String {
    // The lock records the Ruby it was resolved with; it beats the
    // Gemfile's range.
    let locked = s.read("Gemfile.lock").and_then(|l| {
        let mut lines = l.lines().skip_while(|x| x.trim() != "RUBY VERSION");
        lines
            .nth(1)
            .map(|v| v.trim().trim_start_matches("ruby ").to_string())
    });
    let declared = s
        .read(".ruby-version")
        .map(|v| {
            (
                ".ruby-version",
                v.trim().trim_start_matches("ruby-").to_string(),
            )
        })
        .or_else(|| {
            locked.map(|v| {
                (
                    "Gemfile.lock",
                    v.split('p').next().unwrap_or(&v).to_string(),
                )
            })
        })
        .or_else(|| {
            gemfile
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("ruby "))
                .map(|v| {
                    let v = v.split(',').next().unwrap_or(v);
                    (
                        "Gemfile",
                        v.trim().trim_matches(['"', '\'']).replace("~>", "~="),
                    )
                })
        });
    versions::choose(s, &versions::RUBY, declared, 2)
}

pub(super) fn ruby(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let gemfile = s.read("Gemfile").unwrap_or_default();
    let version = ruby_version(s, &gemfile);
    s.note("Gemfile", None, "Ruby gems, installed with Bundler");
    let gem = |name: &str| {
        gemfile.lines().any(|l| {
            l.trim_start().starts_with(&format!("gem \"{name}\""))
                || l.trim_start().starts_with(&format!("gem '{name}'"))
        })
    };
    let mut build = vec![];
    let (framework, start) = if gem("rails") {
        let line = s.find_line("Gemfile", "rails");
        s.note("Gemfile", line, "Rails");
        if s.dir.join("app/assets").is_dir() || gem("propshaft") || gem("sprockets-rails") {
            // A dummy key: precompiling needs one, and the real key is a
            // runtime secret. The JS/CSS builds run in the assets stage.
            let skip = if s.has("package.json") {
                "SKIP_JS_BUILD=1 SKIP_CSS_BUILD=1 "
            } else {
                ""
            };
            build.push(format!(
                "{skip}SECRET_KEY_BASE_DUMMY=1 bundle exec rails assets:precompile"
            ));
            s.note(
                if s.dir.join("app/assets").is_dir() {
                    "app/assets"
                } else {
                    "Gemfile"
                },
                None,
                "assets are precompiled at build time",
            );
        }
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
    let mut native = NativeDeps::default();
    let installed = gems(s);
    for (name, build_pkgs, runtime) in NATIVE_GEMS {
        if installed.iter().any(|g| g == name) {
            native.because.push(name.to_string());
            native
                .build
                .extend(build_pkgs.iter().map(|p| p.to_string()));
            native.runtime.extend(runtime.iter().map(|p| p.to_string()));
        }
    }
    let native = (!native.because.is_empty()).then(|| {
        native.build.insert(0, "build-essential".into());
        let file = if s.has("Gemfile.lock") {
            "Gemfile.lock"
        } else {
            "Gemfile"
        };
        s.note(
            file,
            None,
            format!(
                "{} compile C extensions: gems are built in a stage with a compiler",
                native.because.join(", ")
            ),
        );
        native
    });
    let mut plan = BuildPlan {
        version: Some(version),
        framework: Some(framework.into()),
        package_manager: Some("bundler".into()),
        install: vec![
            "bundle config set --local without 'development test'".into(),
            "bundle install".into(),
        ],
        build,
        start,
        dependency_files: deps,
        native,
        ..BuildPlan::new(Language::Ruby)
    };
    // Development mode binds to localhost only.
    super::procfile::production_ruby(&mut plan);
    if framework == "rails" {
        plan.env.push(("RAILS_LOG_TO_STDOUT".into(), "1".into()));
        plan.env
            .push(("RAILS_SERVE_STATIC_FILES".into(), "1".into()));
    }
    Ok(plan)
}
