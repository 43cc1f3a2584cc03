//! OIDC ID tokens (a Google service account's, for one): a JWT signed by a
//! key of the issuer's JWKS, for our audience, not expired. Keys are
//! cached: refetched when older than `refresh`, and at once (at most every
//! `min_refetch`) when a token names a key the cache lacks, which is how a
//! rotation is picked up. A failed refetch keeps the keys already known.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Where the issuer's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// https:// (http:// only on loopback).
    Url(String),
    File(PathBuf),
}

/// How ID tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub jwks: JwksSource,
    /// The exact `iss` a token must carry (Google: https://accounts.google.com).
    pub issuer: String,
    /// The `aud` a token must carry: what callers ask their ID token for.
    pub audience: String,
    /// Keys older than this are refetched.
    pub refresh: Duration,
    /// Refetches for unknown keys are at least this far apart, so a flood
    /// of made-up key ids cannot hammer the issuer.
    pub min_refetch: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl OidcConfig {
    pub fn new(jwks: JwksSource, issuer: String, audience: String) -> OidcConfig {
        OidcConfig {
            jwks,
            issuer,
            audience,
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Why a token was not accepted. The token itself is never in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted (RS*, PS*, ES256, ES384, EdDSA are)")]
    Algorithm(String),
    #[error("the token is signed by a key ({0}) the issuer's JWKS does not hold")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not the one configured")]
    WrongIssuer,
    #[error("the token's audience is not this daemon's")]
    WrongAudience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl OidcError {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Malformed => "malformed",
            OidcError::Algorithm(_) => "algorithm",
            OidcError::UnknownKey(_) => "unknown_key",
            OidcError::BadSignature => "bad_signature",
            OidcError::Expired => "expired",
            OidcError::NotYetValid => "not_yet_valid",
            OidcError::WrongIssuer => "wrong_issuer",
            OidcError::WrongAudience => "wrong_audience",
            OidcError::MissingClaim(_) => "missing_claim",
            OidcError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// Algorithms with public keys only: an `oct` (HMAC) key in a JWKS would
/// let anyone who read the JWKS sign tokens.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct Key {
    decoding: DecodingKey,
    /// The JWK's `alg`, when it names one: the token must use it.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, Key>,
    /// Keys without `kid`, tried for tokens without one.
    unnamed: Vec<Key>,
    fetched: Option<Instant>,
    /// Tokens these keys verified (by SHA-256): identity and `exp`. A
    /// client sends the same ID token for up to an hour; checking its
    /// signature once is enough. New keys start a new cache.
    verified: std::sync::Mutex<HashMap<[u8; 32], (String, u64)>>,
}

/// Verified tokens remembered at most; then the cache starts over.
const MAX_VERIFIED: usize = 10_000;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    sub: Option<String>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
}

pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// One fetch at a time; callers that waited see its result.
    fetching: Mutex<()>,
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    // Encryption keys and algorithms we do not accept are skipped.
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::try_from(a).ok()?),
        None => None,
    };
    if alg.is_some_and(|a| !ACCEPTED.contains(&a)) {
        return None;
    }
    // HMAC keys are skipped whatever `alg` says.
    if matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        return None;
    }
    Some(Key {
        decoding: DecodingKey::from_jwk(jwk).ok()?,
        alg,
    })
}

impl OidcVerifier {
    /// A verifier; keys load on first use, or now with [`Self::load`].
    pub fn new(config: OidcConfig) -> Result<OidcVerifier, OidcError> {
        if let JwksSource::Url(u) = &config.jwks {
            check_jwks_url(u).map_err(OidcError::KeysUnavailable)?;
        }
        let tls = crate::tls::system_client_config()
            .map_err(|e| OidcError::KeysUnavailable(crate::pipeline::error::error_chain(&e)))?;
        let http = crate::tls::http_client(&tls)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::KeysUnavailable(e.to_string()))?;
        Ok(OidcVerifier {
            config,
            http,
            keys: RwLock::new(Keys::default()),
            fetching: Mutex::new(()),
        })
    }

    /// Fetches the keys now (at start, to report a bad source early).
    pub async fn load(&self) -> Result<usize, OidcError> {
        self.refetch(None).await?;
        let keys = self.keys.read().await;
        Ok(keys.by_id.len() + keys.unnamed.len())
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let text = match &self.config.jwks {
            JwksSource::File(p) => tokio::fs::read_to_string(p)
                .await
                .map_err(|e| format!("reading {}: {e}", p.display()))?,
            JwksSource::Url(u) => {
                let r = self
                    .http
                    .get(u)
                    .send()
                    .await
                    .map_err(|e| format!("fetching {u}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("fetching {u}: HTTP {}", r.status()));
                }
                r.text().await.map_err(|e| format!("fetching {u}: {e}"))?
            }
        };
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not valid JSON: {e}"))
    }

    /// Refetches unless another caller did since `seen` (the fetch time
    /// the caller found wanting).
    async fn refetch(&self, seen: Option<Instant>) -> Result<(), OidcError> {
        let _one = self.fetching.lock().await;
        if let Some(fetched) = self.keys.read().await.fetched {
            if seen.is_some_and(|s| fetched > s) {
                return Ok(());
            }
        }
        match self.fetch().await {
            Ok(set) => {
                let mut keys = Keys {
                    fetched: Some(Instant::now()),
                    ..Keys::default()
                };
                for jwk in &set.keys {
                    let Some(key) = key_of(jwk) else { continue };
                    match &jwk.common.key_id {
                        Some(kid) => {
                            keys.by_id.insert(kid.clone(), key);
                        }
                        None => keys.unnamed.push(key),
                    }
                }
                tracing::debug!(
                    keys = keys.by_id.len() + keys.unnamed.len(),
                    "OIDC keys loaded"
                );
                *self.keys.write().await = keys;
                Ok(())
            }
            Err(e) => {
                let mut keys = self.keys.write().await;
                // Try again after min_refetch, not at once for every call.
                let had = keys.fetched.is_some();
                keys.fetched = Some(Instant::now());
                tracing::warn!(error = %e, kept_old_keys = had, "OIDC keys could not be refreshed");
                if had {
                    Ok(())
                } else {
                    Err(OidcError::KeysUnavailable(e))
                }
            }
        }
    }

    /// The identity in a valid token: its email (unless marked
    /// unverified), else its subject.
    pub async fn verify(&self, token: &str) -> Result<String, OidcError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        {
            let keys = self.keys.read().await;
            let fresh = keys
                .fetched
                .is_some_and(|f| f.elapsed() < self.config.refresh);
            let cache = keys.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, exp)) = cache.get(&digest).filter(|_| fresh) {
                // Expired ones go the long way, to be refused as such.
                if unix_now() <= exp + self.config.leeway.as_secs() {
                    return Ok(id.clone());
                }
            }
        }
        let (id, exp) = self.verify_signed(token).await?;
        let keys = self.keys.read().await;
        let mut cache = keys.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_VERIFIED {
            cache.clear();
        }
        cache.insert(digest, (id.clone(), exp));
        Ok(id)
    }

    async fn verify_signed(&self, token: &str) -> Result<(String, u64), OidcError> {
        // `none` and algorithms this crate does not know fail to parse:
        // name the algorithm when there is one.
        let header = jsonwebtoken::decode_header(token).map_err(|_| match alg_name(token) {
            Some(alg) => OidcError::Algorithm(alg),
            None => OidcError::Malformed,
        })?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone();
        let (stale, seen) = {
            let keys = self.keys.read().await;
            (
                keys.fetched
                    .is_none_or(|f| f.elapsed() >= self.config.refresh),
                keys.fetched,
            )
        };
        if stale {
            self.refetch(seen).await?;
        }
        match self.try_keys(token, header.alg, kid.as_deref()).await {
            Err(OidcError::UnknownKey(k)) => {
                // Perhaps rotated: fetch again, unless that was just done.
                let seen = self.keys.read().await.fetched;
                if seen.is_none_or(|f| f.elapsed() >= self.config.min_refetch) {
                    self.refetch(seen).await?;
                    self.try_keys(token, header.alg, kid.as_deref()).await
                } else {
                    Err(OidcError::UnknownKey(k))
                }
            }
            other => other,
        }
    }

    async fn try_keys(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(String, u64), OidcError> {
        let keys = self.keys.read().await;
        let candidates: Vec<&Key> = match kid {
            Some(k) => keys.by_id.get(k).into_iter().collect(),
            None => keys.unnamed.iter().collect(),
        };
        if candidates.is_empty() {
            // A kid is the issuer's public name for a key; bound it anyway.
            let name = kid.map_or("no kid".to_string(), |k| {
                format!("kid {}", crate::pipeline::rules::shown(k))
            });
            return Err(OidcError::UnknownKey(name));
        }
        let mut last = OidcError::BadSignature;
        for key in candidates {
            if key.alg.is_some_and(|a| a != alg) {
                last = OidcError::Algorithm(format!("{alg:?} (the key is for another)"));
                continue;
            }
            match self.decode(token, alg, &key.decoding) {
                Ok(id) => return Ok(id),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn decode(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<(String, u64), OidcError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            K::InvalidSignature => OidcError::BadSignature,
            K::ExpiredSignature => OidcError::Expired,
            K::ImmatureSignature => OidcError::NotYetValid,
            K::InvalidIssuer => OidcError::WrongIssuer,
            K::InvalidAudience => OidcError::WrongAudience,
            K::MissingRequiredClaim(c) => OidcError::MissingClaim(c.clone()),
            K::InvalidAlgorithm | K::UnsupportedAlgorithm => {
                OidcError::Algorithm(format!("{alg:?} (the key is for another)"))
            }
            _ => OidcError::Malformed,
        })?;
        let c = data.claims;
        // Some issuers send the flag as a string.
        let verified = match &c.email_verified {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            Some(_) => false,
        };
        match (c.email, c.sub) {
            (Some(email), _) if verified && !email.is_empty() => Ok((email, c.exp)),
            (_, Some(sub)) if !sub.is_empty() => Ok((sub, c.exp)),
            _ => Err(OidcError::MissingClaim("sub".into())),
        }
    }
}

/// The header's `alg`, read without trusting it (to name it in an error).
fn alg_name(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let alg = v.get("alg")?.as_str()?;
    // The caller's text: bounded and quoted, as it reaches logs.
    Some(crate::pipeline::rules::shown(alg))
}

/// Keys must come over TLS, except from this machine.
fn check_jwks_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("the JWKS URL {u:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if super::is_loopback_host(url.host()) => Ok(()),
        _ => Err(format!(
            "the JWKS URL {u:?} must be https:// (http:// only on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_tls_except_from_loopback() {
        assert!(check_jwks_url("https://www.googleapis.com/oauth2/v3/certs").is_ok());
        assert!(check_jwks_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_jwks_url("http://localhost/jwks").is_ok());
        assert!(check_jwks_url("http://idp.example.com/jwks").is_err());
        assert!(check_jwks_url("file:///etc/passwd").is_err());
    }

    #[test]
    fn an_unsigned_token_names_its_algorithm() {
        use base64::Engine;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.", e(r#"{"alg":"none"}"#), e(r#"{"sub":"x"}"#));
        assert_eq!(alg_name(&token).as_deref(), Some("\"none\""));
        let forged = format!("{}.{}.", e("{\"alg\":\"x\\nlevel=ERROR\"}"), e("{}"));
        assert!(!alg_name(&forged).expect("alg").contains('\n'));
    }
}
