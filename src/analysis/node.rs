//! Node.js: npm, yarn and pnpm projects; Next.js, NestJS, Express and plain servers.

use super::*;

pub(super) fn node(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("package.json").unwrap_or_default();
    let pkg: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let (pm, lock, install): (&str, Option<&str>, &str) = if s.has("pnpm-lock.yaml") {
        (
            "pnpm",
            Some("pnpm-lock.yaml"),
            "corepack enable && pnpm install --frozen-lockfile",
        )
    } else if s.has("yarn.lock") {
        (
            "yarn",
            Some("yarn.lock"),
            "corepack enable && yarn install --frozen-lockfile",
        )
    } else if s.has("package-lock.json") {
        ("npm", Some("package-lock.json"), "npm ci")
    } else {
        ("npm", None, "npm install")
    };
    s.note(
        lock.unwrap_or("package.json"),
        None,
        format!("Node.js dependencies, installed with {pm}"),
    );
    let dep = |name: &str| {
        pkg["dependencies"].get(name).is_some() || pkg["devDependencies"].get(name).is_some()
    };
    let version = pkg["engines"]["node"]
        .as_str()
        .and_then(|v| version_from(v, 1))
        .or_else(|| s.read(".nvmrc").and_then(|v| version_from(v.trim(), 1)))
        .unwrap_or_else(|| "22".into());
    let run = |script: &str| match pm {
        "npm" => format!("npm run {script}"),
        other => format!("{other} run {script}"),
    };
    let script = |name: &str| pkg["scripts"][name].as_str().map(str::to_string);
    let build = script("build")
        .map(|_| vec![run("build")])
        .unwrap_or_default();
    if script("build").is_some() {
        let line = s.find_line("package.json", "\"build\"");
        s.note("package.json", line, "a build script");
    }
    let (framework, start) = if dep("next") {
        ("next", run("start"))
    } else if dep("@nestjs/core") {
        let start = if script("start:prod").is_some() {
            run("start:prod")
        } else {
            "node dist/main".into()
        };
        ("nest", start)
    } else if let Some(_start) = script("start") {
        let line = s.find_line("package.json", "\"start\"");
        s.note("package.json", line, "the start script");
        (if dep("express") { "express" } else { "" }, run("start"))
    } else {
        let main = pkg["main"].as_str().unwrap_or("index.js").to_string();
        let main = safe_name("package.json main", &main)?;
        (
            if dep("express") { "express" } else { "" },
            format!("node {main}"),
        )
    };
    if !framework.is_empty() {
        let line = s.find_line(
            "package.json",
            &format!(
                "\"{}",
                if framework == "nest" {
                    "@nestjs/core"
                } else {
                    framework
                }
            ),
        );
        s.note(
            "package.json",
            line,
            format!("{framework} in the dependencies"),
        );
    }
    let mut deps_files = vec!["package.json".to_string()];
    if let Some(l) = lock {
        deps_files.push(l.into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: (!framework.is_empty()).then(|| framework.to_string()),
        package_manager: Some(pm.into()),
        install: vec![install.into()],
        build,
        start,
        dependency_files: deps_files,
        ..BuildPlan::new(Language::Node)
    })
}
