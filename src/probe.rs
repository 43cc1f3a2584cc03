//! The HTTP health prober (reqwest). Measures time to headers and to the
//! full body, and classifies failures by what went wrong on the wire.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::pipeline::cloud::{ProbeErrorClass, ProbeResponse, Prober};

pub struct HttpProber {
    client: reqwest::Client,
}

impl HttpProber {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // 301/302 are judged as answers, not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deployd-verify/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

fn classify(e: &reqwest::Error) -> ProbeErrorClass {
    if e.is_timeout() {
        return ProbeErrorClass::Timeout;
    }
    let chain = crate::pipeline::error::error_chain(e).to_lowercase();
    // reqwest exposes no structured DNS/TLS kinds; its sources' texts are
    // the only place these are told apart.
    if chain.contains("dns error") || chain.contains("failed to lookup") {
        ProbeErrorClass::Dns
    } else if chain.contains("certificate") || chain.contains("tls") {
        ProbeErrorClass::Tls
    } else if e.is_connect() {
        ProbeErrorClass::Connect
    } else {
        ProbeErrorClass::Other
    }
}

#[async_trait]
impl Prober for HttpProber {
    async fn probe(
        &self,
        url: &str,
        timeout: Duration,
        expect_body: Option<&str>,
    ) -> ProbeResponse {
        let start = Instant::now();
        let failed = |class, msg: String, status| ProbeResponse {
            status,
            headers_after: start.elapsed(),
            body_after: start.elapsed(),
            body_contains_expected: false,
            error: Some((class, msg)),
        };
        let resp = match tokio::time::timeout(timeout, self.client.get(url).send()).await {
            Err(_) => {
                return failed(
                    ProbeErrorClass::Timeout,
                    format!("no response within {timeout:?}"),
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
        let remaining = timeout.saturating_sub(headers_after);
        let body = match tokio::time::timeout(remaining, resp.bytes()).await {
            Err(_) => {
                return failed(
                    ProbeErrorClass::Timeout,
                    "body not complete within the timeout".into(),
                    Some(status),
                )
            }
            Ok(Err(e)) => {
                return failed(
                    classify(&e),
                    crate::pipeline::error::error_chain(&e),
                    Some(status),
                )
            }
            Ok(Ok(b)) => b,
        };
        let body_after = start.elapsed();
        let body_contains_expected = match expect_body {
            Some(text) => String::from_utf8_lossy(&body).contains(text),
            None => true,
        };
        ProbeResponse {
            status: Some(status),
            headers_after,
            body_after,
            body_contains_expected,
            error: None,
        }
    }
}
