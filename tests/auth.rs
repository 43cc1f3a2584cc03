//! The secure API, in process: mTLS with certificates made per test
//! (rcgen), OIDC ID tokens signed by a test key and checked against a JWKS
//! served on loopback, hashed API tokens, and the policy on every RPC.
//! (tests/auth_binary.rs runs the real binary with a Python client.)

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pki::{read, Ca, PemPair};
use common::*;
use deployd::api::auth::oidc::{JwksSource, OidcConfig};
use deployd::api::auth::tokens;
use deployd::api::proto::{self, deployer_client::DeployerClient};
use deployd::config::DaemonConfig;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "deployd-test";
const CI: &str = "ci@team-a.iam.gserviceaccount.com";

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
        jwk.common.key_id = Some(kid.to_string());
        SigningKey {
            kid: kid.to_string(),
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(email: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "1234567890", "email": email,
        "email_verified": true, "iat": now(), "exp": now() + 600,
    })
}

/// An issuer's JWKS on loopback, whose keys a test can change.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<Mutex<u32>>,
}

async fn jwks_server(keys: Vec<Jwk>) -> Jwks {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(Mutex::new(0));
    let (k, f) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let (k, f) = (k.clone(), f.clone());
            async move {
                *f.lock().expect("lock") += 1;
                let set = JwkSet {
                    keys: k.lock().expect("lock").clone(),
                };
                axum::Json(serde_json::to_value(set).expect("jwks json"))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Jwks {
        url: format!("http://{addr}/certs"),
        keys,
        fetches,
    }
}

/// A policy file in `dir`.
fn policy_file(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, yaml).expect("write policy");
    p
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

fn list_request() -> proto::ListDeploymentsRequest {
    proto::ListDeploymentsRequest {
        project: PROJECT.into(),
        ..Default::default()
    }
}

async fn oidc_daemon(jwks: &Jwks, dir: &tempfile::TempDir) -> Harness {
    let policy = policy_file(
        dir,
        &format!("rules:\n  - principals: [\"{CI}\"]\n    actions: [\"*\"]\n    projects: [\"{PROJECT}\"]\n    hosts: [\"*.run.app\"]\n"),
    );
    let mut oidc = OidcConfig::new(
        JwksSource::Url(jwks.url.clone()),
        ISSUER.into(),
        AUDIENCE.into(),
    );
    // Unknown keys refetch at once, so the rotation test needs no sleep.
    oidc.min_refetch = Duration::ZERO;
    // No skew allowed, so a token can expire within a test.
    oidc.leeway = Duration::ZERO;
    Harness::start_config(move |c: &mut DaemonConfig| {
        c.auth.oidc = Some(oidc);
        c.auth.policy_file = Some(policy);
    })
    .await
}

#[tokio::test]
async fn oidc_id_tokens_are_verified_against_the_issuers_keys() {
    let key = SigningKey::new("k1");
    let jwks = jwks_server(vec![key.jwk.clone()]).await;
    let dir = tempfile::tempdir().expect("dir");
    let h = oidc_daemon(&jwks, &dir).await;
    let mut client = h.client().await;

    let ok = client
        .list_deployments(bearer(list_request(), &key.sign(&claims(CI))))
        .await;
    assert!(ok.is_ok(), "{ok:?}");

    let stranger = SigningKey::new("k9");
    let mut tampered = key.sign(&claims("someone@else.example"));
    {
        // Swap the payload for one naming CI, keeping the signature.
        let good = key.sign(&claims(CI));
        let parts: Vec<&str> = tampered.split('.').collect();
        let good_payload = good.split('.').nth(1).expect("payload");
        tampered = format!("{}.{}.{}", parts[0], good_payload, parts[2]);
    }
    let unsigned = {
        use base64::Engine;
        let e = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            e(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
            e(&claims(CI))
        )
    };
    let mut wrong_aud = claims(CI);
    wrong_aud["aud"] = "someone-else".into();
    let mut wrong_iss = claims(CI);
    wrong_iss["iss"] = "https://evil.test".into();
    let mut expired = claims(CI);
    // Beyond the 60 s of tolerated skew.
    expired["exp"] = (now() - 120).into();
    for (what, token, says) in [
        ("wrong audience", key.sign(&wrong_aud), "audience"),
        ("wrong issuer", key.sign(&wrong_iss), "issuer"),
        ("expired", key.sign(&expired), "expired"),
        ("alg none", unsigned, "algorithm"),
        ("unknown key", stranger.sign(&claims(CI)), "does not hold"),
        ("tampered payload", tampered, "signature"),
        ("garbage", "a.b.c".to_string(), "not a JWT"),
    ] {
        let e = client
            .list_deployments(bearer(list_request(), &token))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(e.message().contains(says), "{what}: {}", e.message());
        assert!(!e.message().contains(&token), "{what}: token echoed");
    }
    let e = client
        .list_deployments(list_request())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());

    // Refusals are counted by reason, never by principal.
    let m = h.metrics().await;
    for reason in [
        "wrong_audience",
        "wrong_issuer",
        "expired",
        "algorithm",
        "unknown_key",
        "bad_signature",
        "missing",
    ] {
        let n = counter(
            &m,
            "deployd_auth_refusals_total",
            &format!("reason=\"{reason}\""),
        );
        assert!(n >= 1.0, "{reason}: {n}");
    }
    assert!(!m.contains(CI), "a principal in the metrics");
    // Health checks need no credential.
    let channel = Channel::from_shared(format!("http://{}", h.daemon.grpc))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "deployd.v1.Deployer".into(),
        })
        .await
        .expect("health is open");
    assert_eq!(r.into_inner().status, 1);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_once_the_jwks_has_it() {
    let old = SigningKey::new("2026-old");
    let jwks = jwks_server(vec![old.jwk.clone()]).await;
    let dir = tempfile::tempdir().expect("dir");
    let h = oidc_daemon(&jwks, &dir).await;
    let mut client = h.client().await;
    client
        .list_deployments(bearer(list_request(), &old.sign(&claims(CI))))
        .await
        .expect("the current key");
    let fetched = *jwks.fetches.lock().expect("lock");

    // The issuer starts signing with a key it has not published yet.
    let new = SigningKey::new("2026-new");
    let e = client
        .list_deployments(bearer(list_request(), &new.sign(&claims(CI))))
        .await
        .expect_err("not published");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        *jwks.fetches.lock().expect("lock") > fetched,
        "an unknown key makes the daemon fetch the JWKS again"
    );
    // It publishes it (keeping the old one for tokens still in flight).
    jwks.keys.lock().expect("lock").push(new.jwk.clone());
    client
        .list_deployments(bearer(list_request(), &new.sign(&claims(CI))))
        .await
        .expect("the new key, once published");
    client
        .list_deployments(bearer(list_request(), &old.sign(&claims(CI))))
        .await
        .expect("the old key still");
}

#[tokio::test]
async fn a_token_accepted_before_is_refused_once_it_expires() {
    let key = SigningKey::new("k1");
    let jwks = jwks_server(vec![key.jwk.clone()]).await;
    let dir = tempfile::tempdir().expect("dir");
    let h = oidc_daemon(&jwks, &dir).await;
    let mut client = h.client().await;
    let mut short = claims(CI);
    short["exp"] = (now() + 1).into();
    let token = key.sign(&short);
    for _ in 0..3 {
        client
            .list_deployments(bearer(list_request(), &token))
            .await
            .expect("valid for a second");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = client
        .list_deployments(bearer(list_request(), &token))
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
}

/// A daemon taking API tokens for `admin` (everything), `team-a` (read
/// and deploy on PROJECT), `team-b` (everything, on other projects) and
/// `reader` (read on PROJECT).
struct TokenDaemon {
    h: Harness,
    admin: String,
    team_a: String,
    team_b: String,
    reader: String,
    _dir: tempfile::TempDir,
}

async fn token_daemon() -> TokenDaemon {
    let dir = tempfile::tempdir().expect("dir");
    let (admin, l1) = tokens::new_token("admin");
    let (team_a, l2) = tokens::new_token("team-a");
    let (team_b, l3) = tokens::new_token("team-b");
    let (reader, l4) = tokens::new_token("reader");
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# test tokens\n{l1}\n{l2}\n{l3}\n{l4}\n")).expect("tokens");
    let policy = policy_file(
        &dir,
        &format!(
            r#"rules:
  - principals: [admin]
    actions: ["*"]
    projects: ["*"]
    hosts: ["*"]
  - principals: [team-a]
    actions: [Deploy, read]
    projects: ["{PROJECT}"]
  - principals: ["team-b"]
    actions: ["*"]
    projects: ["team-b-*"]
    hosts: ["*.team-b.example"]
  - principals: [reader]
    actions: [read]
    projects: ["{PROJECT}"]
"#
        ),
    );
    let h = Harness::start_config(move |c| {
        c.auth.api_tokens_file = Some(file);
        c.auth.policy_file = Some(policy);
    })
    .await;
    TokenDaemon {
        h,
        admin,
        team_a,
        team_b,
        reader,
        _dir: dir,
    }
}

/// Analyze reads sources as a deploy does: a principal who may deploy
/// somewhere gets a plan; one who may only read is refused, with the
/// NOT_PERMITTED reason.
#[tokio::test]
async fn analyze_is_for_principals_who_may_deploy() {
    use tonic_types::StatusExt;
    let d = token_daemon().await;
    let mut client = d.h.client().await;
    let req = || proto::AnalyzeRequest {
        source: deploy_request("any", &example_app()).source,
    };
    let answer = client
        .analyze(bearer(req(), &d.team_a))
        .await
        .expect("team-a may deploy, so it may analyze")
        .into_inner();
    assert!(answer.error.is_none(), "{answer:?}");
    assert!(answer.plan.is_some_and(|p| !p.start.is_empty()));
    let e = client
        .analyze(bearer(req(), &d.reader))
        .await
        .expect_err("a reader may not");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("reader"), "{}", e.message());
    assert_eq!(
        e.get_error_details().error_info().map(|i| i.reason.clone()),
        Some("NOT_PERMITTED".to_string())
    );
    assert!(d.h.sandbox.requests().is_empty(), "nothing reached Google");
}

#[tokio::test]
async fn api_tokens_name_their_principal_and_it_is_recorded() {
    let d = token_daemon().await;
    let mut client = d.h.client().await;
    let stream = client
        .deploy(bearer(
            deploy_request("by-team-a", &example_app()),
            &d.team_a,
        ))
        .await
        .expect("team-a may deploy on its project")
        .into_inner();
    let events = collect(stream).await;
    assert!(outcome(&events).success, "{:?}", outcome(&events));
    let id = events[0].deployment_id.clone();
    let dep = client
        .get_deployment(bearer(
            proto::GetDeploymentRequest { id: id.clone() },
            &d.team_a,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(dep.caller, "team-a");
    // The store holds the principal, not the token.
    let mut db = Vec::new();
    for f in ["deployd.db", "deployd.db-wal"] {
        db.extend(std::fs::read(d.h.state.path().join(f)).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&db);
    assert!(text.contains("team-a"));
    assert!(!text.contains(&d.team_a));

    for (what, token) in [
        ("unknown", format!("{}x", d.team_a)),
        ("empty scheme", String::new()),
    ] {
        let e = client
            .get_deployment(bearer(
                proto::GetDeploymentRequest { id: id.clone() },
                &token,
            ))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    }
}

#[tokio::test]
async fn a_principal_allowed_on_one_project_is_refused_on_another_on_every_rpc() {
    let d = token_daemon().await;
    let mut client = d.h.client().await;
    let events = collect(
        client
            .deploy(bearer(deploy_request("shared", &example_app()), &d.admin))
            .await
            .expect("admin deploys")
            .into_inner(),
    )
    .await;
    let id = events[0].deployment_id.clone();
    let url = outcome(&events).url;

    let denied = |what: &str, r: Result<(), tonic::Status>, target: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        let m = e.message();
        assert!(m.contains("team-b"), "{what}: names the principal: {m}");
        assert!(m.contains(what), "{what}: names the action: {m}");
        assert!(m.contains(target), "{what}: names the target: {m}");
    };
    let b = &d.team_b;
    let service_target = format!("projects/{PROJECT}/services/shared");
    denied(
        "Deploy",
        client
            .deploy(bearer(deploy_request("shared", &example_app()), b))
            .await
            .map(|_| ()),
        &service_target,
    );
    let mut pre = proto::PreflightRequest {
        target: Some(target("shared")),
        ..Default::default()
    };
    denied(
        "Preflight",
        client.preflight(bearer(pre.clone(), b)).await.map(|_| ()),
        &service_target,
    );
    let get = proto::GetDeploymentRequest { id: id.clone() };
    denied(
        "GetDeployment",
        client
            .get_deployment(bearer(get.clone(), b))
            .await
            .map(|_| ()),
        &id,
    );
    denied(
        "WatchDeployment",
        client
            .watch_deployment(bearer(
                proto::WatchDeploymentRequest {
                    id: id.clone(),
                    after_seq: 0,
                },
                b,
            ))
            .await
            .map(|_| ()),
        &id,
    );
    denied(
        "CancelDeployment",
        client
            .cancel_deployment(bearer(proto::CancelDeploymentRequest { id: id.clone() }, b))
            .await
            .map(|_| ()),
        &id,
    );
    denied(
        "ListDeployments",
        client
            .list_deployments(bearer(list_request(), b))
            .await
            .map(|_| ()),
        &format!("projects/{PROJECT}"),
    );
    let host = url::Url::parse(&url)
        .expect("service url")
        .host_str()
        .expect("host")
        .to_string();
    denied(
        "Verify",
        client
            .verify(bearer(
                proto::VerifyRequest {
                    url: url.clone(),
                    ..Default::default()
                },
                b,
            ))
            .await
            .map(|_| ()),
        &host,
    );
    // A listing of everything shows team-b only what it may see: nothing.
    let all = client
        .list_deployments(bearer(proto::ListDeploymentsRequest::default(), b))
        .await
        .expect("team-b may list its own projects")
        .into_inner();
    assert!(all.deployments.is_empty(), "{:?}", all.deployments);
    // On its own project team-b is allowed (the preflight runs).
    pre.target = Some(proto::Target {
        project: "team-b-prod".into(),
        ..target("api")
    });
    client
        .preflight(bearer(pre, b))
        .await
        .expect("team-b on its own project");

    // team-a reads the deployment on its project, but may not cancel.
    let a = &d.team_a;
    let seen = client
        .list_deployments(bearer(proto::ListDeploymentsRequest::default(), a))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(seen.deployments.len(), 1);
    client
        .get_deployment(bearer(get, a))
        .await
        .expect("team-a reads");
    let e = client
        .cancel_deployment(bearer(proto::CancelDeploymentRequest { id }, a))
        .await
        .expect_err("team-a may not cancel");
    assert_eq!(e.code(), Code::PermissionDenied);

    let m = d.h.metrics().await;
    assert!(
        counter(
            &m,
            "deployd_auth_refusals_total",
            "method=\"Deploy\",reason=\"denied\""
        ) >= 1.0
            || counter(
                &m,
                "deployd_auth_refusals_total",
                "reason=\"denied\",method=\"Deploy\""
            ) >= 1.0,
        "{m}"
    );
    assert!(
        counter(
            &m,
            "deployd_grpc_requests_total",
            "code=\"PERMISSION_DENIED\""
        ) >= 8.0
    );
}

/// A TLS daemon requiring client certificates from `ca`, with a policy
/// for the SPIFFE id the trusted client carries.
async fn mtls_daemon(
    ca: &Ca,
    server: &PemPair,
    dir: &tempfile::TempDir,
) -> (Harness, tempfile::NamedTempFile) {
    let bundle = ca.pem_file();
    let policy = policy_file(
        dir,
        &format!("rules:\n  - principals: [\"spiffe://corp.test/ci\"]\n    actions: [\"*\"]\n    projects: [\"{PROJECT}\"]\n    hosts: [\"*\"]\n"),
    );
    let (cert, key, client_ca) = (
        server.cert.clone(),
        server.key.clone(),
        bundle.path().to_path_buf(),
    );
    let h = Harness::start_config(move |c| {
        c.auth.tls_cert = Some(cert);
        c.auth.tls_key = Some(key);
        c.auth.client_ca = Some(client_ca);
        c.auth.policy_file = Some(policy);
    })
    .await;
    (h, bundle)
}

/// A TLS client of `addr` trusting `ca`, presenting `identity`.
async fn tls_client(
    addr: SocketAddr,
    ca: &Ca,
    identity: Option<&PemPair>,
) -> Result<DeployerClient<Channel>, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(read(&id.cert), read(&id.key)));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    Ok(DeployerClient::new(channel))
}

/// A call made with this identity: refused at the handshake or after.
async fn list_with(addr: SocketAddr, ca: &Ca, identity: Option<&PemPair>) -> Result<(), String> {
    let mut c = tls_client(addr, ca, identity)
        .await
        .map_err(|e| e.to_string())?;
    c.list_deployments(list_request())
        .await
        .map(|_| ())
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

#[tokio::test]
async fn mutual_tls_accepts_trusted_client_certificates_only() {
    let ca = Ca::new();
    let server = ca.server_files(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("dir");
    let (h, _bundle) = mtls_daemon(&ca, &server, &dir).await;
    let addr = h.daemon.grpc;

    let trusted = ca.client_files(Some("spiffe://corp.test/ci"), "ci", false);
    list_with(addr, &ca, Some(&trusted))
        .await
        .expect("a trusted client certificate");
    // Its identity is the URI SAN, recorded on what it deploys.
    let mut c = tls_client(addr, &ca, Some(&trusted)).await.expect("client");
    let events = collect(
        c.deploy(deploy_request("mtls", &example_app()))
            .await
            .expect("deploy")
            .into_inner(),
    )
    .await;
    let dep = c
        .get_deployment(proto::GetDeploymentRequest {
            id: events[0].deployment_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(dep.caller, "spiffe://corp.test/ci");

    // Trusted, but a CN-only identity no rule names: authenticated, denied.
    let cn_only = ca.client_files(None, "intern", false);
    let e = list_with(addr, &ca, Some(&cn_only)).await.expect_err("cn");
    assert!(
        e.contains("PermissionDenied") && e.contains("intern"),
        "{e}"
    );

    let other_ca = Ca::new();
    let unknown = other_ca.client_files(Some("spiffe://corp.test/ci"), "ci", false);
    let e = list_with(addr, &ca, Some(&unknown))
        .await
        .expect_err("unknown CA");
    assert!(
        !e.contains("PermissionDenied"),
        "refused at the handshake: {e}"
    );
    let e = list_with(addr, &ca, None)
        .await
        .expect_err("no certificate");
    assert!(
        !e.contains("PermissionDenied"),
        "refused at the handshake: {e}"
    );
    let expired = ca.client_files(Some("spiffe://corp.test/ci"), "ci", true);
    let e = list_with(addr, &ca, Some(&expired))
        .await
        .expect_err("expired");
    assert!(
        !e.contains("PermissionDenied"),
        "refused at the handshake: {e}"
    );
    // Plain text to a TLS port is not served either.
    let mut plain = DeployerClient::connect(format!("http://{addr}"))
        .await
        .expect("tcp connects");
    assert!(plain.list_deployments(list_request()).await.is_err());
}

#[tokio::test]
async fn reflection_needs_a_credential_and_no_rule() {
    use futures::StreamExt;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let d = token_daemon().await;
    let channel = Channel::from_shared(format!("http://{}", d.h.daemon.grpc))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let ask = || {
        futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let e = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(ask())
        .await
        .expect_err("no credential");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut r = tonic::Request::new(ask());
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", d.team_b).parse().expect("header"),
    );
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(r)
        .await
        .expect("any principal may read the schema")
        .into_inner();
    assert!(answers.next().await.is_some_and(|a| a.is_ok()));
}
