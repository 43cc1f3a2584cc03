//! Quoting for the commands deployd prints as remediation: every value in
//! them came from a request or an API answer, and a person may paste the
//! command into a shell.

use std::borrow::Cow;

/// `s` as one POSIX shell word: unchanged when it holds only characters no
/// shell treats specially, otherwise in single quotes.
pub fn quote(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_what_a_shell_would_interpret() {
        assert_eq!(quote("my-project"), "my-project");
        assert_eq!(quote("user:me@example.com"), "user:me@example.com");
        assert_eq!(quote("$(touch x)"), "'$(touch x)'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b;c"), "'a b;c'");
    }
}
