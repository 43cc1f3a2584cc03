//! Verification: a URL is healthy only when it answers an accepted status
//! (and the expected body) within the attempt's timeout. Attempts follow the
//! shared backoff schedule; every attempt is reported and measured.
//!
//! URLs supplied by a `Verify` caller pass [`UrlPolicy`] first: a deploy
//! daemon must not become a probe into the internal network.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::addr::{check_addresses, host_matches};
use super::cloud::{ProbeErrorClass, ProbeRequest, ProbeResponse, Prober};
use super::event::{EventKind, ProbeResult, ProbeStats, Reporter, Stage};
use super::model::HealthCheckSpec;
use super::retry::{retry, GaveUp, Retriability, RetryPolicy};
use crate::telemetry::metrics::{self, ProbeOrigin};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub healthy: bool,
    pub attempts: u32,
    /// Time to the full body of the successful attempt.
    pub response_time: Option<Duration>,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    pub final_url: Option<String>,
    pub stats: Option<ProbeStats>,
}

/// Joins a base URL and a health path without doubling the slash.
pub fn health_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// Which hosts a `Verify` caller may have probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Host names allowed; `*.example.com` allows subdomains.
    pub allowed_hosts: Vec<String>,
    /// Hosts allowed to resolve to private or loopback addresses (the
    /// sandbox's). Link-local addresses, the metadata server's among them,
    /// are never allowed.
    pub private_ok_hosts: Vec<String>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self {
            allowed_hosts: vec!["*.run.app".into()],
            private_ok_hosts: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} may not be probed: {reason}")]
pub struct UrlRefused {
    pub url: String,
    pub reason: String,
}

/// What the policy says of a URL's host at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Connect to these addresses and no others.
    Addresses(Vec<SocketAddr>),
    /// The name does not resolve (yet): nothing to connect to, which is a
    /// failed attempt, not a refusal.
    Unresolved(String),
}

impl UrlPolicy {
    /// Checks the host by name, then every address it resolves to; returns
    /// the approved addresses so the probe connects to them and no others.
    pub async fn authorize(&self, url: &str, prober: &dyn Prober) -> Result<Approval, UrlRefused> {
        let refuse = |reason: String| UrlRefused {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| refuse(format!("not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(refuse("only http and https URLs are probed".into()));
        }
        let host = parsed.host_str().ok_or_else(|| refuse("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowed_hosts.iter().any(|p| host_matches(p, host)) {
            return Err(refuse(format!(
                "host {host} is not in the verify allow-list ({})",
                self.allowed_hosts.join(", ")
            )));
        }
        let addrs = match lookup(&parsed, prober).await {
            Ok(Lookup::Literal(addr)) => vec![addr],
            Ok(Lookup::Resolved(addrs)) => addrs,
            Err(why) => return Ok(Approval::Unresolved(why)),
        };
        let private_ok = self.private_ok_hosts.iter().any(|p| host_matches(p, host));
        check_addresses(host, &addrs, private_ok).map_err(refuse)?;
        Ok(Approval::Addresses(addrs))
    }
}

/// How to probe, beyond the health check itself.
pub struct ProbeContext<'a> {
    /// `Authorization: Bearer` for services that refuse anonymous requests.
    pub id_token: Option<String>,
    /// For a caller's URL: each attempt is authorized anew and connects
    /// only to the addresses approved for it.
    pub policy: Option<&'a UrlPolicy>,
    /// Whose probes these are, as the metrics count them.
    pub origin: ProbeOrigin,
    /// The stage its probe and retry events belong to: a rollback's
    /// probes are the rollback's.
    pub stage: Stage,
}

impl Default for ProbeContext<'_> {
    fn default() -> Self {
        Self {
            id_token: None,
            policy: None,
            origin: ProbeOrigin::default(),
            stage: Stage::Verify,
        }
    }
}

/// Where a URL's host points now.
enum Lookup {
    /// The host is an address.
    Literal(SocketAddr),
    /// What the name resolves to (never empty).
    Resolved(Vec<SocketAddr>),
}

/// Resolves the URL's host, here rather than inside the HTTP client, so a
/// DNS failure is known by where it happened (`Err`: why it has no address)
/// and the probe connects to what was resolved.
async fn lookup(url: &url::Url, prober: &dyn Prober) -> Result<Lookup, String> {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Lookup::Literal(SocketAddr::new(ip, port)));
    }
    match prober.resolve(host, port).await {
        Ok(addrs) if !addrs.is_empty() => Ok(Lookup::Resolved(addrs)),
        Ok(_) => Err(format!("{host} resolves to no address")),
        Err(e) => Err(format!("{host} does not resolve ({e})")),
    }
}

/// The addresses one attempt may connect to (`None`: any, the host being an
/// address), or why it cannot be made: a URL the Run API gave is only
/// resolved; a caller's URL is authorized by the policy.
async fn approve(
    target: &str,
    policy: Option<&UrlPolicy>,
    prober: &dyn Prober,
) -> Result<Option<Vec<SocketAddr>>, (ProbeErrorClass, String)> {
    match policy {
        Some(p) => match p.authorize(target, prober).await {
            Ok(Approval::Addresses(addrs)) => Ok(Some(addrs)),
            Ok(Approval::Unresolved(why)) => Err((ProbeErrorClass::Dns, why)),
            Err(refused) => Err((ProbeErrorClass::Refused, refused.to_string())),
        },
        None => match url::Url::parse(target) {
            Err(e) => Err((
                ProbeErrorClass::Other,
                format!("{target} is not a URL ({e})"),
            )),
            Ok(url) => match lookup(&url, prober).await {
                Ok(Lookup::Literal(_)) => Ok(None),
                Ok(Lookup::Resolved(addrs)) => Ok(Some(addrs)),
                Err(why) => Err((ProbeErrorClass::Dns, why)),
            },
        },
    }
}

/// An attempt that got no answer (nothing sent, or given up): its time is
/// what it took until then.
fn no_answer(
    url: &str,
    started: std::time::Instant,
    error: (ProbeErrorClass, String),
) -> ProbeResponse {
    ProbeResponse {
        status: None,
        headers_after: started.elapsed(),
        body_after: started.elapsed(),
        body_contains_expected: false,
        error: Some(error),
        final_url: url.to_string(),
    }
}

/// Between two answers of a health gate: the backoff's first wait, at
/// most a second (the gate asks for a streak, not for patience).
fn gate_interval(spec: &HealthCheckSpec) -> std::time::Duration {
    spec.base_delay.min(std::time::Duration::from_secs(1))
}

/// One probe of `target` as the health check asks it, and why it failed
/// (`None` when it passed), in a client span of its own (`health_check`,
/// with the URL, the status and the error class).
pub(crate) async fn probe_once(
    prober: &dyn Prober,
    target: &str,
    spec: &HealthCheckSpec,
    headers: &[(String, String)],
    policy: Option<&UrlPolicy>,
    cancel: &CancellationToken,
) -> (ProbeResponse, Option<ProbeErrorClass>, Option<String>) {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "health_check",
        otel.kind = "client",
        http.request.method = "GET",
        url.full = url::Url::parse(target)
            .map(|u| crate::telemetry::url_for_span(&u))
            .unwrap_or_default(),
        http.response.status_code = tracing::field::Empty,
        healthy = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let (r, class, error) = probe_attempt(prober, target, spec, headers, policy, cancel)
        .instrument(span.clone())
        .await;
    if let Some(status) = r.status {
        span.record("http.response.status_code", i64::from(status));
    }
    span.record("healthy", error.is_none());
    if let Some(class) = class {
        span.record("error.type", format!("{class:?}").as_str());
        span.record("otel.status_code", "ERROR");
    }
    (r, class, error)
}

/// The probe itself: the address approved, the request sent within the
/// timeout, status and body judged.
async fn probe_attempt(
    prober: &dyn Prober,
    target: &str,
    spec: &HealthCheckSpec,
    headers: &[(String, String)],
    policy: Option<&UrlPolicy>,
    cancel: &CancellationToken,
) -> (ProbeResponse, Option<ProbeErrorClass>, Option<String>) {
    let started = std::time::Instant::now();
    // A resolver that never answers must not outlast the attempt.
    let approval = tokio::time::timeout(spec.timeout, approve(target, policy, prober))
        .await
        .unwrap_or_else(|_| {
            Err((
                ProbeErrorClass::Dns,
                format!("no address for {target} within {:?}", spec.timeout),
            ))
        });
    let r = match approval {
        Ok(pinned) => {
            let req = ProbeRequest {
                url: target,
                // One budget for the whole attempt.
                timeout: spec.timeout.saturating_sub(started.elapsed()),
                expect_body: spec.expect_body.as_deref(),
                headers: headers.to_vec(),
                pinned: pinned.as_deref(),
            };
            let probe = prober.probe(&req);
            // A cancelled run drops the probe, and with it its
            // connection, instead of waiting out its timeout.
            tokio::select! {
                r = probe => r,
                _ = cancel.cancelled() => {
                    no_answer(target, started, (ProbeErrorClass::Other, "cancelled".into()))
                }
            }
        }
        // Nothing was sent: the attempt is what resolving took.
        Err(failure) => no_answer(target, started, failure),
    };
    let status_ok = r
        .status
        .is_some_and(|s| spec.accepted_statuses.contains(&s));
    let (class, error) = match (&r.error, status_ok, r.body_contains_expected) {
        (Some((class, msg)), _, _) => (Some(*class), Some(msg.clone())),
        (None, false, _) => (
            Some(ProbeErrorClass::HttpStatus),
            Some(format!("status {} is not accepted", r.status.unwrap_or(0))),
        ),
        (None, true, false) => (
            Some(ProbeErrorClass::BodyMismatch),
            Some(format!(
                "the body lacks the expected text {}",
                super::rules::shown(spec.expect_body.as_deref().unwrap_or_default())
            )),
        ),
        (None, true, true) => (None, None),
    };
    (r, class, error)
}

/// A failed attempt; a refusal by the policy ends the verification.
struct AttemptFailed {
    message: String,
    refused: bool,
}

pub async fn verify(
    prober: &dyn Prober,
    url: &str,
    spec: &HealthCheckSpec,
    ctx: ProbeContext<'_>,
    events: &Reporter,
    cancel: &CancellationToken,
) -> Verification {
    let policy = RetryPolicy {
        max_attempts: spec.attempts,
        base_delay: spec.base_delay,
        max_delay: spec
            .max_delay
            .unwrap_or(spec.base_delay.saturating_mul(1 << 10)),
        jitter: 0.0,
    };
    let target = health_url(url, &spec.path);
    let stage = ctx.stage;
    let mut headers: Vec<(String, String)> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(token) = &ctx.id_token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let times = std::sync::Mutex::new(Vec::new());
    let last_status = std::sync::Mutex::new(None);
    let result = retry(
        &policy,
        cancel,
        |attempt| {
            let (target, headers, times, last_status) = (&target, &headers, &times, &last_status);
            async move {
                // A gate of N consecutive healthy answers: one failure ends
                // the attempt (and the streak); the next attempt starts over.
                let mut streak = 0;
                loop {
                    let (r, class, error) =
                        probe_once(prober, target, spec, headers, ctx.policy, cancel).await;
                    let healthy = error.is_none();
                    metrics::health_check(
                        ctx.origin,
                        if healthy { "healthy" } else { "unhealthy" },
                        r.body_after,
                    );
                    if let Ok(mut t) = times.lock() {
                        t.push(r.body_after);
                    }
                    if let Ok(mut s) = last_status.lock() {
                        *s = r.status;
                    }
                    let probe = ProbeResult {
                        attempt,
                        url: target.clone(),
                        status: r.status,
                        response_time: r.body_after,
                        headers_time: r.headers_after,
                        healthy,
                        error: error.clone(),
                        error_class: class,
                        final_url: r.final_url.clone(),
                    };
                    events.emit(Some(stage), EventKind::Probe(probe)).await;
                    match error {
                        None => {
                            streak += 1;
                            if streak >= spec.consecutive_successes.max(1) {
                                return Ok((r.body_after, r.final_url));
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(gate_interval(spec)) => {}
                                _ = cancel.cancelled() => return Err(AttemptFailed {
                                    message: "cancelled".into(),
                                    refused: false,
                                }),
                            }
                        }
                        Some(e) => {
                            return Err(AttemptFailed {
                                message: format!(
                                    "{}: {e}",
                                    class.map(|c| c.as_str()).unwrap_or("other")
                                ),
                                refused: class == Some(ProbeErrorClass::Refused),
                            })
                        }
                    }
                }
            }
        },
        |f: &AttemptFailed| {
            if f.refused {
                Retriability::Permanent
            } else {
                Retriability::Retriable { after: None }
            }
        },
        |attempt, delay, reason: &AttemptFailed| {
            events.emit(
                Some(stage),
                EventKind::Retry {
                    operation: "health check".into(),
                    attempt,
                    delay,
                    reason: reason.message.clone(),
                },
            )
        },
    )
    .await;
    let stats = stats(&times.lock().map(|t| t.clone()).unwrap_or_default());
    let last_status = last_status.lock().ok().and_then(|s| *s);
    match result {
        Ok(((rt, final_url), attempts)) => Verification {
            healthy: true,
            attempts,
            response_time: Some(rt),
            last_error: None,
            last_status,
            final_url: Some(final_url),
            stats,
        },
        Err(GaveUp::Failed { error, attempts }) => Verification {
            healthy: false,
            attempts,
            response_time: None,
            last_error: Some(error.message),
            last_status,
            final_url: None,
            stats,
        },
        Err(GaveUp::Cancelled { attempts }) => Verification {
            healthy: false,
            attempts,
            response_time: None,
            last_error: Some("cancelled".into()),
            last_status,
            final_url: None,
            stats,
        },
    }
}

/// Exact percentiles (HDR histogram, microseconds, 3 significant digits).
pub fn stats(times: &[Duration]) -> Option<ProbeStats> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok()?;
    for t in times {
        h.saturating_record((t.as_micros() as u64).max(1));
    }
    if h.is_empty() {
        return None;
    }
    Some(ProbeStats {
        attempts: times.len() as u32,
        p50: Duration::from_micros(h.value_at_quantile(0.50)),
        p95: Duration::from_micros(h.value_at_quantile(0.95)),
        max: Duration::from_micros(h.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.run.app", "api-abc-uc.a.run.app"));
        assert!(!host_matches("*.run.app", "run.app"));
        assert!(!host_matches("*.run.app", "evilrun.app"));
        assert!(host_matches("127.0.0.1", "127.0.0.1"));
        assert!(!host_matches("127.0.0.1", "127.0.0.10"));
    }

    /// Resolves a host to the next of `answers` each time, and answers
    /// every probe 503; records where each probe was allowed to connect.
    struct Rebinding {
        answers: std::sync::Mutex<Vec<std::io::Result<Vec<SocketAddr>>>>,
        probed: std::sync::Mutex<Vec<Vec<SocketAddr>>>,
    }

    #[async_trait::async_trait]
    impl Prober for Rebinding {
        async fn probe(&self, req: &ProbeRequest<'_>) -> ProbeResponse {
            if let Ok(mut p) = self.probed.lock() {
                p.push(req.pinned.map(<[SocketAddr]>::to_vec).unwrap_or_default());
            }
            ProbeResponse {
                status: Some(503),
                headers_after: Duration::from_millis(1),
                body_after: Duration::from_millis(1),
                body_contains_expected: true,
                error: None,
                final_url: req.url.to_string(),
            }
        }

        async fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.answers
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .remove(0)
        }
    }

    #[tokio::test]
    async fn every_attempt_is_authorized_again() {
        let public: SocketAddr = "142.250.1.1:443".parse().expect("addr");
        let metadata: SocketAddr = "169.254.169.254:443".parse().expect("addr");
        let prober = Rebinding {
            answers: std::sync::Mutex::new(vec![
                Err(std::io::Error::other("not found yet")),
                Ok(vec![public]),
                // Rebound to the metadata server: refused, never probed.
                Ok(vec![metadata]),
                Ok(vec![public]),
            ]),
            probed: std::sync::Mutex::new(vec![]),
        };
        let policy = UrlPolicy::default();
        let spec = HealthCheckSpec {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            ..HealthCheckSpec::default()
        };
        let ctx = ProbeContext {
            id_token: None,
            policy: Some(&policy),
            origin: ProbeOrigin::VerifyRpc,
            stage: Stage::Verify,
        };
        let v = verify(
            &prober,
            "https://api-abc-uc.a.run.app",
            &spec,
            ctx,
            &Reporter::detached("t".into()),
            &CancellationToken::new(),
        )
        .await;
        assert!(!v.healthy);
        // dns, then http_status, then refused: the refusal ends it.
        assert_eq!(v.attempts, 3);
        let last = v.last_error.unwrap_or_default();
        assert!(last.starts_with("refused:"), "{last}");
        assert!(last.contains("169.254.169.254"), "{last}");
        let probed = prober.probed.lock().map(|p| p.clone()).unwrap_or_default();
        assert_eq!(
            probed,
            vec![vec![public]],
            "only the approved address was probed"
        );
    }

    #[tokio::test]
    async fn without_a_policy_names_are_still_resolved_first() {
        let public: SocketAddr = "142.250.1.1:443".parse().expect("addr");
        let prober = Rebinding {
            answers: std::sync::Mutex::new(vec![
                Err(std::io::Error::other("no such host")),
                Ok(vec![public]),
            ]),
            probed: std::sync::Mutex::new(vec![]),
        };
        let spec = HealthCheckSpec {
            attempts: 2,
            base_delay: Duration::from_millis(1),
            ..HealthCheckSpec::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let v = verify(
            &prober,
            "https://api-abc-uc.a.run.app",
            &spec,
            ProbeContext::default(),
            &Reporter::new("t".into(), tx),
            &CancellationToken::new(),
        )
        .await;
        let mut classes = vec![];
        while let Ok(e) = rx.try_recv() {
            if let EventKind::Probe(p) = e.kind {
                classes.push(p.error_class.map(ProbeErrorClass::as_str));
            }
        }
        assert_eq!(classes, vec![Some("dns"), Some("http_status")]);
        assert_eq!(v.attempts, 2);
        let probed = prober.probed.lock().map(|p| p.clone()).unwrap_or_default();
        assert_eq!(
            probed,
            vec![vec![public]],
            "the probe connects to what was resolved"
        );
    }

    /// A resolver that never answers.
    struct SilentDns;

    #[async_trait::async_trait]
    impl Prober for SilentDns {
        async fn probe(&self, _: &ProbeRequest<'_>) -> ProbeResponse {
            unreachable!("nothing to connect to")
        }

        async fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_resolver_that_never_answers_fails_the_attempt_in_time() {
        let spec = HealthCheckSpec {
            attempts: 1,
            timeout: Duration::from_millis(50),
            ..HealthCheckSpec::default()
        };
        let started = std::time::Instant::now();
        let v = verify(
            &SilentDns,
            "https://api-abc-uc.a.run.app",
            &spec,
            ProbeContext::default(),
            &Reporter::detached("t".into()),
            &CancellationToken::new(),
        )
        .await;
        assert!(!v.healthy);
        let last = v.last_error.unwrap_or_default();
        assert!(last.starts_with("dns: no address"), "{last}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn hdr_percentiles_are_exact_enough() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = stats(&times).expect("stats");
        assert_eq!(s.attempts, 100);
        assert!(
            (s.p50.as_secs_f64() * 1000.0 - 50.0).abs() < 0.1,
            "{:?}",
            s.p50
        );
        assert!(
            (s.p95.as_secs_f64() * 1000.0 - 95.0).abs() < 0.1,
            "{:?}",
            s.p95
        );
        assert!(
            (s.max.as_secs_f64() * 1000.0 - 100.0).abs() < 0.1,
            "{:?}",
            s.max
        );
    }
}
