//! A Procfile's `web:` line is the app's intent, written for Heroku. It is
//! translated to the image deployd builds: artifact paths become where the
//! image puts them, Heroku-only programs become a real server with the same
//! document root, and Ruby servers run in production.

use super::*;

/// `web: <command>` and its line, noted as evidence.
pub(super) fn web(s: &mut Src) -> Option<(usize, String)> {
    let text = s.read("Procfile")?;
    let (i, cmd) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.strip_prefix("web:").map(|c| (i, c.trim().to_string())))?;
    if cmd.is_empty() {
        return None;
    }
    s.note(
        "Procfile",
        Some(i + 1),
        "the web process type decides the start command",
    );
    Some((i + 1, cmd))
}

/// Jar paths a Procfile names that the image keeps at /app/app.jar.
fn jar_path(word: &str) -> bool {
    (word.starts_with("target/") || word.starts_with("build/libs/")) && word.ends_with(".jar")
}

/// The web command as it must read in the generated image.
pub(super) fn translate(
    s: &mut Src,
    plan: &mut BuildPlan,
    line: usize,
    cmd: String,
) -> Result<String, AnalyzeError> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match plan.language {
        Language::Java if words.iter().any(|w| jar_path(w)) => {
            let out: Vec<&str> = words
                .iter()
                .map(|w| if jar_path(w) { "/app/app.jar" } else { w })
                .collect();
            s.note(
                "Procfile",
                Some(line),
                "the jar it names is copied to /app/app.jar in the image",
            );
            Ok(out.join(" "))
        }
        Language::Php => {
            let Some(at) = words.iter().position(|w| {
                w.starts_with("heroku-php-apache2") || w.starts_with("heroku-php-nginx")
            }) else {
                return Ok(cmd);
            };
            // The document root is the first argument that is not an option.
            let docroot = words[at + 1..]
                .iter()
                .find(|w| !w.starts_with('-'))
                .map(|d| d.trim_end_matches('/'))
                .unwrap_or(".");
            let docroot = safe_name("Procfile", docroot)?;
            s.note(
                "Procfile",
                Some(line),
                format!(
                    "{} exists only on Heroku: PHP's own server serves {docroot}/ on $PORT instead",
                    words[at]
                ),
            );
            plan.static_dir = Some(docroot.clone());
            Ok(format!("php -S 0.0.0.0:$PORT -t {docroot}"))
        }
        Language::Ruby => {
            // Without a production environment Rails and Rack bind to
            // localhost only, which Cloud Run cannot reach.
            s.note(
                "Procfile",
                Some(line),
                "run in production (RAILS_ENV and RACK_ENV), so the server binds to all interfaces",
            );
            production_ruby(plan);
            Ok(cmd)
        }
        _ => Ok(cmd),
    }
}

/// RAILS_ENV and RACK_ENV set to production in the image.
pub(super) fn production_ruby(plan: &mut BuildPlan) {
    for name in ["RAILS_ENV", "RACK_ENV"] {
        if !plan.env.iter().any(|(n, _)| n == name) {
            plan.env.push((name.into(), "production".into()));
        }
    }
}
