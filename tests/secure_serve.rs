//! The secure API as users get it: the real binary, `serve` with TLS, mTLS,
//! API tokens, OIDC and a policy from flags, called by a real outside
//! client (Python grpcio from PyPI) and by the CLI, at RUST_LOG=debug; then
//! its stderr is read for the audit trail and searched for secrets.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::*;
use deployd::api::auth::tokens;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://accounts.google.com";
const AUDIENCE: &str = "https://deployd.corp.test";
const CI: &str = "ci@team-a.iam.gserviceaccount.com";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deployd"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Generates Python stubs for the proto into `dir`.
fn python_stubs(dir: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(proto.join("deployd/v1/deployd.proto"))
        .output()
        .expect("protoc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_python_client_and_the_cli_call_a_tls_daemon_with_credentials_and_nothing_secret_is_logged() {
    if !outside_tool(
        "python3",
        &["-c", "import grpc, grpc_tools.protoc"],
        "pip install grpcio grpcio-tools",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let server = ca.server_files(&["localhost", "127.0.0.1"]);
    let python_cert = ca.client_files(Some("spiffe://corp.test/python"), "python", false);
    let cli_cert = ca.client_files(Some("spiffe://corp.test/cli"), "cli", false);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("ca");

    // An API token for ci-bot, made as a user makes one.
    let tokens_file = dir.path().join("tokens");
    let made = bin()
        .args(["token", "new", "ci-bot", "--append-to"])
        .arg(&tokens_file)
        .output()
        .expect("token new");
    assert!(made.status.success());
    let token = String::from_utf8(made.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(token.starts_with(tokens::TOKEN_PREFIX));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");

    // An OIDC issuer's key, its JWKS as a file, and ID tokens it signed.
    let pair = rcgen::KeyPair::generate().expect("key");
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk: Jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some("k1".into());
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("json"),
    )
    .expect("jwks");
    let sign = |exp: u64| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "1177", "email": CI,
            "email_verified": true, "iat": now(), "exp": exp});
        jsonwebtoken::encode(&h, &claims, &key).expect("sign")
    };
    let jwt = sign(now() + 600);
    let expired_jwt = sign(now() - 3600);

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"[[rules]]
principals = ["ci-bot", "{CI}"]
actions = ["*"]
projects = ["{PROJECT}"]
hosts = ["*.run.app"]

[[rules]]
principals = ["spiffe://corp.test/cli"]
actions = ["read"]
projects = ["*"]
"#
        ),
    )
    .expect("policy");

    let port = free_port();
    let metrics_port = free_port();
    let stderr_path = dir.path().join("stderr.log");
    let state = tempfile::tempdir().expect("state");
    let app = example_app();
    let source_root = app.parent().expect("fixtures dir").to_path_buf();
    let mut daemon = bin()
        .env("RUST_LOG", "debug")
        .env("XDG_STATE_HOME", state.path())
        .args(["--log-format", "json", "serve", "--sandbox"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--local-source-root")
        .arg(&source_root)
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key)
        .arg("--client-ca")
        .arg(&ca_file)
        .arg("--api-tokens-file")
        .arg(&tokens_file)
        .arg("--oidc-jwks-file")
        .arg(&jwks_file)
        .args(["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE])
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .map(ChildGuard::new)
        .expect("serve starts");
    wait_for_port(port, &mut daemon.child);

    // The outside client: TLS with its certificate, and bearer tokens.
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).expect("stubs dir");
    python_stubs(&stubs);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/secure_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--stubs")
        .arg(&stubs)
        .args(["--target", &format!("127.0.0.1:{port}")])
        .arg("--ca")
        .arg(&ca_file)
        .arg("--cert")
        .arg(&python_cert.cert)
        .arg("--key")
        .arg(&python_cert.key)
        .args([
            "--token",
            &token,
            "--jwt",
            &jwt,
            "--expired-jwt",
            &expired_jwt,
        ])
        .args(["--project", PROJECT])
        .arg("--source")
        .arg(&app)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("python JSON");
    assert_eq!(r["preflight"][0], "OK", "{r}");
    assert_eq!(r["preflight"][1], true, "{r}");
    assert_eq!(r["deploy"][0], "OK", "{r}");
    assert_eq!(r["deploy"][1]["success"], true, "{r}");
    // The ID token's email is who deployed.
    assert_eq!(r["caller"][1], CI, "{r}");
    assert_eq!(r["bad_token"][0], "UNAUTHENTICATED", "{r}");
    assert_eq!(r["expired_jwt"][0], "UNAUTHENTICATED", "{r}");
    assert_eq!(r["other_project"][0], "PERMISSION_DENIED", "{r}");
    let dep_id = r["deploy"][1]["id"].as_str().expect("id").to_string();

    // The CLI: https://, the CA, a client certificate (read-only principal).
    let server_url = format!("https://127.0.0.1:{port}");
    // How a CLI call passes the token, if at all.
    enum Token {
        None,
        File,
        Env,
    }
    let cli = |args: &[&str], token_by: Token| {
        let mut c = bin();
        c.args(args)
            .args(["--server", &server_url])
            .arg("--tls-ca")
            .arg(&ca_file)
            .arg("--tls-cert")
            .arg(&cli_cert.cert)
            .arg("--tls-key")
            .arg(&cli_cert.key)
            .env_remove("DEPLOYD_TOKEN");
        match token_by {
            Token::None => {}
            Token::File => {
                c.arg("--token-file").arg(&token_file);
            }
            Token::Env => {
                c.env("DEPLOYD_TOKEN", &token);
            }
        }
        c.output().expect("cli runs")
    };
    let listed = cli(&["list", "--json"], Token::None);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&dep_id));
    // The certificate's principal may read, not cancel; its token may.
    let refused = cli(&["cancel", &dep_id], Token::None);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("PermissionDenied") && said.contains("spiffe://corp.test/cli"),
        "{said}"
    );
    // The token from a file, and from the environment as scripts pass it.
    for by in [Token::File, Token::Env] {
        let status = cli(&["status", &dep_id, "--json"], by);
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    // A token never travels in clear text off this machine.
    let clear = bin()
        .args(["list", "--server", "http://deployd.corp.test:50051"])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .expect("cli");
    assert_eq!(clear.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&clear.stderr).contains("clear text"));

    signal(&daemon.child, rustix::process::Signal::TERM, false).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging was on");

    // The audit trail: every call, accepted or refused, with principal,
    // RPC, target and result.
    let audit: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "deployd::audit")
        .collect();
    let has = |principal: &str, rpc: &str, result: &str| {
        audit.iter().any(|v| {
            v["fields"]["principal"] == principal
                && v["fields"]["rpc"] == rpc
                && v["fields"]["result"] == result
        })
    };
    assert!(has("ci-bot", "Preflight", "OK"), "{audit:#?}");
    // The CLI's status calls: the token's principal, not the certificate's.
    assert!(has("ci-bot", "GetDeployment", "OK"), "{audit:#?}");
    assert!(has(CI, "Deploy", "OK"), "{audit:#?}");
    assert!(has("ci-bot", "ListDeployments", "PERMISSION_DENIED"));
    assert!(has("-", "ListDeployments", "UNAUTHENTICATED"));
    assert!(has("spiffe://corp.test/cli", "ListDeployments", "OK"));
    assert!(has(
        "spiffe://corp.test/cli",
        "CancelDeployment",
        "PERMISSION_DENIED"
    ));
    let deploy_line = audit
        .iter()
        .find(|v| v["fields"]["rpc"] == "Deploy")
        .expect("deploy audited");
    assert_eq!(
        deploy_line["fields"]["target"],
        format!("deployments/{dep_id}")
    );

    // Nothing secret anywhere in the log.
    let signature = |t: &str| t.rsplit('.').next().expect("signature").to_string();
    let key_body = |pem: &str| {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    for (what, secret) in [
        ("API token", token.clone()),
        (
            "API token body",
            token[tokens::TOKEN_PREFIX.len()..].to_string(),
        ),
        ("ID token", jwt.clone()),
        ("ID token signature", signature(&jwt)),
        ("expired ID token signature", signature(&expired_jwt)),
        ("server key", key_body(&server.key_pem)),
        ("client key", key_body(&python_cert.key_pem)),
    ] {
        assert!(!log.contains(&secret), "{what} is in the daemon's log");
        // Nor split over lines of a PEM or JSON escaping.
        assert!(
            !log.contains(&secret[..secret.len().min(24)]),
            "the start of the {what} is in the daemon's log"
        );
    }
}

#[test]
fn serve_refuses_a_network_address_without_authentication() {
    let state = tempfile::tempdir().expect("state");
    let port = free_port();
    let out = bin()
        .env("XDG_STATE_HOME", state.path())
        .args(["serve", "--sandbox", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .expect("serve runs");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "refusing to serve 0.0.0.0:{port} without authentication"
        )),
        "{said}"
    );
    assert!(said.contains("--insecure-allow-unauthenticated"), "{said}");
    assert!(said.contains("--api-tokens-file"), "{said}");

    // With the opt-out it serves, and says so at start.
    let stderr_path = state.path().join("stderr.log");
    let mut daemon = bin()
        .env("XDG_STATE_HOME", state.path())
        .args(["serve", "--sandbox", "--insecure-allow-unauthenticated"])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr"))
        .spawn()
        .map(ChildGuard::new)
        .expect("serve");
    wait_for_port(port, &mut daemon.child);
    drop(daemon);
    let log = std::fs::read_to_string(&stderr_path).expect("log");
    assert!(
        log.contains("WARN") && log.contains("--insecure-allow-unauthenticated"),
        "{log}"
    );
}

/// A loopback HTTP server answering `200 ok` to every request.
fn http_ok_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

#[test]
fn verify_private_hosts_lets_verify_reach_an_internal_address() {
    let app_port = http_ok_server();
    let url = format!("http://localhost:{app_port}/");
    let run = |extra: &[&str]| {
        // The backend is never called by Verify; an endpoint keeps it off Google.
        let mut args = vec!["--gcp-endpoint", "http://127.0.0.1:9"];
        args.extend_from_slice(extra);
        let served = serve(bin(), &args);
        let out = bin()
            .args(["verify", &url, "--attempts", "1"])
            .args(["--server", &format!("http://127.0.0.1:{}", served.grpc)])
            .output()
            .expect("verify");
        drop(served);
        out
    };
    // By default only public addresses of *.run.app are probed.
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("PermissionDenied"), "{said}");
    let allowed = run(&["--verify-private-hosts", "localhost"]);
    assert!(
        allowed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&allowed.stdout),
        String::from_utf8_lossy(&allowed.stderr)
    );
}
