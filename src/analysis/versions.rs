//! Which runtime version an image gets. A declared pin is honoured when it
//! is a supported release; a range gets the newest supported release inside
//! it (not its lower bound); a pin or range that only end-of-life releases
//! satisfy is clamped to the oldest supported one, and the plan says so.
//! The tables are the releases whose official images still get security
//! fixes, as of this version of deployd.

use super::Src;

/// A runtime's supported releases, oldest first, and its default.
pub(super) struct Runtime {
    pub name: &'static str,
    pub supported: &'static [&'static str],
    pub default: &'static str,
}

pub(super) const PYTHON: Runtime = Runtime {
    name: "Python",
    supported: &["3.11", "3.12", "3.13", "3.14"],
    default: "3.12",
};
pub(super) const NODE: Runtime = Runtime {
    name: "Node.js",
    supported: &["22", "24"],
    default: "22",
};
pub(super) const RUBY: Runtime = Runtime {
    name: "Ruby",
    supported: &["3.3", "3.4"],
    default: "3.3",
};
pub(super) const JAVA: Runtime = Runtime {
    name: "Java",
    supported: &["11", "17", "21", "25"],
    default: "21",
};
pub(super) const PHP: Runtime = Runtime {
    name: "PHP",
    supported: &["8.2", "8.3", "8.4"],
    default: "8.3",
};

/// A version as numbers ("3.11.4" -> [3, 11, 4]).
fn parse(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches(['v', 'V']);
    let parts: Vec<u64> = v
        .split('.')
        .map_while(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    (!parts.is_empty()).then_some(parts)
}

/// `a` compared with `b` on the parts `b` names ("3.12" vs "3" is equal).
fn cmp_prefix(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        if x != *y {
            return x.cmp(y);
        }
    }
    std::cmp::Ordering::Equal
}

/// Whether release `v` (major or major.minor) satisfies one comparator.
fn satisfies_one(v: &[u64], comparator: &str) -> bool {
    use std::cmp::Ordering::*;
    let c = comparator.trim();
    if c.is_empty() || c == "*" || c == "x" || c.eq_ignore_ascii_case("latest") {
        return true;
    }
    let ops = ["===", "==", ">=", "<=", "~=", "!=", ">", "<", "=", "^", "~"];
    let (op, rest) = ops
        .iter()
        .find_map(|op| c.strip_prefix(op).map(|r| (*op, r.trim())))
        .unwrap_or(("", c));
    let Some(want) = parse(rest) else {
        return false;
    };
    // `3.x`, `3.*` and `18` alone mean "any release of that line".
    let wild = rest.contains(['x', 'X', '*']);
    // A release line (3.12, 22) satisfies a bound when its newest patch
    // could: compare only the parts the release names.
    let line = &want[..want.len().min(v.len())];
    match op {
        ">=" => cmp_prefix(v, line) != Less,
        ">" => {
            cmp_prefix(v, line) == Greater || (want.len() > v.len() && cmp_prefix(v, line) == Equal)
        }
        "<=" => cmp_prefix(v, line) != Greater,
        "<" => cmp_prefix(v, &want) == Less,
        "!=" => cmp_prefix(v, &want) != Equal || want.len() > v.len(),
        "^" => v[0] == want[0] && cmp_prefix(v, line) != Less,
        // ~1.2 and ~=1.2 (PEP 440: >=1.2, ==1.*) differ; both pin the line.
        "~" => {
            cmp_prefix(v, &want[..want.len().min(2)]) == Equal
                || (want.len() == 1 && v[0] == want[0])
        }
        "~=" => {
            let keep = want.len().saturating_sub(1).max(1);
            cmp_prefix(v, &want[..keep]) == Equal && cmp_prefix(v, line) != Less
        }
        _ if wild => cmp_prefix(v, &want) == Equal,
        // A bare or `==` version: that release line.
        _ => cmp_prefix(v, line) == Equal,
    }
}

/// Whether a release satisfies a whole constraint: `||` alternatives of
/// comma- or space-separated comparators.
fn satisfies(release: &str, constraint: &str) -> bool {
    let Some(v) = parse(release) else {
        return false;
    };
    constraint.split("||").any(|alt| {
        let alt = alt.replace(", ", ",");
        // ">= 18" is one comparator; "a b" two.
        let mut comparators = vec![];
        let mut pending = String::new();
        for tok in alt.split([',', ' ']).filter(|t| !t.is_empty()) {
            if tok.chars().all(|c| "<>=!~^".contains(c)) {
                pending.push_str(tok);
            } else {
                comparators.push(format!("{pending}{tok}"));
                pending.clear();
            }
        }
        comparators.iter().all(|c| satisfies_one(&v, c))
    })
}

/// The release to build with for a declared constraint, noting why in the
/// evidence or, when the declaration could not be honoured, a warning.
pub(super) fn choose(
    s: &mut Src,
    rt: &Runtime,
    declared: Option<(&str, String)>,
    parts: usize,
) -> String {
    let Some((file, constraint)) = declared else {
        return rt.default.to_string();
    };
    let constraint = constraint.trim().trim_matches(['"', '\'']).to_string();
    // `lts/*`, `node`, `stable`: no number to honour.
    if !constraint.chars().any(|c| c.is_ascii_digit()) {
        s.note(
            file,
            None,
            format!("{} {constraint:?}: building with {}", rt.name, rt.default),
        );
        return rt.default.to_string();
    }
    if let Some(best) = rt
        .supported
        .iter()
        .rev()
        .find(|r| satisfies(r, &constraint))
    {
        let exact = constraint.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !exact {
            s.note(
                file,
                None,
                format!(
                    "{} {constraint:?}: the newest supported release inside it is {best}",
                    rt.name
                ),
            );
        }
        return best.to_string();
    }
    let want = parse(&constraint);
    let oldest = rt.supported[0];
    let newest = rt.supported[rt.supported.len() - 1];
    match want {
        // Newer than this table knows: take the declaration as written.
        Some(w)
            if parse(newest).is_some_and(|n| cmp_prefix(&w, &n) == std::cmp::Ordering::Greater) =>
        {
            let v: Vec<String> = w.iter().take(parts).map(u64::to_string).collect();
            v.join(".")
        }
        _ => {
            s.warn(
                file,
                None,
                format!(
                    "{} {constraint:?} is past its end of life (no official image gets fixes): building with {oldest}, the oldest supported release; test the app on it or raise the declaration",
                    rt.name
                ),
            );
            oldest.to_string()
        }
    }
}

/// The release after `v`'s own line is capped at `max` (a locked package
/// that cannot run on newer releases), with a warning.
pub(super) fn cap(s: &mut Src, version: String, max: &str, file: &str, why: &str) -> String {
    match (parse(&version), parse(max)) {
        (Some(v), Some(m)) if cmp_prefix(&v, &m) == std::cmp::Ordering::Greater => {
            s.warn(
                file,
                None,
                format!("{why}: building with {max} instead of {version}"),
            );
            max.to_string()
        }
        _ => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_are_read_as_their_ecosystems_write_them() {
        let yes = [
            ("3.12", ">=3.9"),
            ("3.12", ">=3.9,<3.13"),
            ("3.12", "^3.10"),
            ("3.12", "~=3.10"),
            ("3.12", "3.12.4"),
            ("3.12", "3.*"),
            ("22", ">=18"),
            ("22", "^22.1.0"),
            ("22", "22.x"),
            ("22", ">= 18 < 23"),
            ("22", "^18 || ^22"),
            ("24", "*"),
        ];
        for (v, c) in yes {
            assert!(satisfies(v, c), "{v} satisfies {c}");
        }
        let no = [
            ("3.13", ">=3.9,<3.13"),
            ("3.12", "^3.13"),
            ("3.12", "3.11"),
            ("24", "^22"),
            ("22", "4.0.0"),
            ("22", "<20"),
            ("3.12", "~=3.10.2"),
        ];
        for (v, c) in no {
            assert!(!satisfies(v, c), "{v} does not satisfy {c}");
        }
    }
}
