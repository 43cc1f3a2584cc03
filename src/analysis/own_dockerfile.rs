//! An app that brings its own Dockerfile keeps it. The plan still says
//! what the repository is (the stack found beside the Dockerfile) and what
//! the image really does: the final stage's ENTRYPOINT/CMD, EXPOSE (or the
//! port its base image listens on) and USER, and warns about bases that
//! only work on another platform.

use super::*;

/// One instruction, continuation lines joined.
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = vec![];
    let mut pending: Option<Instruction> = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if pending.is_none() && (l.is_empty() || l.starts_with('#')) {
            continue;
        }
        let (body, continued) = match l.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (l, false),
        };
        match &mut pending {
            Some(p) => {
                if !body.starts_with('#') {
                    p.args.push(' ');
                    p.args.push_str(body);
                }
            }
            None => {
                let (k, a) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                pending = Some(Instruction {
                    line: i + 1,
                    keyword: k.to_ascii_uppercase(),
                    args: a.trim().to_string(),
                });
            }
        }
        if !continued {
            out.extend(pending.take());
        }
    }
    out.extend(pending);
    out
}

/// Exec form shown as words; shell form as written.
fn command_text(args: &str) -> String {
    serde_json::from_str::<Vec<String>>(args)
        .map(|v| v.join(" "))
        .unwrap_or_else(|_| args.to_string())
}

/// The port a base image's server listens on when nothing says otherwise.
fn base_port(image: &str) -> Option<u16> {
    let name = image.split([':', '@']).next().unwrap_or(image);
    let name = name.rsplit('/').next().unwrap_or(name);
    let tag = image.split(':').nth(1).unwrap_or("");
    match name {
        "nginx" | "httpd" | "caddy" => Some(80),
        "nginx-unprivileged" => Some(8080),
        "php" if tag.contains("apache") => Some(80),
        "tomcat" => Some(8080),
        _ => None,
    }
}

/// Bases and steps that assume Heroku or a buildpack platform.
fn foreign(image: &str, run: &str) -> Option<String> {
    if image.starts_with("heroku/") || image.contains("herokuish") {
        return Some(format!(
            "{image} is a Heroku stack image: it expects Heroku's build and run steps"
        ));
    }
    if image.starts_with("paketobuildpacks/") || image.starts_with("gcr.io/buildpacks/") {
        return Some(format!(
            "{image} is a buildpack builder image: it builds with `pack`, not `docker build`"
        ));
    }
    let r = run.to_ascii_lowercase();
    (r.contains("buildpack") && (r.contains("curl") || r.contains("wget") || r.contains("git clone")))
        .then(|| "this step downloads a buildpack: buildpacks run on their own platform, not inside a Docker build".into())
}

pub(super) fn report(s: &mut Src, web: Option<&(usize, String)>) -> BuildPlan {
    let text = s.read("Dockerfile").unwrap_or_default();
    s.note("Dockerfile", None, "the app's own Dockerfile is used as is");
    // The stack beside it, for the report only; its own problems do not
    // matter here.
    let mut beside = Src {
        dir: s.dir,
        evidence: vec![],
        warnings: vec![],
    };
    let stack = detect(&mut beside).ok();
    if let Some(p) = &stack {
        s.evidence.extend(beside.evidence);
        s.note(
            "Dockerfile",
            None,
            format!("the repository is a {} app", p.language.as_str()),
        );
    }
    let all = instructions(&text);
    // The final stage is what runs.
    let last_from = all.iter().rposition(|i| i.keyword == "FROM").unwrap_or(0);
    let mut base = None;
    let (mut entrypoint, mut cmd, mut expose, mut user) = (None, None, None, None);
    for (n, ins) in all.iter().enumerate() {
        if ins.keyword == "FROM" {
            let image = ins
                .args
                .split_whitespace()
                .find(|w| !w.starts_with("--"))
                .unwrap_or("")
                .to_string();
            if let Some(why) = foreign(&image, "") {
                s.warn("Dockerfile", Some(ins.line), why);
            }
            if n == last_from {
                base = Some(image);
            }
        }
        if ins.keyword == "RUN" {
            if let Some(why) = foreign("", &ins.args) {
                s.warn("Dockerfile", Some(ins.line), why);
            }
        }
        if n < last_from {
            continue;
        }
        match ins.keyword.as_str() {
            "ENTRYPOINT" => entrypoint = Some((ins.line, command_text(&ins.args))),
            "CMD" => cmd = Some((ins.line, command_text(&ins.args))),
            "EXPOSE" => {
                expose = ins
                    .args
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.split('/').next()?.parse::<u16>().ok())
                    .map(|p| (ins.line, p))
            }
            "USER" => user = Some((ins.line, ins.args.clone())),
            _ => {}
        }
    }
    let start = match (&entrypoint, &cmd) {
        (Some((l, e)), Some((_, c))) => Some((*l, format!("{e} {c}"))),
        (Some((l, e)), None) => Some((*l, e.clone())),
        (None, Some((l, c))) => Some((*l, c.clone())),
        (None, None) => None,
    };
    if let Some((l, _)) = &start {
        s.note("Dockerfile", Some(*l), "the image's start command");
    }
    let port = match (expose, base.as_deref().and_then(base_port)) {
        (Some((l, p)), _) => {
            s.note("Dockerfile", Some(l), format!("EXPOSE {p}"));
            p
        }
        (None, Some(p)) => {
            let image = base.clone().unwrap_or_default();
            s.note(
                "Dockerfile",
                None,
                format!("no EXPOSE: {image} listens on {p}"),
            );
            p
        }
        (None, None) => 8080,
    };
    if let Some((l, u)) = &user {
        s.note("Dockerfile", Some(*l), format!("runs as {u}"));
    }
    if let (Some((pl, w)), Some((_, st))) = (web, &start) {
        if w != st {
            s.warn(
                "Procfile",
                Some(*pl),
                format!("the Procfile's web process ({w}) is not what the image runs: the Dockerfile starts {st}"),
            );
        }
    }
    BuildPlan {
        // A static site's "version" is the nginx deployd would have used.
        version: stack
            .as_ref()
            .filter(|p| p.language != Language::Static)
            .and_then(|p| p.version.clone()),
        framework: stack.as_ref().and_then(|p| p.framework.clone()),
        package_manager: stack.as_ref().and_then(|p| p.package_manager.clone()),
        start: start
            .map(|(_, c)| c)
            .unwrap_or_else(|| "(the base image's command)".into()),
        port,
        user: user.map(|(_, u)| u),
        detected: stack.map(|p| p.language),
        ..BuildPlan::new(Language::Dockerfile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stage_decides_what_runs() {
        let text = "FROM golang:1.23 AS build\nCMD [\"go\", \"run\"]\nEXPOSE 1234\n\nFROM nginx:1-alpine\nCOPY --from=build \\\n  /out /usr/share/nginx/html\nUSER nginx\n";
        let all = instructions(text);
        assert_eq!(all.len(), 6);
        assert_eq!(all[4].args, "--from=build /out /usr/share/nginx/html");
        assert_eq!(base_port("nginx:1-alpine"), Some(80));
        assert_eq!(base_port("docker.io/library/httpd:2.4"), Some(80));
        assert_eq!(base_port("php:8.3-apache"), Some(80));
        assert_eq!(base_port("python:3.12-slim"), None);
    }
}
