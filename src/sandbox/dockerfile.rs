//! What the sandbox's `docker build` step refuses, as Docker (BuildKit)
//! refuses it: an unknown instruction, no `FROM` before the first build
//! instruction, a `COPY`/`ADD` source missing from the build context. A
//! rehearsal that passed these would fail on Cloud Build.

/// Instructions the Dockerfile frontend knows.
const INSTRUCTIONS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// One logical instruction and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub text: String,
}

/// Logical instructions, as Docker reads them: a trailing backslash
/// continues a line; comments and blank lines do not count; a heredoc
/// (`RUN <<EOF ... EOF`) belongs to the instruction that opens it.
pub fn instructions(text: &str) -> Vec<Instruction> {
    let mut out: Vec<Instruction> = vec![];
    let mut current = String::new();
    let mut start = 0;
    let mut heredoc: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        if let Some(end) = &heredoc {
            let done = raw.trim() == end;
            if let Some(last) = out.last_mut() {
                last.text.push('\n');
                last.text.push_str(raw);
            }
            if done {
                heredoc = None;
            }
            continue;
        }
        let line = raw.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                heredoc = heredoc_end(&current);
                out.push(Instruction {
                    line: start,
                    text: std::mem::take(&mut current),
                });
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(Instruction {
            line: start,
            text: current,
        });
    }
    out
}

/// The word ending a heredoc the instruction opens (`<<EOF`, `<<-EOF`,
/// `<<"EOF"`), if any.
fn heredoc_end(instruction: &str) -> Option<String> {
    let pos = instruction.find("<<")?;
    let rest = instruction[pos + 2..].trim_start_matches('-');
    let word: String = rest
        .trim_matches(|c| c == '"' || c == '\'')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// Docker's error for the first problem of the Dockerfile against the
/// build context (`files`, paths relative to its root), or `None`.
pub fn refusal(text: &str, files: &[(String, Vec<u8>)]) -> Option<String> {
    let mut seen_from = false;
    for ins in instructions(text) {
        let keyword = ins
            .text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if !INSTRUCTIONS.contains(&keyword.as_str()) {
            return Some(format!(
                "ERROR: failed to solve: dockerfile parse error on line {}: unknown instruction: {}",
                ins.line,
                ins.text.split_whitespace().next().unwrap_or_default()
            ));
        }
        match keyword.as_str() {
            "FROM" => seen_from = true,
            // ARG may come before the first FROM; nothing else may.
            "ARG" => {}
            _ if !seen_from => {
                return Some("ERROR: failed to solve: no build stage in current context".into())
            }
            "COPY" | "ADD" => {
                if let Some(missing) = missing_source(&keyword, &ins.text, files) {
                    return Some(missing);
                }
            }
            _ => {}
        }
    }
    if !seen_from {
        return Some("ERROR: failed to solve: no build stage in current context".into());
    }
    None
}

/// The first source of a COPY or ADD that the context lacks.
fn missing_source(keyword: &str, text: &str, files: &[(String, Vec<u8>)]) -> Option<String> {
    let mut rest = text[keyword.len()..].trim();
    // Flags first (--chown, --chmod, --link, --from...).
    let mut flags = vec![];
    while rest.starts_with("--") {
        let (flag, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag);
        rest = after.trim_start();
    }
    // From another stage or image, or a heredoc: not the context's.
    if flags.iter().any(|f| f.starts_with("--from")) || rest.contains("<<") {
        return None;
    }
    let mut words: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(rest).ok()?
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    if words.len() < 2 {
        return Some(format!(
            "ERROR: failed to solve: dockerfile parse error: {keyword} requires at least two arguments, but only {} provided",
            words.len()
        ));
    }
    words.pop();
    for src in words {
        // Values from ARG or ENV, and remote sources, cannot be judged here.
        if src.contains('$') || src.contains("://") {
            continue;
        }
        let path = src.trim_start_matches("./").trim_start_matches('/');
        let path = path.trim_end_matches('/');
        if path.is_empty() || path == "." {
            continue;
        }
        let found = if path.contains(['*', '?', '[']) {
            files
                .iter()
                .any(|(name, _)| glob_match(path, name) || glob_prefix(path, name))
        } else {
            files
                .iter()
                .any(|(name, _)| name == path || name.starts_with(&format!("{path}/")))
        };
        if !found {
            return Some(format!(
                "ERROR: failed to solve: failed to compute cache key: failed to calculate checksum of ref: \"/{path}\": not found"
            ));
        }
    }
    None
}

/// Whether a directory of `name` matches the pattern (a glob naming a
/// directory copies it whole).
fn glob_prefix(pattern: &str, name: &str) -> bool {
    let mut dir = name;
    while let Some((parent, _)) = dir.rsplit_once('/') {
        if glob_match(pattern, parent) {
            return true;
        }
        dir = parent;
    }
    false
}

/// Docker's path globs (Go's filepath.Match): `*` and `?` within one path
/// segment, `[...]` classes.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                go(&p[1..], n) || (n.first().is_some_and(|c| *c != b'/') && go(p, &n[1..]))
            }
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &n[1..]),
            (Some(b'['), Some(c)) => match p.iter().position(|b| *b == b']') {
                Some(end) => {
                    let class = &p[1..end];
                    let (negate, class) = match class.first() {
                        Some(b'^' | b'!') => (true, &class[1..]),
                        _ => (false, class),
                    };
                    let mut hit = false;
                    let mut i = 0;
                    while i < class.len() {
                        if i + 2 < class.len() && class[i + 1] == b'-' {
                            hit |= (class[i]..=class[i + 2]).contains(c);
                            i += 3;
                        } else {
                            hit |= class[i] == *c;
                            i += 1;
                        }
                    }
                    hit != negate && go(&p[end + 1..], &n[1..])
                }
                None => false,
            },
            (Some(a), Some(b)) => a == b && go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names.iter().map(|n| (n.to_string(), vec![])).collect()
    }

    #[test]
    fn what_docker_builds_passes() {
        let files = ctx(&["main.py", "requirements.txt", "src/app/x.py", "a1.txt"]);
        for ok in [
            "FROM python:3.12\nCOPY . .\nCMD [\"python\", \"main.py\"]",
            "# syntax=docker/dockerfile:1\nARG V=3\nFROM python:$V\nCOPY requirements.txt ./\nRUN pip install \\\n  -r requirements.txt\nCOPY src/ /app/src\n",
            "FROM node AS b\nRUN true\nFROM nginx\nCOPY --from=b /out /usr/share/nginx/html\n",
            "FROM x\nCOPY --chown=1:1 [\"main.py\", \"/app/\"]\nCOPY a?.txt *.py /app/\nCOPY sr[a-z] /s\n",
            "FROM x\nRUN <<EOF\nset -e\nnot-an-instruction here\nEOF\nCMD true\n",
            "FROM x\nCOPY $SRC /app\nADD https://example.com/f /f\n",
            "from x\nrun true\n",
        ] {
            assert_eq!(refusal(ok, &files), None, "{ok}");
        }
    }

    #[test]
    fn what_docker_refuses_is_refused_with_its_words() {
        let files = ctx(&["main.py"]);
        let r = |t: &str| refusal(t, &files).unwrap_or_default();
        assert_eq!(
            r("FROM x\n\n# c\nCOPIE . .\n"),
            "ERROR: failed to solve: dockerfile parse error on line 4: unknown instruction: COPIE"
        );
        assert_eq!(
            r("RUN echo hi\n"),
            "ERROR: failed to solve: no build stage in current context"
        );
        assert_eq!(
            r("# only a comment\n"),
            "ERROR: failed to solve: no build stage in current context"
        );
        assert!(
            r("FROM x\nCOPY requirements.txt ./\n").ends_with("\"/requirements.txt\": not found")
        );
        assert!(r("FROM x\nCOPY *.txt ./\n").contains("\"/*.txt\": not found"));
        assert!(r("FROM x\nCOPY main.py\n").contains("at least two arguments"));
        assert!(r("FROM x\nRUN a \\\n  b\nBAD\n").contains("on line 4"));
    }

    #[test]
    fn globs_match_as_go_does() {
        assert!(glob_match("*.py", "main.py"));
        assert!(!glob_match("*.py", "src/main.py"));
        assert!(glob_match("src/*.py", "src/main.py"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
        assert!(glob_prefix("sr?", "src/app/x.py"));
    }
}
