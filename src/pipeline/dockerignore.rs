//! `.dockerignore` with Docker's own semantics (moby/patternmatcher), not
//! gitignore's: patterns are relative to the context root, `**` spans any
//! number of directories, a pattern that matches a directory matches what
//! is under it, the last matching pattern wins, and a `!` exception can
//! bring back a file under an excluded directory (which gitignore cannot).

use regex::Regex;

/// The patterns of one `.dockerignore`, in order.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    /// A `!` line: matching files are sent after all.
    exception: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {pattern:?} is not a valid pattern")]
pub struct BadPattern {
    pub line: usize,
    pub pattern: String,
    #[source]
    source: regex::Error,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<Self, BadPattern> {
        let mut patterns = Vec::new();
        for (i, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if pattern.is_empty() {
                continue;
            }
            let cleaned = clean(pattern);
            let regex = Regex::new(&to_regex(&cleaned)).map_err(|source| BadPattern {
                line: i + 1,
                pattern: raw.to_string(),
                source,
            })?;
            patterns.push(Pattern { regex, exception });
        }
        Ok(Self { patterns })
    }

    /// Whether a file or directory (path relative to the root, `/`
    /// separated) is left out: the last pattern matching it, or one of its
    /// parent directories, decides.
    pub fn excludes(&self, rel: &str) -> bool {
        let parents: Vec<&str> = rel.match_indices('/').map(|(i, _)| &rel[..i]).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // Only a pattern that could change the verdict is looked at.
            if p.exception != excluded {
                continue;
            }
            if p.regex.is_match(rel) || parents.iter().any(|d| p.regex.is_match(d)) {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some `!` pattern may bring back files under an excluded
    /// directory, so that the directory must still be walked.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// Go's `filepath.Clean`, then a leading `/` dropped, as Docker reads them.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in pattern.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !pattern.starts_with('/') {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// The pattern as an anchored regex, construct by construct as
/// patternmatcher compiles it.
fn to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' | ']' => re.push(c),
            '\\' => match chars.next() {
                Some(next) => re.push_str(&regex::escape(&next.to_string())),
                None => re.push_str(r"\\"),
            },
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::DockerIgnore;

    fn excluded(rules: &str, path: &str) -> bool {
        DockerIgnore::parse(rules).expect("rules").excludes(path)
    }

    #[test]
    fn docker_semantics_table() {
        let cases: &[(&str, &str, bool)] = &[
            // Anchored at the root, unlike gitignore.
            ("*.md", "README.md", true),
            ("*.md", "docs/a.md", false),
            ("**/*.md", "docs/a.md", true),
            ("**/*.md", "README.md", true),
            // A directory's pattern covers what is under it.
            ("node_modules", "node_modules/x/index.js", true),
            ("node_modules", "src/node_modules/x.js", false),
            // A trailing slash and a leading slash are cleaned away.
            ("build/", "build", true),
            ("/dist", "dist/app.js", true),
            ("./tmp/../cache", "cache/a", true),
            // `?` and classes stay within one segment.
            ("log?.txt", "log1.txt", true),
            ("log?.txt", "log/.txt", false),
            ("[ab].txt", "a.txt", true),
            ("[ab].txt", "c.txt", false),
            // `**` in the middle spans zero or more directories.
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/z", true),
            // The last match wins, and exceptions reach under an excluded
            // directory (gitignore cannot do this).
            (
                "node_modules\n!node_modules/keep",
                "node_modules/keep",
                false,
            ),
            (
                "node_modules\n!node_modules/keep",
                "node_modules/drop",
                true,
            ),
            ("**\n!src/**", "src/main.py", false),
            ("**\n!src/**", "README.md", true),
            ("*\n!package.json", "package.json", false),
            ("!a\na", "a", true),
            // Comments and blank lines.
            ("# *.md\n\n", "README.md", false),
            // Regex characters are literal.
            ("a+b(c).txt", "a+b(c).txt", true),
        ];
        for (rules, path, want) in cases {
            assert_eq!(excluded(rules, path), *want, "{rules:?} on {path}");
        }
    }

    #[test]
    fn exceptions_are_known() {
        assert!(DockerIgnore::parse("a\n!a/b").expect("ok").has_exceptions());
        assert!(!DockerIgnore::parse("a\nb").expect("ok").has_exceptions());
    }
}
