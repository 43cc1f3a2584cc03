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
    let (pkg, main_file) = main_package(s);
    let pkg = safe_name("main package", &pkg)?;
    s.note(&main_file, None, "the main package");
    let framework = GO_FRAMEWORKS
        .iter()
        .find(|(module, _)| {
            gomod.lines().any(|l| {
                l.trim_start().starts_with(module) || l.contains(&format!("require {module}"))
            })
        })
        .map(|(module, name)| {
            let line = s.find_line("go.mod", module);
            s.note("go.mod", line, format!("the {name} web framework"));
            name.to_string()
        });
    let runtime_dirs = runtime_dirs(s);
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
        framework,
        runtime_dirs,
        ..BuildPlan::new(Language::Go)
    })
}

const GO_FRAMEWORKS: &[(&str, &str)] = &[
    ("github.com/gin-gonic/gin", "gin"),
    ("github.com/go-chi/chi", "chi"),
    ("github.com/labstack/echo", "echo"),
    ("github.com/gofiber/fiber", "fiber"),
    ("github.com/gorilla/mux", "gorilla"),
];

/// The main package (`.` or `./cmd/NAME`) and the file holding `func
/// main`, which need not be main.go.
fn main_package(s: &Src) -> (String, String) {
    let has_main = |dir: &str| {
        s.files_with_ext(dir, ".go").into_iter().find(|f| {
            !f.ends_with("_test.go")
                && s.read(f).is_some_and(|t| {
                    t.lines().any(|l| l.trim() == "package main")
                        && t.lines().any(|l| l.starts_with("func main()"))
                })
        })
    };
    if let Some(f) = has_main("") {
        return (".".into(), f);
    }
    let mut cmds: Vec<String> = fs::read_dir(s.dir.join("cmd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    cmds.sort();
    for c in cmds {
        if let Some(f) = has_main(&format!("cmd/{c}")) {
            return (format!("./cmd/{c}"), f);
        }
    }
    (".".into(), "go.mod".into())
}

/// Directories a compiled app commonly reads at run time, relative to its
/// working directory: they go into the runtime image beside the binary.
pub(super) fn runtime_dirs(s: &mut Src) -> Vec<String> {
    let dirs: Vec<String> = ["templates", "static", "public", "assets", "views", "web"]
        .into_iter()
        .filter(|d| s.dir.join(d).is_dir())
        .map(str::to_string)
        .collect();
    for d in &dirs {
        s.note(
            d,
            None,
            format!("{d}/ is read at run time: copied into the image beside the binary"),
        );
    }
    dirs
}
