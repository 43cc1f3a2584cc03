//! Ruby: Bundler projects; Rails, Sinatra and other Rack apps.

use super::*;

pub(super) fn ruby(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
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
