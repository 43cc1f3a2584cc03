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
