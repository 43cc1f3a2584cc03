//! The one place that sends requests to Google: base URLs, credentials,
//! and turning non-2xx answers into [`GcpError`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::error::{decode, GcpError};
use crate::pipeline::error::Code;

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Base URL of each API. Production uses Google's global hosts; an emulator
/// serves them all from one base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub service_usage: String,
    pub resource_manager: String,
    pub iam: String,
    pub iam_credentials: String,
    pub org_policy: String,
    pub artifact_registry: String,
    pub storage: String,
    pub cloud_build: String,
    pub run: String,
    pub monitoring: String,
    pub logging: String,
}

impl Endpoints {
    pub fn google() -> Self {
        Self {
            service_usage: "https://serviceusage.googleapis.com".into(),
            resource_manager: "https://cloudresourcemanager.googleapis.com".into(),
            iam: "https://iam.googleapis.com".into(),
            iam_credentials: "https://iamcredentials.googleapis.com".into(),
            org_policy: "https://orgpolicy.googleapis.com".into(),
            artifact_registry: "https://artifactregistry.googleapis.com".into(),
            storage: "https://storage.googleapis.com".into(),
            cloud_build: "https://cloudbuild.googleapis.com".into(),
            run: "https://run.googleapis.com".into(),
            monitoring: "https://monitoring.googleapis.com".into(),
            logging: "https://logging.googleapis.com".into(),
        }
    }

    /// Every API at one base URL, emulator style.
    pub fn single(base: &str) -> Self {
        let b = base.trim_end_matches('/').to_string();
        Self {
            service_usage: b.clone(),
            resource_manager: b.clone(),
            iam: b.clone(),
            iam_credentials: b.clone(),
            org_policy: b.clone(),
            artifact_registry: b.clone(),
            storage: b.clone(),
            cloud_build: b.clone(),
            run: b.clone(),
            monitoring: b.clone(),
            logging: b,
        }
    }
}

/// How requests are authorized.
#[derive(Clone)]
pub enum Credentials {
    /// Application Default Credentials through gcp_auth.
    Google(Arc<dyn gcp_auth::TokenProvider>),
    /// An emulator: no Authorization header.
    None,
}

#[derive(Clone)]
pub struct Transport {
    pub client: reqwest::Client,
    pub endpoints: Endpoints,
    credentials: Credentials,
    /// Calls sent at once; the rest wait their turn. Over HTTP/1.1 (an
    /// emulator) each is a connection, so this bounds the daemon's sockets
    /// under a burst; Google's HTTP/2 front ends multiplex them anyway.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Long polls held at once, out of `in_flight`: beyond this a waiter
    /// polls instead, so held calls never crowd out short ones.
    long_polls: Arc<tokio::sync::Semaphore>,
}

/// Google API calls in flight at once, daemon-wide.
pub const MAX_CALLS_IN_FLIGHT: usize = 256;
/// Of those, long polls (`:wait`) held at once.
pub const MAX_LONG_POLLS: usize = 64;

/// Idle connections kept per API host, and for how long.
const IDLE_CONNECTIONS_PER_HOST: usize = 16;
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

impl Transport {
    pub fn new(
        endpoints: Endpoints,
        credentials: Credentials,
        request_timeout: Duration,
    ) -> Result<Self, GcpError> {
        let client = crate::tls::http_client(&*crate::tls::system_client_config()?)
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(10))
            // A burst of deploys opens many connections at once; keep only
            // a few idle per host, and not for long, so descriptors return
            // after the burst. (Google's front ends speak HTTP/2, where
            // one connection carries many calls.)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("deployd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| GcpError::Transport {
                method: "client",
                source,
            })?;
        Ok(Self {
            client,
            endpoints,
            credentials,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            long_polls: Arc::new(tokio::sync::Semaphore::new(MAX_LONG_POLLS)),
        })
    }

    /// A slot for one long poll, if one is free now.
    pub fn try_long_poll(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.long_polls.clone().try_acquire_owned().ok()
    }

    pub fn request(&self, method: Method, url: String) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends and returns the response if its status is 2xx.
    pub async fn send(
        &self,
        method: &'static str,
        rb: RequestBuilder,
    ) -> Result<Response, GcpError> {
        let (result, call) = self.exchange(method, rb).await;
        let resp = match result {
            Ok(r) if r.status().is_success() => {
                call.end(None);
                return Ok(r);
            }
            Ok(r) => r,
            Err(e) => {
                call.end(Some(transport_code(&e)));
                return Err(e);
            }
        };
        let error = Self::error_of(method, resp).await;
        call.end(Some(error.code().unwrap_or(Code::Unavailable)));
        Err(error)
    }

    /// Sends and returns the response whatever its status; only transport
    /// failures are errors. For protocols with meaningful non-2xx answers
    /// (resumable uploads' 308).
    pub async fn send_unchecked(
        &self,
        method: &'static str,
        rb: RequestBuilder,
    ) -> Result<Response, GcpError> {
        let (result, call) = self.exchange(method, rb).await;
        match &result {
            Ok(r) if r.status().as_u16() < 400 => call.end(None),
            Ok(r) => call.end(Some(Code::from_http(r.status().as_u16()))),
            Err(e) => call.end(Some(transport_code(e))),
        }
        result
    }

    /// One HTTP exchange, to the answer's headers, in a client span by
    /// the HTTP conventions; the returned [`ApiCall`] records its code.
    async fn exchange(
        &self,
        method: &'static str,
        rb: RequestBuilder,
    ) -> (Result<Response, GcpError>, ApiCall) {
        let api = method.split('.').next().unwrap_or(method);
        let span = tracing::info_span!(
            "gcp",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = tracing::field::Empty,
            url.full = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            gcp.client.service = api,
            deployd.google_api.method = method,
        );
        let started = std::time::Instant::now();
        let call = ApiCall {
            method,
            span: span.clone(),
            started,
        };
        let rb = match &self.credentials {
            Credentials::Google(p) => match p.token(&[SCOPE]).await {
                Ok(token) => rb.bearer_auth(token.as_str()),
                Err(e) => return (Err(GcpError::Auth(e)), call),
            },
            Credentials::None => rb,
        };
        let request = match rb.build() {
            Ok(r) => r,
            Err(source) => return (Err(GcpError::Transport { method, source }), call),
        };
        let url = request.url();
        span.record("http.request.method", request.method().as_str());
        // Without the query: an upload's query carries its session id.
        span.record("url.full", crate::telemetry::url_for_span(url).as_str());
        if let Some(host) = url.host_str() {
            span.record("server.address", host);
        }
        if let Some(port) = url.port_or_known_default() {
            span.record("server.port", i64::from(port));
        }
        // Until the answer's headers; the semaphore is never closed.
        let _slot = self.in_flight.acquire().await.ok();
        let result = self
            .client
            .execute(request)
            .instrument(span.clone())
            .await
            .map_err(|source| GcpError::Transport { method, source });
        if let Ok(r) = &result {
            span.record("http.response.status_code", i64::from(r.status().as_u16()));
        }
        (result, call)
    }

    /// Turns an error response into its typed error.
    pub async fn error_of(method: &'static str, resp: Response) -> GcpError {
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(body) => decode(method, status, &body),
            Err(source) => GcpError::Transport { method, source },
        }
    }

    /// Sends and decodes a JSON body.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: &'static str,
        rb: RequestBuilder,
    ) -> Result<T, GcpError> {
        let resp = self.send(method, rb).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|source| GcpError::Transport { method, source })?;
        // An empty body is `{}` in proto3 JSON.
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        serde_json::from_slice(body).map_err(|source| GcpError::Decode { method, source })
    }
}

/// A Google API call in progress: `end` counts it, with its latency, and
/// marks its span failed for any code but OK.
struct ApiCall {
    method: &'static str,
    span: tracing::Span,
    started: std::time::Instant,
}

impl ApiCall {
    /// `None` is OK; otherwise the canonical code of the failure.
    fn end(self, code: Option<Code>) {
        let name = code.map_or("OK", Code::name);
        crate::telemetry::metrics::google_api_call(self.method, name, self.started.elapsed());
        if code.is_some() {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", name);
        }
    }
}

/// The canonical code of a call with no usable answer.
fn transport_code(e: &GcpError) -> Code {
    match e {
        GcpError::Transport { source, .. } if source.is_timeout() => Code::DeadlineExceeded,
        GcpError::Auth(_) => Code::Unauthenticated,
        _ => Code::Unavailable,
    }
}

/// Everything but RFC 3986's unreserved characters and '@' (service
/// account emails read better unencoded, and '@' is a valid path character).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// Percent-encodes one path segment: '/', '?', '#', ':' and '%' become
/// escapes, and a segment of dots is escaped whole, so no value can add a
/// segment, a query, or a custom verb, or climb the path.
pub fn segment(s: &str) -> String {
    if s.bytes().all(|b| b == b'.') {
        return s.bytes().map(|_| "%2E").collect();
    }
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_cannot_change_the_path() {
        assert_eq!(segment("my-project"), "my-project");
        assert_eq!(segment("example.com:proj"), "example.com%3Aproj");
        assert_eq!(segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(
            segment("sa@p.iam.gserviceaccount.com"),
            "sa@p.iam.gserviceaccount.com"
        );
    }
}

#[cfg(test)]
mod burst_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A burst larger than the bound never has more calls open at the
    /// server than `MAX_CALLS_IN_FLIGHT`, and every call is answered.
    #[tokio::test]
    async fn a_burst_keeps_at_most_the_bound_in_flight() {
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let app = {
            let (open, peak) = (open.clone(), peak.clone());
            axum::Router::new().fallback(move || {
                let (open, peak) = (open.clone(), peak.clone());
                async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    "{}"
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let t = Transport::new(
            Endpoints::single(&base),
            Credentials::None,
            Duration::from_secs(30),
        )
        .expect("transport");
        let calls = MAX_CALLS_IN_FLIGHT + 100;
        let answers = futures::future::join_all((0..calls).map(|_| {
            let t = t.clone();
            let url = format!("{base}/x");
            async move {
                t.json::<serde_json::Value>("test.get", t.request(Method::GET, url))
                    .await
            }
        }))
        .await;
        assert!(answers.iter().all(Result::is_ok));
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= MAX_CALLS_IN_FLIGHT, "{peak} calls open at once");
        assert!(
            peak >= MAX_CALLS_IN_FLIGHT / 2,
            "the calls did run concurrently: {peak}"
        );
    }

    #[test]
    fn long_polls_beyond_their_bound_are_refused_a_slot() {
        let t = Transport::new(
            Endpoints::single("http://127.0.0.1:9"),
            Credentials::None,
            Duration::from_secs(1),
        )
        .expect("transport");
        let held: Vec<_> = (0..MAX_LONG_POLLS)
            .filter_map(|_| t.try_long_poll())
            .collect();
        assert_eq!(held.len(), MAX_LONG_POLLS);
        assert!(t.try_long_poll().is_none());
        drop(held);
        assert!(t.try_long_poll().is_some());
    }
}
