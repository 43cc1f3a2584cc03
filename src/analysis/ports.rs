//! The port the container listens on. Cloud Run sends traffic to the
//! container port and tells the app through $PORT (8080 unless set). A
//! platform file that states the port (fly.toml, render.yaml, app.json)
//! sets it; an entry file that listens on a literal port and never reads
//! PORT breaks the contract, so the container port follows the literal and
//! a warning names the line.

use std::sync::LazyLock;

use regex::Regex;

use super::*;

pub(super) fn decide(s: &mut Src, plan: &mut BuildPlan) {
    if let Some((file, port)) = platform_port(s) {
        s.note(
            file,
            None,
            format!("the platform file says the app listens on {port}"),
        );
        plan.port = port;
    }
    if let Some((file, line, port)) = literal_listen(s, plan) {
        plan.port = port;
        s.warn(
            &file,
            Some(line),
            format!(
                "the app listens on {port} whatever $PORT says: the container port is set to {port} so Cloud Run reaches it; read the PORT environment variable to follow Cloud Run's contract"
            ),
        );
    }
}

/// A port stated by fly.toml (`internal_port`), render.yaml (a PORT env
/// var) or app.json (its PORT env).
fn platform_port(s: &Src) -> Option<(&'static str, u16)> {
    if let Some(port) = s.read("fly.toml").and_then(|t| {
        let doc: toml::Value = toml::from_str(&t).ok()?;
        doc.get("http_service")
            .and_then(|h| h.get("internal_port"))
            .or_else(|| {
                doc.get("services")?
                    .as_array()?
                    .first()?
                    .get("internal_port")
            })?
            .as_integer()
            .and_then(|p| u16::try_from(p).ok())
    }) {
        return Some(("fly.toml", port));
    }
    if let Some(port) = s.read("render.yaml").and_then(|t| {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&t).ok()?;
        doc.get("services")?.as_sequence()?.iter().find_map(|svc| {
            svc.get("envVars")?.as_sequence()?.iter().find_map(|v| {
                (v.get("key")?.as_str()? == "PORT").then(|| port_of(v.get("value")?))?
            })
        })
    }) {
        return Some(("render.yaml", port));
    }
    if let Some(port) = s.read("app.json").and_then(|t| {
        let doc: serde_json::Value = serde_json::from_str(&t).ok()?;
        let p = &doc["env"]["PORT"];
        p["value"]
            .as_str()
            .or(p.as_str())
            .and_then(|v| v.parse().ok())
    }) {
        return Some(("app.json", port));
    }
    None
}

fn port_of(v: &serde_yaml_ng::Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .or_else(|| v.as_str()?.parse().ok())
}

static NODE_LISTEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\.listen\(\s*(\d{2,5})\b|\b(?:const|let|var)\s+(?i:port)\s*=\s*(\d{2,5})\s*;?\s*$")
        .expect("valid regex")
});
static GO_LISTEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:ListenAndServe(?:TLS)?|\.Run|\.Start|\.Listen)\(\s*"[\w.\[\]:]*:(\d{2,5})""#)
        .expect("valid regex")
});
static PY_LISTEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\.run\(.*\bport\s*=\s*(\d{2,5})\b").expect("valid regex"));

/// The entry files of the app and how each reads PORT.
fn entry_files(s: &Src, plan: &BuildPlan) -> Vec<String> {
    match plan.language {
        Language::Node => {
            let mut files: Vec<String> = plan
                .start
                .split_whitespace()
                .skip_while(|w| *w != "node")
                .nth(1)
                .map(|f| f.to_string())
                .into_iter()
                .collect();
            for f in [
                "index.js",
                "server.js",
                "app.js",
                "src/index.js",
                "src/server.js",
                "src/main.ts",
                "src/index.ts",
            ] {
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
            files
        }
        Language::Go => s.files_with_ext("", ".go"),
        Language::Python if plan.start.starts_with("python ") => plan
            .start
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
            .into_iter()
            .collect(),
        _ => vec![],
    }
}

fn reads_port(text: &str) -> bool {
    [
        "process.env.PORT",
        "process.env[\"PORT\"]",
        "process.env['PORT']",
        "Getenv(\"PORT\")",
        "LookupEnv(\"PORT\")",
    ]
    .iter()
    .any(|r| text.contains(r))
        || (text.contains("environ") && (text.contains("\"PORT\"") || text.contains("'PORT'")))
}

/// (file, line, port) of a literal listen in an entry file that never
/// reads PORT.
fn literal_listen(s: &Src, plan: &BuildPlan) -> Option<(String, usize, u16)> {
    let re: &Regex = match plan.language {
        Language::Node => &NODE_LISTEN,
        Language::Go => &GO_LISTEN,
        Language::Python => &PY_LISTEN,
        _ => return None,
    };
    for file in entry_files(s, plan) {
        let Some(text) = s.read(&file) else { continue };
        if reads_port(&text) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let found = re
                .captures(line)
                .and_then(|c| c.get(1).or(c.get(2)))
                .and_then(|m| m.as_str().parse::<u16>().ok());
            if let Some(port) = found {
                return Some((file, i + 1, port));
            }
        }
    }
    None
}
