//! Rust: a Cargo binary crate.

use super::*;

pub(super) fn rust(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
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
    let deps_section = text
        .split("[dependencies]")
        .nth(1)
        .map(|rest| rest.split("\n[").next().unwrap_or(rest).to_string())
        .unwrap_or_default();
    let framework = ["axum", "actix-web", "rocket", "warp", "poem"]
        .into_iter()
        .find(|f| {
            deps_section.lines().any(|l| {
                l.trim_start().starts_with(&format!("{f} "))
                    || l.trim_start().starts_with(&format!("{f}="))
            })
        });
    let mut env = vec![];
    let mut start = format!("/app/{name}");
    if let Some(f) = framework {
        let line = s.find_line("Cargo.toml", f);
        s.note("Cargo.toml", line, format!("the {f} web framework"));
        if f == "rocket" {
            // Rocket reads ROCKET_ADDRESS/ROCKET_PORT, not PORT.
            env.push(("ROCKET_ADDRESS".to_string(), "0.0.0.0".to_string()));
            start = format!("env ROCKET_PORT=$PORT /app/{name}");
        }
    }
    let runtime_dirs = super::go::runtime_dirs(s);
    let mut deps = vec!["Cargo.toml".to_string()];
    if s.has("Cargo.lock") {
        deps.push("Cargo.lock".into());
    }
    Ok(BuildPlan {
        version: Some("1".into()),
        package_manager: Some("cargo".into()),
        build: vec![format!("cargo build --release --bin {name}")],
        start,
        framework: framework.map(str::to_string),
        env,
        runtime_dirs,
        dependency_files: deps,
        artifact: Some(name),
        ..BuildPlan::new(Language::Rust)
    })
}
