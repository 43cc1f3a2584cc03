//! Verification: a URL is healthy only when it answers an accepted status
//! (and the expected body) within the attempt's timeout. Attempts follow the
//! shared backoff schedule; every attempt is reported and measured.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cloud::Prober;
use super::event::{EventKind, ProbeResult, Reporter, Stage};
use super::model::HealthCheckSpec;
use super::retry::{retry, GaveUp, Retriability, RetryPolicy};
use crate::telemetry::metrics;

#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub healthy: bool,
    pub attempts: u32,
    /// Time to the full body of the successful attempt.
    pub response_time: Option<Duration>,
    pub last_error: Option<String>,
}

/// Joins a base URL and a health path without doubling the slash.
pub fn health_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

pub async fn verify(
    prober: &dyn Prober,
    url: &str,
    spec: &HealthCheckSpec,
    events: &Reporter,
    cancel: &CancellationToken,
) -> Verification {
    let policy = RetryPolicy {
        max_attempts: spec.attempts,
        base_delay: spec.base_delay,
        max_delay: spec.base_delay.saturating_mul(1 << 10),
        jitter: 0.0,
    };
    let target = health_url(url, &spec.path);
    let result = retry(
        &policy,
        cancel,
        |attempt| {
            let target = target.clone();
            async move {
                let r = prober
                    .probe(&target, spec.timeout, spec.expect_body.as_deref())
                    .await;
                let status_ok = r
                    .status
                    .is_some_and(|s| spec.accepted_statuses.contains(&s));
                let healthy = r.error.is_none() && status_ok && r.body_contains_expected;
                let error = if healthy {
                    None
                } else if let Some((class, msg)) = &r.error {
                    Some(format!("{class:?}: {msg}"))
                } else if !status_ok {
                    Some(format!(
                        "HttpStatus: {} is not an accepted status",
                        r.status.unwrap_or(0)
                    ))
                } else {
                    Some("BodyMismatch: the body lacks the expected text".into())
                };
                metrics::health_check(if healthy { "healthy" } else { "unhealthy" }, r.body_after);
                let probe = ProbeResult {
                    attempt,
                    url: target.clone(),
                    status: r.status,
                    response_time: r.body_after,
                    healthy,
                    error: error.clone(),
                };
                events
                    .emit(Some(Stage::Verify), EventKind::Probe(probe))
                    .await;
                match error {
                    None => Ok(r.body_after),
                    Some(e) => Err(e),
                }
            }
        },
        |_| Retriability::Retriable { after: None },
        |attempt, delay, reason: &String| {
            events.emit(
                Some(Stage::Verify),
                EventKind::Retry {
                    operation: "health check".into(),
                    attempt,
                    delay,
                    reason: reason.clone(),
                },
            )
        },
    )
    .await;
    match result {
        Ok((rt, attempts)) => Verification {
            healthy: true,
            attempts,
            response_time: Some(rt),
            last_error: None,
        },
        Err(GaveUp::Failed { error, attempts }) => Verification {
            healthy: false,
            attempts,
            response_time: None,
            last_error: Some(error),
        },
        Err(GaveUp::Cancelled { attempts }) => Verification {
            healthy: false,
            attempts,
            response_time: None,
            last_error: Some("cancelled".into()),
        },
    }
}
