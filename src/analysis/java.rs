//! Java: Maven and Gradle builds to one runnable jar.

use super::*;

pub(super) fn java(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let (tool, file) = if s.has("pom.xml") {
        ("maven", "pom.xml")
    } else if s.has("build.gradle.kts") {
        ("gradle", "build.gradle.kts")
    } else {
        ("gradle", "build.gradle")
    };
    let text = s.read(file).unwrap_or_default();
    let spring = text.contains("spring-boot");
    let version = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("<java.version>")
                .or_else(|| l.strip_prefix("<maven.compiler.release>"))
                .or_else(|| l.contains("languageVersion").then_some(l))
                .or_else(|| l.starts_with("sourceCompatibility").then_some(l))
        })
        .and_then(|v| version_from(v.trim_start_matches("languageVersion"), 1))
        .unwrap_or_else(|| "21".into());
    s.note(file, None, format!("Java {version}, built with {tool}"));
    if spring {
        let line = s.find_line(file, "spring-boot");
        s.note(file, line, "Spring Boot");
    }
    let (build, jar_glob, deps) = match tool {
        "maven" if s.has("mvnw") => (
            "./mvnw -q -DskipTests package",
            "target/*.jar",
            vec!["pom.xml".to_string()],
        ),
        "maven" => (
            "mvn -q -DskipTests package",
            "target/*.jar",
            vec!["pom.xml".to_string()],
        ),
        _ if s.has("gradlew") => (
            "./gradlew --no-daemon -q build -x test",
            "build/libs/*.jar",
            vec![file.to_string()],
        ),
        _ => (
            "gradle --no-daemon -q build -x test",
            "build/libs/*.jar",
            vec![file.to_string()],
        ),
    };
    Ok(BuildPlan {
        version: Some(version),
        framework: spring.then(|| "spring-boot".into()),
        package_manager: Some(tool.into()),
        build: vec![build.into()],
        start: "java -Dserver.port=$PORT -jar /app/app.jar".into(),
        dependency_files: deps,
        artifact: Some(jar_glob.into()),
        ..BuildPlan::new(Language::Java)
    })
}
