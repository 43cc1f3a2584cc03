//! What authentication costs per call: client-observed latency of one
//! unary RPC (ListDeployments of a project, in-memory store) against a
//! daemon with no authentication (the baseline), one taking API tokens and
//! one verifying OIDC ID tokens (ES256 and RS256, the latter what Google
//! signs with), all measured in the same run, in interleaved rounds; and
//! the verification alone, without the network.
//!
//!     cargo bench --bench auth            (ROUNDS=5 CALLS=1000)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use deployd::api::auth::oidc::{JwksSource, OidcConfig, OidcVerifier};
use deployd::api::auth::tokens;
use deployd::api::proto;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://accounts.google.com";
const AUDIENCE: &str = "deployd-bench";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A signing key of `alg`, its JWK named `kid`, and `count` distinct
/// tokens it signed.
fn issuer_key(alg: Algorithm, kid: &str, count: usize) -> (Jwk, Vec<String>) {
    let pair = match alg {
        Algorithm::RS256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        _ => rcgen::KeyPair::generate(),
    }
    .expect("key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&pkcs1_of(&pair.serialize_der())),
        _ => EncodingKey::from_ec_der(&pair.serialize_der()),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let tokens = (0..count)
        .map(|i| {
            let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "1", "email": "ci@bench.test",
                "email_verified": true, "exp": now() + 3600, "jti": i});
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        })
        .collect();
    (jwk, tokens)
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (rcgen writes
/// the latter; jsonwebtoken reads the former): SEQUENCE { INTEGER,
/// AlgorithmIdentifier, OCTET STRING(pkcs1) }.
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    // One DER TLV at `at`: (header length, content length).
    fn tlv(d: &[u8], at: usize) -> (usize, usize) {
        let first = d[at + 1] as usize;
        if first < 0x80 {
            return (2, first);
        }
        let n = first & 0x7f;
        let len = d[at + 2..at + 2 + n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | *b as usize);
        (2 + n, len)
    }
    let (h, _) = tlv(pkcs8, 0);
    let mut at = h;
    for _ in 0..2 {
        let (h, l) = tlv(pkcs8, at);
        at += h + l;
    }
    let (h, l) = tlv(pkcs8, at);
    pkcs8[at + h..at + h + l].to_vec()
}

struct Mode {
    name: &'static str,
    harness: Harness,
    /// Sent in turn, one per call; empty: no token.
    tokens: Vec<String>,
    /// Tokens sent so far: each round goes on where the last one ended.
    sent: usize,
    per_call: Vec<Duration>,
}

async fn calls(m: &mut Mode, n: usize) -> Duration {
    let mut client = m.harness.client().await;
    let mut next = m.tokens.iter().cycle().skip(m.sent);
    m.sent += n + 1;
    let mut request = || {
        let mut r = tonic::Request::new(proto::ListDeploymentsRequest {
            project: PROJECT.into(),
            page_size: 1,
            ..Default::default()
        });
        if let Some(t) = next.next() {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        r
    };
    // The connection is up and the keys are cached before the clock runs.
    client.list_deployments(request()).await.expect("warm-up");
    let start = Instant::now();
    for _ in 0..n {
        client.list_deployments(request()).await.expect("call");
    }
    start.elapsed() / n as u32
}

#[tokio::main]
async fn main() {
    let (rounds, n) = (env_or("ROUNDS", 5), env_or("CALLS", 1000));
    let dir = tempfile::tempdir().expect("dir");
    let (api_token, line) = tokens::new_token("ci-bot");
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, format!("{line}\n")).expect("tokens");
    let (es_jwk, es_tokens) = issuer_key(Algorithm::ES256, "es", 1 + rounds * (n + 1));
    let (rs_jwk, rs_tokens) = issuer_key(Algorithm::RS256, "rs", 1);
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::to_string(&JwkSet {
            keys: vec![es_jwk, rs_jwk],
        })
        .expect("json"),
    )
    .expect("jwks");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("rules:\n  - principals: [ci-bot, ci@bench.test]\n    actions: [read]\n    projects: [{PROJECT}]\n"),
    )
    .expect("policy");
    let oidc = OidcConfig::new(
        JwksSource::File(jwks_file.clone()),
        ISSUER.into(),
        AUDIENCE.into(),
    );

    let memory = |c: &mut deployd::config::DaemonConfig| {
        c.database_url = Some(deployd::store::MEMORY_URL.into())
    };
    let mut modes = vec![
        Mode {
            name: "none",
            harness: Harness::start_quiet(memory).await,
            tokens: vec![],
            sent: 0,
            per_call: vec![],
        },
        Mode {
            name: "api token",
            harness: Harness::start_quiet(|c| {
                memory(c);
                c.auth.api_tokens_file = Some(tokens_file.clone());
                c.auth.policy_file = Some(policy.clone());
            })
            .await,
            tokens: vec![api_token],
            sent: 0,
            per_call: vec![],
        },
    ];
    // The same ID token on every call (as a client sends it for its
    // hour), and a new one on every call (no verification remembered).
    for (name, tokens) in [
        ("oidc ES256", vec![es_tokens[0].clone()]),
        ("oidc RS256", rs_tokens),
        ("oidc, new token each call", es_tokens[1..].to_vec()),
    ] {
        let (o, p) = (oidc.clone(), policy.clone());
        modes.push(Mode {
            name,
            harness: Harness::start_quiet(move |c| {
                memory(c);
                c.auth.oidc = Some(o);
                c.auth.policy_file = Some(p);
            })
            .await,
            tokens,
            sent: 0,
            per_call: vec![],
        });
    }
    for _ in 0..rounds {
        for m in modes.iter_mut() {
            let d = calls(m, n).await;
            m.per_call.push(d);
        }
    }
    let base = median(modes[0].per_call.clone());
    println!("client-observed latency of ListDeployments, median of {rounds} rounds of {n} calls:");
    for m in &modes {
        let d = median(m.per_call.clone());
        println!(
            "  {:<11} {:>7.1} µs/call   {:.3}x none   (+{:.1} µs)",
            m.name,
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() / base.as_secs_f64(),
            (d.as_secs_f64() - base.as_secs_f64()) * 1e6
        );
    }

    // The verification alone, keys cached: each token for the first time
    // (the signature checked), then one token again and again.
    let v = OidcVerifier::new(oidc).expect("verifier");
    v.load().await.expect("keys");
    let fresh = &es_tokens[1..=n];
    let start = Instant::now();
    for t in fresh {
        v.verify(t).await.expect("valid");
    }
    let first = start.elapsed() / n as u32;
    let start = Instant::now();
    for _ in 0..n {
        v.verify(&fresh[0]).await.expect("valid");
    }
    let again = start.elapsed() / n as u32;
    for (what, d) in [("first time", first), ("seen before", again)] {
        println!(
            "  ES256 verification alone, {what}: {:.1} µs ({:.1}% of an unauthenticated call)",
            d.as_secs_f64() * 1e6,
            100.0 * d.as_secs_f64() / base.as_secs_f64()
        );
    }
}
