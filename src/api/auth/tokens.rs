//! Static API tokens, kept as SHA-256 hashes in a file, one per line:
//! `sha256:HEX PRINCIPAL`. The tokens deployd makes are 32 random bytes,
//! so a fast hash is as safe as a slow one (no dictionary to try) and costs
//! nothing per call; the file holds nothing that would let a reader call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

/// What a made token starts with, so it can be recognised (and found by
/// secret scanners) wherever it leaks.
pub const TOKEN_PREFIX: &str = "dpd_";

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading the API tokens file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API tokens file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Token hashes and the principal each names.
#[derive(Debug, Default)]
pub struct ApiTokens {
    by_hash: HashMap<[u8; 32], String>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether a principal name is one a token may carry: printable, no
/// spaces, bounded, so it can appear in logs and policies as it is.
pub fn valid_principal(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "@._:/+-".contains(*c)))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits and @._:/+- only)"
        ));
    }
    Ok(())
}

impl ApiTokens {
    pub fn load(path: &Path) -> Result<ApiTokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| TokensError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<ApiTokens, (usize, String)> {
        let mut by_hash = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (digest, principal) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| (n, "expected `sha256:HEX PRINCIPAL`".to_string()))?;
            let principal = principal.trim();
            let digest = digest
                .strip_prefix("sha256:")
                .and_then(unhex)
                // Never echo the field: it may be a token pasted by mistake.
                .ok_or_else(|| {
                    (
                        n,
                        "the first field is not `sha256:` and 64 hex digits \
                         (`deployd token new` writes lines)"
                            .to_string(),
                    )
                })?;
            valid_principal(principal).map_err(|m| (n, format!("principal: {m}")))?;
            if by_hash.insert(digest, principal.to_string()).is_some() {
                return Err((n, "the same token is listed twice".into()));
            }
        }
        Ok(ApiTokens { by_hash })
    }

    /// The principal a token names, if any.
    pub fn principal(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash(token)).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A new random token and its file line for `principal`.
pub fn new_token(principal: &str) -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let line = file_line(&token, principal);
    (token, line)
}

/// The tokens-file line for an existing token.
pub fn file_line(token: &str, principal: &str) -> String {
    format!("sha256:{} {principal}", hex(&hash(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_token_names_its_principal_and_nothing_else_does() {
        let (token, line) = new_token("ci-pipeline");
        assert!(
            token.starts_with(TOKEN_PREFIX) && token.len() == 47,
            "{token}"
        );
        assert!(!line.contains(&token));
        let tokens = ApiTokens::parse(&format!("# ci\n\n{line}\n")).expect("parse");
        assert_eq!(tokens.principal(&token), Some("ci-pipeline"));
        assert_eq!(tokens.principal(&format!("{token}x")), None);
        assert_eq!(tokens.principal(""), None);
    }

    #[test]
    fn bad_lines_name_the_line_and_never_echo_a_token() {
        let (token, line) = new_token("a");
        for (text, says) in [
            (format!("{line}\n{token} b"), "line 2"),
            (format!("{line}\n{line}"), "listed twice"),
            ("sha256:00 a".to_string(), "64 hex digits"),
            (format!("{} has space", line), "principal"),
            (token.clone(), "expected"),
        ] {
            let (n, m) = ApiTokens::parse(&text).expect_err(&text);
            let full = format!("line {n}: {m}");
            assert!(full.contains(says), "{text}: {full}");
            assert!(!full.contains(&token), "{full}");
        }
    }

    #[test]
    fn principals_are_plain_names() {
        assert!(valid_principal("ci@proj.iam.gserviceaccount.com").is_ok());
        assert!(valid_principal("spiffe://corp/ns/ci").is_ok());
        assert!(valid_principal("a b").is_err());
        assert!(valid_principal("a\nb").is_err());
        assert!(valid_principal("").is_err());
    }
}
