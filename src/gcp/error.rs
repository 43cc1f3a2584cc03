//! Errors of the client layer, decoded from google.rpc.Status bodies.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::error::{CloudError, Code};

#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    /// The API answered with an error status.
    #[error("{method}: HTTP {http_status} {}: {message}", code.name())]
    Api {
        method: &'static str,
        http_status: u16,
        code: Code,
        reason: Option<String>,
        domain: Option<String>,
        metadata: BTreeMap<String, String>,
        message: String,
        retry_delay: Option<Duration>,
    },
    /// No HTTP answer: connect, reset, timeout.
    #[error("{method}: request failed")]
    Transport {
        method: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method}: unexpected response body")]
    Decode {
        method: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The bytes to send could not be read (the packed archive's file).
    #[error("{method}: reading what to upload")]
    Read {
        method: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A long-running operation finished with `error`.
    #[error("{method}: operation {name} failed: {} {message}", code.name())]
    Operation {
        method: &'static str,
        name: String,
        code: Code,
        message: String,
    },
    #[error("{method}: operation {name} not done after {waited:?}")]
    OperationTimeout {
        method: &'static str,
        name: String,
        waited: Duration,
    },
    #[error("obtaining Google credentials")]
    Auth(#[source] gcp_auth::Error),
    /// The API answered in a way its protocol does not allow.
    #[error("{method}: {message}")]
    Protocol {
        method: &'static str,
        message: String,
    },
}

impl GcpError {
    pub fn code(&self) -> Option<Code> {
        match self {
            GcpError::Api { code, .. } | GcpError::Operation { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is(&self, code: Code) -> bool {
        self.code() == Some(code)
    }

    /// Worth asking again within one logical call (an operation poll, a
    /// resumable chunk): no answer, or an answer saying "not now".
    pub fn is_transient(&self) -> bool {
        matches!(self, GcpError::Transport { .. })
            || self.code().is_some_and(|c| {
                matches!(
                    c,
                    Code::Unavailable
                        | Code::Internal
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                )
            })
    }
}

impl From<GcpError> for CloudError {
    fn from(e: GcpError) -> Self {
        let message = crate::pipeline::error::error_chain(&e);
        match e {
            GcpError::Api {
                method,
                http_status,
                code,
                reason,
                metadata,
                message,
                retry_delay,
                ..
            } => CloudError {
                call: method,
                code,
                http_status: Some(http_status),
                reason,
                metadata,
                message,
                retry_delay,
                transport: false,
            },
            GcpError::Transport { method, .. } => CloudError {
                transport: true,
                ..CloudError::new(method, Code::Unavailable, message)
            },
            GcpError::Decode { method, .. } | GcpError::Read { method, .. } => {
                CloudError::new(method, Code::Internal, message)
            }
            GcpError::Tls(_) => CloudError::new("client", Code::Internal, message),
            GcpError::Operation {
                method,
                code,
                message,
                ..
            } => CloudError::new(method, code, message),
            GcpError::OperationTimeout { method, .. } => {
                CloudError::new(method, Code::DeadlineExceeded, message)
            }
            GcpError::Auth(_) => CloudError::new("auth", Code::Unauthenticated, message),
            GcpError::Protocol { method, .. } => CloudError::new(method, Code::Internal, message),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StatusBody,
}

/// `google.rpc.Status` as the HTTP/JSON APIs send it (AIP-193), plus the
/// legacy `errors[]` that Cloud Storage sends instead of `status`/`details`.
#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
    status: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
    #[serde(default)]
    errors: Vec<LegacyError>,
}

#[derive(Deserialize)]
struct LegacyError {
    #[serde(default)]
    reason: String,
}

/// Decodes an error response. A body that is not a Status still yields a
/// typed error from the HTTP status.
pub fn decode(method: &'static str, http_status: u16, body: &[u8]) -> GcpError {
    let parsed: Option<StatusBody> = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let Some(s) = parsed else {
        return GcpError::Api {
            method,
            http_status,
            code: Code::from_http(http_status),
            reason: None,
            domain: None,
            metadata: BTreeMap::new(),
            message: String::from_utf8_lossy(body).chars().take(500).collect(),
            retry_delay: None,
        };
    };
    let code = s
        .status
        .as_deref()
        .and_then(Code::from_name)
        .unwrap_or_else(|| Code::from_http(if s.code != 0 { s.code } else { http_status }));
    let mut reason = None;
    let mut domain = None;
    let mut metadata = BTreeMap::new();
    let mut retry_delay = None;
    for d in &s.details {
        let ty = d.get("@type").and_then(|t| t.as_str()).unwrap_or_default();
        if ty.ends_with("google.rpc.ErrorInfo") {
            reason = d.get("reason").and_then(|r| r.as_str()).map(str::to_string);
            domain = d.get("domain").and_then(|r| r.as_str()).map(str::to_string);
            if let Some(m) = d.get("metadata").and_then(|m| m.as_object()) {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        metadata.insert(k.clone(), v.to_string());
                    }
                }
            }
        } else if ty.ends_with("google.rpc.RetryInfo") {
            retry_delay = d
                .get("retryDelay")
                .and_then(|v| v.as_str())
                .and_then(parse_duration);
        }
    }
    // Cloud Storage has only the legacy reason.
    if reason.is_none() {
        reason = s
            .errors
            .first()
            .map(|e| e.reason.clone())
            .filter(|r| !r.is_empty());
    }
    GcpError::Api {
        method,
        http_status,
        code,
        reason,
        domain,
        metadata,
        message: s.message,
        retry_delay,
    }
}

/// Parses a protobuf JSON Duration ("17s", "3.5s").
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_service_disabled() {
        let body = br#"{"error":{"code":403,"message":"Cloud Build API has not been used","status":"PERMISSION_DENIED",
          "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com",
          "metadata":{"service":"cloudbuild.googleapis.com","consumer":"projects/acme-prod"}}]}}"#;
        let e = decode("cloudbuild.projects.locations.builds.create", 403, body);
        let c: CloudError = e.into();
        assert_eq!(c.code, Code::PermissionDenied);
        assert_eq!(c.http_status, Some(403));
        assert_eq!(c.reason.as_deref(), Some("SERVICE_DISABLED"));
        assert_eq!(c.metadata["service"], "cloudbuild.googleapis.com");
    }

    #[test]
    fn decodes_rate_limit_with_retry_info() {
        let body = br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED",
          "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","metadata":{"quota_limit_value":"300"}},
                     {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"21s"}]}}"#;
        let c: CloudError = decode("run.projects.locations.services.get", 429, body).into();
        assert_eq!(c.code, Code::ResourceExhausted);
        assert_eq!(c.retry_delay, Some(Duration::from_secs(21)));
        assert_eq!(c.reason.as_deref(), Some("RATE_LIMIT_EXCEEDED"));
    }

    #[test]
    fn decodes_storage_legacy_errors_and_garbage() {
        let body = br#"{"error":{"code":409,"message":"conflict","errors":[{"domain":"global","reason":"conflict","message":"conflict"}]}}"#;
        let c: CloudError = decode("storage.buckets.insert", 409, body).into();
        assert_eq!(c.code, Code::Aborted);
        assert_eq!(c.reason.as_deref(), Some("conflict"));
        let c: CloudError = decode(
            "storage.objects.get",
            503,
            b"<html>Service Unavailable</html>",
        )
        .into();
        assert_eq!(c.code, Code::Unavailable);
    }
}
