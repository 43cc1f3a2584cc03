//! Node.js: npm, yarn and pnpm projects. A package.json is one of three
//! things: a server (Next.js, NestJS, Express, a start script...), a static
//! site built by a bundler (SvelteKit's adapter-static, Vite, Create React
//! App, Astro, Vue CLI, Parcel), served by nginx from the build output, or
//! only the front-end assets of an app whose server is another stack's
//! (Laravel, Rails, Django...), built in a stage of its own.

use super::*;

/// Dependencies that make a package a server, whatever its scripts say.
const SERVER_DEPS: &[&str] = &[
    "express",
    "fastify",
    "koa",
    "@hapi/hapi",
    "hapi",
    "restify",
    "polka",
    "next",
    "nuxt",
    "@nestjs/core",
    "@remix-run/serve",
    "@remix-run/node",
    "@sveltejs/adapter-node",
    "@astrojs/node",
];

/// Start scripts that run a bundler's development server, not an app.
const DEV_SERVERS: &[&str] = &[
    "vite",
    "react-scripts start",
    "astro dev",
    "vue-cli-service serve",
    "svelte-kit dev",
    "parcel",
    "webpack serve",
    "webpack-dev-server",
];

/// What a package.json is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    Server,
    /// A site a bundler builds: (framework, output directory).
    StaticSite(&'static str, String),
    /// Only a build of assets (or nothing runnable at all).
    Assets,
}

/// A package.json and how its package manager installs and runs it.
struct Project {
    pkg: serde_json::Value,
    pm: &'static str,
    lock: Option<&'static str>,
    /// Config the install reads (`.yarnrc.yml`, `.npmrc`).
    config: Vec<&'static str>,
    install: String,
}

/// The pnpm major that reads a lockfile version ('6.0' -> 8): pnpm 9 and
/// later refuse a v6 lock with --frozen-lockfile.
fn pnpm_major(lock: &str) -> &'static str {
    let v = lock
        .lines()
        .find_map(|l| l.strip_prefix("lockfileVersion:"))
        .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
        .unwrap_or_default();
    match v.split('.').next().unwrap_or("") {
        "5" if v.starts_with("5.3") => "6",
        "5" => "7",
        "6" => "8",
        _ => "9",
    }
}

impl Project {
    fn read(s: &Src) -> Self {
        let text = s.read("package.json").unwrap_or_default();
        let pkg: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        // `packageManager: "pnpm@8.15.4"` is what corepack would run.
        let declared = pkg["packageManager"]
            .as_str()
            .and_then(|p| p.split_once('@'))
            .and_then(|(name, v)| Some((name.to_string(), version_from(v, 1)?)));
        let declared_major = |name: &str| {
            declared
                .as_ref()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut config = vec![];
        if s.has(".npmrc") {
            config.push(".npmrc");
        }
        let (pm, lock, install) = if s.has("pnpm-lock.yaml") {
            let major = declared_major("pnpm").unwrap_or_else(|| {
                pnpm_major(&s.read("pnpm-lock.yaml").unwrap_or_default()).to_string()
            });
            (
                "pnpm",
                Some("pnpm-lock.yaml"),
                format!("npm install -g pnpm@{major} && pnpm install --frozen-lockfile"),
            )
        } else if s.has("yarn.lock") {
            // Berry's lock has a __metadata block; classic's does not.
            let berry = s
                .read("yarn.lock")
                .is_some_and(|l| l.contains("__metadata:"));
            if s.has(".yarnrc.yml") {
                config.push(".yarnrc.yml");
            }
            let install = match (berry, declared_major("yarn")) {
                (true, Some(_)) => "corepack enable && yarn install --immutable".to_string(),
                (true, None) => {
                    "corepack enable && corepack prepare yarn@stable --activate && yarn install --immutable".to_string()
                }
                // Node's images ship yarn 1, which reads a classic lock.
                (false, _) => "yarn install --frozen-lockfile".to_string(),
            };
            ("yarn", Some("yarn.lock"), install)
        } else if s.has("package-lock.json") {
            ("npm", Some("package-lock.json"), "npm ci".to_string())
        } else {
            ("npm", None, "npm install".to_string())
        };
        Self {
            pkg,
            pm,
            lock,
            config,
            install,
        }
    }

    fn dep(&self, name: &str) -> bool {
        self.pkg["dependencies"].get(name).is_some()
            || self.pkg["devDependencies"].get(name).is_some()
    }

    fn script(&self, name: &str) -> Option<&str> {
        self.pkg["scripts"][name].as_str()
    }

    fn run(&self, script: &str) -> String {
        match self.pm {
            "npm" => format!("npm run {script}"),
            other => format!("{other} run {script}"),
        }
    }

    fn version(&self, s: &mut Src) -> String {
        let declared = self.pkg["engines"]["node"]
            .as_str()
            .map(|v| ("package.json", v.to_string()))
            .or_else(|| s.read(".nvmrc").map(|v| (".nvmrc", v.trim().to_string())))
            .or_else(|| {
                s.read(".node-version")
                    .map(|v| (".node-version", v.trim().to_string()))
            });
        versions::choose(s, &versions::NODE, declared, 1)
    }

    fn dependency_files(&self) -> Vec<String> {
        let mut files = vec!["package.json".to_string()];
        files.extend(self.lock.map(str::to_string));
        files.extend(self.config.iter().map(|c| c.to_string()));
        files
    }

    /// A start script that runs an app rather than a dev server.
    fn real_start(&self) -> Option<&str> {
        self.script("start").filter(|start| {
            let start = start.trim();
            !DEV_SERVERS
                .iter()
                .any(|d| start == *d || start.starts_with(&format!("{d} ")))
        })
    }
}

/// The output directory a config file names (`key: 'dir'` or `key: "dir"`).
fn configured_dir(s: &Src, files: &[&str], key: &str) -> Option<String> {
    files.iter().find_map(|f| {
        let text = s.read(f)?;
        let at = text.find(&format!("{key}:"))? + key.len() + 1;
        let rest = text[at..].trim_start();
        let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let value = rest[1..].split(quote).next()?;
        Some(
            value
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string(),
        )
    })
}

/// Vite's output directory: `build.outDir` (default `dist`), relative to
/// its `root`; `None` when it would leave the source tree.
fn vite_out(s: &Src) -> Option<String> {
    const VITE: &[&str] = &["vite.config.js", "vite.config.ts", "vite.config.mjs"];
    let root = configured_dir(s, VITE, "root").unwrap_or_default();
    let out = configured_dir(s, VITE, "outDir").unwrap_or_else(|| "dist".into());
    let mut parts: Vec<&str> = vec![];
    for p in root.split('/').chain(out.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

pub(super) fn role(s: &Src) -> Role {
    let p = Project::read(s);
    let main_exists = p.pkg["main"].as_str().is_some_and(|m| s.has(m))
        || (p.pkg["main"].is_null() && s.has("index.js"));
    if SERVER_DEPS.iter().any(|d| p.dep(d)) || p.real_start().is_some() {
        return Role::Server;
    }
    let config = |names: &[&str], key: &str, default: &str| {
        configured_dir(s, names, key).unwrap_or_else(|| default.to_string())
    };
    let site = if p.dep("@sveltejs/adapter-static") {
        Some((
            "sveltekit",
            config(&["svelte.config.js", "svelte.config.mjs"], "pages", "build"),
        ))
    } else if p.dep("astro") {
        Some((
            "astro",
            config(&["astro.config.mjs", "astro.config.ts"], "outDir", "dist"),
        ))
    } else if p.dep("react-scripts") {
        Some(("create-react-app", "build".to_string()))
    } else if p.dep("@vue/cli-service") {
        Some(("vue", "dist".to_string()))
    } else if p.dep("vite") {
        Some(("vite", vite_out(s).unwrap_or_else(|| "dist".into())))
    } else if p.dep("parcel") {
        Some(("parcel", "dist".to_string()))
    } else {
        None
    };
    match site {
        Some((framework, out)) if p.script("build").is_some() => Role::StaticSite(framework, out),
        // A plain script: `node index.js` runs it.
        _ if main_exists => Role::Server,
        _ => Role::Assets,
    }
}

pub(super) fn node(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let p = Project::read(s);
    s.note(
        p.lock.unwrap_or("package.json"),
        None,
        format!("Node.js dependencies, installed with {}", p.pm),
    );
    let version = p.version(s);
    let build = p
        .script("build")
        .map(|_| vec![p.run("build")])
        .unwrap_or_default();
    if p.script("build").is_some() {
        let line = s.find_line("package.json", "\"build\"");
        s.note("package.json", line, "a build script");
    }
    let express = if p.dep("express") { "express" } else { "" };
    let (framework, start) = if p.dep("next") {
        ("next", p.run("start"))
    } else if p.dep("@nestjs/core") {
        let start = if p.script("start:prod").is_some() {
            p.run("start:prod")
        } else {
            "node dist/main".into()
        };
        ("nest", start)
    } else if p.real_start().is_some() {
        let line = s.find_line("package.json", "\"start\"");
        s.note("package.json", line, "the start script");
        (express, p.run("start"))
    } else {
        let main = p.pkg["main"].as_str().unwrap_or("index.js").to_string();
        let main = safe_name("package.json main", &main)?;
        // Never a start command naming a file that is not there.
        if !s.has(&main) {
            return Err(AnalyzeError::NoStart {
                file: "package.json".into(),
                reason: format!(
                    "it has no start script and no server dependency, and {main} (the file `node` would run) does not exist"
                ),
            });
        }
        (express, format!("node {main}"))
    };
    if !framework.is_empty() {
        let needle = if framework == "nest" {
            "@nestjs/core"
        } else {
            framework
        };
        let line = s.find_line("package.json", &format!("\"{needle}"));
        s.note(
            "package.json",
            line,
            format!("{framework} in the dependencies"),
        );
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: (!framework.is_empty()).then(|| framework.to_string()),
        package_manager: Some(p.pm.into()),
        install: vec![p.install.clone()],
        build,
        start,
        dependency_files: p.dependency_files(),
        ..BuildPlan::new(Language::Node)
    })
}

/// A site the bundler builds into `out`, served by nginx.
pub(super) fn static_site(
    s: &mut Src,
    framework: &'static str,
    out: &str,
) -> Result<BuildPlan, AnalyzeError> {
    let out = safe_name("the build's output directory", out)?;
    let line = s.find_line("package.json", "\"build\"");
    s.note(
        "package.json",
        line,
        format!(
            "a {framework} build with no server: its output ({out}/) is served as a static site"
        ),
    );
    let assets = asset_build(s, out.clone())?;
    Ok(BuildPlan {
        version: Some("1".into()),
        framework: Some(framework.into()),
        package_manager: Some(assets.package_manager.clone()),
        build: assets.build.clone(),
        start: "nginx -g 'daemon off;'".into(),
        static_dir: Some(out),
        assets: Some(assets),
        ..BuildPlan::new(Language::Static)
    })
}

/// The front-end build of `package.json`, writing into `out`.
pub(super) fn asset_build(s: &mut Src, out: String) -> Result<AssetBuild, AnalyzeError> {
    let p = Project::read(s);
    let out = safe_name("the asset build's output directory", &out)?;
    Ok(AssetBuild {
        package_manager: p.pm.into(),
        node_version: p.version(s),
        install: vec![p.install.clone()],
        build: vec![p.run("build")],
        dependency_files: p.dependency_files(),
        output: out,
    })
}

/// Assets for another stack's server, when package.json builds some:
/// where Laravel's Vite plugin, Rails' jsbundling or a plain bundler put
/// them.
pub(super) fn assets_for(
    s: &mut Src,
    language: Language,
) -> Result<Option<AssetBuild>, AnalyzeError> {
    if !s.has("package.json") || role(s) == Role::Server {
        return Ok(None);
    }
    let p = Project::read(s);
    if p.script("build").is_none() {
        return Ok(None);
    }
    let out = match language {
        Language::Php if p.dep("laravel-vite-plugin") => "public/build".to_string(),
        Language::Ruby => "app/assets/builds".to_string(),
        _ => vite_out(s).unwrap_or_else(|| "dist".to_string()),
    };
    let line = s.find_line("package.json", "\"build\"");
    s.note(
        "package.json",
        line,
        format!(
            "front-end assets only (no server in package.json): built in a stage of their own into {out}/; the {} app serves them",
            language.as_str()
        ),
    );
    asset_build(s, out).map(Some)
}
