//! PHP: Composer projects; Laravel and plain PHP.

use super::*;

pub(super) fn php(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("composer.json").unwrap_or_default();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let declared = c["require"]["php"].as_str().map(|v| {
        (
            "composer.json",
            v.replace('|', " || ").replace("||  ||", "||"),
        )
    });
    let version = versions::choose(s, &versions::PHP, declared, 2);
    s.note(
        "composer.json",
        None,
        format!("PHP {version}, dependencies with Composer"),
    );
    let laravel = c["require"].get("laravel/framework").is_some();
    // Front-controller frameworks whose document root is public/.
    let other = [
        ("symfony/framework-bundle", "symfony"),
        ("slim/slim", "slim"),
    ]
    .into_iter()
    .find(|(pkg, _)| c["require"].get(*pkg).is_some());
    let docroot = if s.dir.join("public").is_dir() {
        "public"
    } else {
        "."
    };
    let start = if laravel {
        let line = s.find_line("composer.json", "laravel/framework");
        s.note("composer.json", line, "Laravel");
        "php artisan serve --host=0.0.0.0 --port=$PORT".to_string()
    } else {
        if let Some((pkg, _)) = other {
            let line = s.find_line("composer.json", pkg);
            s.note(
                "composer.json",
                line,
                format!("{pkg}: served from {docroot}/"),
            );
        }
        format!("php -S 0.0.0.0:$PORT -t {docroot}")
    };
    let mut deps = vec!["composer.json".to_string()];
    if s.has("composer.lock") {
        deps.push("composer.lock".into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: if laravel {
            Some("laravel".into())
        } else {
            other.map(|(_, f)| f.to_string())
        },
        package_manager: Some("composer".into()),
        install: vec![
            "composer install --no-dev --no-interaction --prefer-dist --no-scripts".into(),
        ],
        start,
        dependency_files: deps,
        static_dir: Some(docroot.into()),
        ..BuildPlan::new(Language::Php)
    })
}
