//! Health checks over HTTPS, as Cloud Run serves them: a real TLS server
//! (rustls) with certificates made for each test (rcgen), probed through
//! the Verify RPC. The certificate must chain to a trusted root and name the
//! host; a CA bundle (`DEPLOYD_PROBE_CA_FILE`) adds roots for private CAs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::pki::Ca;
use common::*;
use deployd::api::proto;
use deployd::config::{Backend, DaemonConfig};
use deployd::daemon::{self, DaemonError};
use deployd::probe::ProberError;
use deployd::sandbox::SandboxConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// An HTTPS server on loopback answering `200 ok` to every request.
async fn https_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake is what some tests are about.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A daemon that trusts `ca` besides the system's roots, and its bundle.
async fn daemon_trusting(ca: &Ca) -> (Harness, tempfile::NamedTempFile) {
    let bundle = ca.pem_file();
    let path = bundle.path().to_path_buf();
    let h = Harness::start_config(|c| c.probe_ca_file = Some(path)).await;
    (h, bundle)
}

async fn verify(h: &Harness, url: &str) -> (Vec<proto::Event>, proto::Outcome) {
    let req = proto::VerifyRequest {
        url: url.into(),
        attempts: 2,
        timeout_ms: 2000,
        ..Default::default()
    };
    verify_rpc(h, req).await
}

#[tokio::test]
async fn https_service_behind_a_trusted_ca_is_verified() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["127.0.0.1"]);
    let addr = https_server(chain, key).await;
    let (h, _bundle) = daemon_trusting(&ca).await;
    let url = format!("https://{addr}/");
    let (events, o) = verify(&h, &url).await;
    assert!(o.success && o.verified, "{o:?}");
    let p = probes(&events);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].status_code, 200);
    assert_eq!(o.final_url, url);
}

#[tokio::test]
async fn certificate_from_an_unknown_authority_is_a_tls_failure() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["127.0.0.1"]);
    let addr = https_server(chain, key).await;
    // This daemon trusts the system's roots only.
    let h = Harness::start().await;
    let (events, o) = verify(&h, &format!("https://{addr}/")).await;
    assert!(!o.success && !o.verified);
    let p = probes(&events);
    assert_eq!(p.len(), 2, "each attempt is a probe");
    for probe in &p {
        assert_eq!(probe.error_class, "tls", "{probe:?}");
        assert!(
            probe.error.to_lowercase().contains("unknownissuer")
                || probe.error.to_lowercase().contains("unknown issuer"),
            "{}",
            probe.error
        );
    }
    assert_eq!(o.error.expect("failure").code, "UNHEALTHY");
}

#[tokio::test]
async fn certificate_for_another_name_is_a_tls_failure() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["hello-abc123-uc.a.run.app"]);
    let addr = https_server(chain, key).await;
    let (h, _bundle) = daemon_trusting(&ca).await;
    let (events, o) = verify(&h, &format!("https://{addr}/")).await;
    assert!(!o.verified);
    let p = probes(&events);
    assert!(!p.is_empty());
    assert_eq!(p[0].error_class, "tls", "{:?}", p[0]);
    assert!(
        p[0].error.contains("NotValidForName") || p[0].error.contains("not valid for"),
        "{}",
        p[0].error
    );
}

#[tokio::test]
async fn a_ca_file_without_certificates_stops_the_daemon_at_start() {
    let garbage = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(garbage.path(), "not a certificate\n").expect("write");
    let config = DaemonConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        backend: Backend::Endpoint("http://127.0.0.1:9".into()),
        probe_ca_file: Some(garbage.path().to_path_buf()),
        ..DaemonConfig::default()
    };
    match daemon::start(config, SandboxConfig::fast(), CancellationToken::new()).await {
        Err(DaemonError::Prober(ProberError::CaBundle { path, reason })) => {
            assert_eq!(path, garbage.path());
            assert!(reason.contains("no PEM certificate"), "{reason}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a daemon started with an unusable CA bundle"),
    }
}
