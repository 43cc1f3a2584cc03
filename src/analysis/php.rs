//! PHP: Composer projects; Laravel and plain PHP.

use super::*;

pub(super) fn php(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let text = s.read("composer.json").unwrap_or_default();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let version = c["require"]["php"]
        .as_str()
        .and_then(|v| version_from(v, 2))
        .unwrap_or_else(|| "8.3".into());
    s.note(
        "composer.json",
        None,
        format!("PHP {version}, dependencies with Composer"),
    );
    let laravel = c["require"].get("laravel/framework").is_some();
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
        format!("php -S 0.0.0.0:$PORT -t {docroot}")
    };
    let mut deps = vec!["composer.json".to_string()];
    if s.has("composer.lock") {
        deps.push("composer.lock".into());
    }
    Ok(BuildPlan {
        version: Some(version),
        framework: laravel.then(|| "laravel".into()),
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
