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
    let version = java_version(s, file, &text);
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

/// A Java release from how build files write it: `17`, `1.8`,
/// `JavaVersion.VERSION_17`, `VERSION_1_8`, `JavaLanguageVersion.of(21)`.
fn java_release(v: &str) -> Option<String> {
    let v = v.replace("VERSION_1_", "1.").replace('_', ".");
    let start = v.find(|c: char| c.is_ascii_digit())?;
    let digits: Vec<&str> = v[start..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .split('.')
        .collect();
    match digits.as_slice() {
        ["1", minor, ..] => Some(minor.to_string()),
        [major, ..] if !major.is_empty() => Some(major.to_string()),
        _ => None,
    }
}

/// system.properties (Heroku's pin) first, then the build file's toolchain,
/// release or source compatibility.
fn java_version(s: &mut Src, file: &'static str, text: &str) -> String {
    let props = s.read("system.properties").and_then(|p| {
        p.lines()
            .find_map(|l| l.trim().strip_prefix("java.runtime.version"))
            .and_then(|v| java_release(v.trim_start_matches([' ', '=', ':'])))
    });
    let build = text.lines().find_map(|l| {
        let l = l.trim();
        let v = l
            .strip_prefix("<java.version>")
            .or_else(|| l.strip_prefix("<maven.compiler.release>"))
            .or_else(|| l.strip_prefix("<maven.compiler.source>"))
            .or_else(|| l.contains("languageVersion").then_some(l))
            .or_else(|| {
                let t = l.trim_start_matches("java.");
                (t.starts_with("sourceCompatibility") || t.starts_with("targetCompatibility"))
                    .then_some(t)
            })
            .or_else(|| l.contains("jvmToolchain(").then_some(l))?;
        java_release(
            v.trim_start_matches("languageVersion")
                .trim_start_matches("sourceCompatibility"),
        )
    });
    let declared = props
        .map(|v| ("system.properties", v))
        .or_else(|| build.map(|v| (file, v)));
    versions::choose(s, &versions::JAVA, declared, 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn java_releases_are_read_in_every_spelling() {
        for (text, want) in [
            ("17", "17"),
            ("1.8", "8"),
            ("JavaVersion.VERSION_17", "17"),
            ("JavaVersion.VERSION_1_8", "8"),
            ("= JavaLanguageVersion.of(21)", "21"),
            (".set(JavaLanguageVersion.of(11))", "11"),
            ("'11'", "11"),
        ] {
            assert_eq!(super::java_release(text).as_deref(), Some(want), "{text}");
        }
    }
}
