//! The HTTP health prober (reqwest). Measures time to headers and to the
//! full body, follows redirects only within the same host, and classifies
//! failures by what went wrong on the wire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use reqwest::redirect::Policy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::pipeline::cloud::{ProbeErrorClass, ProbeRequest, ProbeResponse, Prober};

const MAX_REDIRECTS: usize = 10;

pub struct HttpProber {
    client: reqwest::Client,
    /// The system's roots plus any CA trusted besides (services behind a
    /// private CA, e.g. internal load balancers), shared by every client.
    tls: Arc<rustls::ClientConfig>,
}

fn builder(tls: &rustls::ClientConfig) -> reqwest::ClientBuilder {
    crate::tls::http_client(tls)
        // Probes of one verification come seconds apart and then stop, and
        // each should see the service as a new client would: no connection
        // outlives its probe, so none is left to every service ever probed.
        .pool_max_idle_per_host(0)
        // A redirect to another host is reported, not followed: a health
        // check answered by a login page elsewhere is not a healthy service.
        .redirect(Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .map(|u| (u.host_str(), u.port_or_known_default()))
                == Some((
                    attempt.url().host_str(),
                    attempt.url().port_or_known_default(),
                ));
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if same_host {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .user_agent(concat!("deployd-verify/", env!("CARGO_PKG_VERSION")))
}

#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("building the HTTP client")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("reading the CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
}

impl HttpProber {
    pub fn new() -> Result<Self, ProberError> {
        Self::with_tls(crate::tls::system_client_config()?)
    }

    /// Also trusts the certificates of a PEM bundle.
    pub fn with_ca_file(path: &Path) -> Result<Self, ProberError> {
        let bad = |reason: String| ProberError::CaBundle {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        // An empty bundle would silently trust nothing more.
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad("no PEM certificate in it".into()));
        }
        let roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        Self::with_tls(
            crate::tls::client_config(&roots)
                .map_err(|e| bad(crate::pipeline::error::error_chain(&e)))?,
        )
    }

    fn with_tls(tls: Arc<rustls::ClientConfig>) -> Result<Self, ProberError> {
        Ok(Self {
            client: builder(&tls).build()?,
            tls,
        })
    }
}

/// By type, never by message. DNS failures do not reach here: names are
/// resolved before the probe (`pipeline::verify`), which connects only to
/// what was resolved.
fn classify(e: &reqwest::Error) -> ProbeErrorClass {
    if e.is_timeout() {
        ProbeErrorClass::Timeout
    } else if e.is_redirect() {
        ProbeErrorClass::Redirect
    } else if tls_failure(e) {
        ProbeErrorClass::Tls
    } else if e.is_connect() {
        ProbeErrorClass::Connect
    } else {
        ProbeErrorClass::Other
    }
}

/// Whether a rustls error is in the chain. hyper-rustls wraps it in
/// `io::Error`s (two deep), whose `source()` skips what they wrap, so those
/// are opened with `get_ref`.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

#[async_trait]
impl Prober for HttpProber {
    async fn probe(&self, req: &ProbeRequest<'_>) -> ProbeResponse {
        // Pinned addresses need a client of their own, built before the
        // clock starts: its setup is not the service's response time.
        let client = match (req.pinned, url::Url::parse(req.url)) {
            (Some(addrs), Ok(u)) => match u.host_str() {
                Some(host) => builder(&self.tls).resolve_to_addrs(host, addrs).build(),
                None => Ok(self.client.clone()),
            },
            _ => Ok(self.client.clone()),
        };
        let start = Instant::now();
        let failed = |class, msg: String, status| ProbeResponse {
            status,
            headers_after: start.elapsed(),
            body_after: start.elapsed(),
            body_contains_expected: false,
            error: Some((class, msg)),
            final_url: req.url.to_string(),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => return failed(ProbeErrorClass::Other, e.to_string(), None),
        };
        let mut rb = client.get(req.url);
        for (k, v) in &req.headers {
            rb = rb.header(k, v);
        }
        let resp = match tokio::time::timeout(req.timeout, rb.send()).await {
            Err(_) => {
                return failed(
                    ProbeErrorClass::Timeout,
                    format!("no response within {:?}", req.timeout),
                    None,
                )
            }
            Ok(Err(e)) => {
                return failed(classify(&e), crate::pipeline::error::error_chain(&e), None)
            }
            Ok(Ok(r)) => r,
        };
        let headers_after = start.elapsed();
        let status = resp.status().as_u16();
        let final_url = resp.url().to_string();
        // A redirect the policy stopped: another host.
        let redirect_elsewhere = resp.status().is_redirection().then(|| {
            resp.headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("(no Location)")
                .to_string()
        });
        let remaining = req.timeout.saturating_sub(headers_after);
        let body = match tokio::time::timeout(remaining, resp.bytes()).await {
            Err(_) => {
                return ProbeResponse {
                    final_url,
                    ..failed(
                        ProbeErrorClass::Timeout,
                        "body not complete within the timeout".into(),
                        Some(status),
                    )
                }
            }
            Ok(Err(e)) => {
                return ProbeResponse {
                    final_url,
                    ..failed(
                        classify(&e),
                        crate::pipeline::error::error_chain(&e),
                        Some(status),
                    )
                }
            }
            Ok(Ok(b)) => b,
        };
        let body_after = start.elapsed();
        let body_contains_expected = match req.expect_body {
            Some(text) => String::from_utf8_lossy(&body).contains(text),
            None => true,
        };
        let error = redirect_elsewhere
            .filter(|location| {
                url::Url::parse(location).is_ok_and(|l| {
                    l.host_str()
                        != url::Url::parse(&final_url)
                            .ok()
                            .as_ref()
                            .and_then(|u| u.host_str())
                })
            })
            .map(|location| {
                (
                    ProbeErrorClass::Redirect,
                    format!("redirects to another host ({location}); not followed"),
                )
            });
        ProbeResponse {
            status: Some(status),
            headers_after,
            body_after,
            body_contains_expected,
            error,
            final_url,
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A keep-alive HTTP/1.1 server: answers every request on a connection
    /// and reports when the client closes it.
    async fn keep_alive_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                                if conn.write_all(answer.as_bytes()).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = closed.send(());
                });
            }
        });
        (addr, rx)
    }

    /// The server keeps the connection open; the prober must not.
    #[tokio::test]
    async fn no_connection_outlives_its_probe() {
        let (addr, mut closed) = keep_alive_server().await;
        let prober = HttpProber::new().expect("prober");
        let url = format!("http://{addr}/healthz");
        for _ in 0..2 {
            let r = prober
                .probe(&ProbeRequest {
                    url: &url,
                    timeout: std::time::Duration::from_secs(5),
                    ..Default::default()
                })
                .await;
            assert_eq!(r.status, Some(200), "{r:?}");
            tokio::time::timeout(std::time::Duration::from_secs(5), closed.recv())
                .await
                .expect("the probe's connection is closed once it is answered")
                .expect("server running");
        }
    }
}
