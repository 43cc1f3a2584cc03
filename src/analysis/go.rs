//! Go modules: the main package built to one static binary.

use super::*;

pub(super) fn go(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
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
