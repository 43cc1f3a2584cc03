//! How the API says no: every refusal is a gRPC status carrying a
//! `google.rpc.ErrorInfo` whose reason (below, documented in the proto) a
//! caller can branch on; INVALID_ARGUMENT also carries a
//! `google.rpc.BadRequest` with every field the request got wrong.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pipeline::model::InvalidRequest;
use crate::pipeline::rules::truncate;

/// `ErrorInfo.domain` of every refusal.
pub const DOMAIN: &str = "deployd.v1";

/// A status message longer than this is cut: it travels in a header.
const MAX_MESSAGE: usize = 1024;

/// Field violations kept in one refusal; a request breaking more rules
/// than this is told about the first ones. The details travel base64'd in
/// the `grpc-status-details-bin` header, so they are bounded well inside
/// the 16 KiB header lists HTTP/2 peers commonly accept: at most
/// MAX_VIOLATIONS x MAX_DESCRIPTION bytes of descriptions.
const MAX_VIOLATIONS: usize = 20;
const MAX_DESCRIPTION: usize = 200;

/// `ErrorInfo.reason` of each kind of refusal: a stable contract, listed
/// with its status code in the proto's service comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// INVALID_ARGUMENT: the request breaks a rule of its own.
    InvalidRequest,
    /// ABORTED: another deployment of the service is running.
    ServiceBusy,
    /// ALREADY_EXISTS: request_id named a different request before.
    RequestIdReused,
    /// UNAVAILABLE: the daemon is shutting down.
    Draining,
    /// UNAVAILABLE: the deployment store failed.
    StoreUnavailable,
    /// NOT_FOUND: no such deployment.
    DeploymentNotFound,
    /// FAILED_PRECONDITION: the deployment has already ended.
    DeploymentEnded,
    /// PERMISSION_DENIED: the Verify URL is outside the daemon's policy.
    UrlRefused,
    /// PERMISSION_DENIED: no policy rule grants the call.
    NotPermitted,
    /// UNAUTHENTICATED: no valid credential.
    Unauthenticated,
    /// UNAVAILABLE: the identity provider's keys cannot be had now.
    IssuerUnavailable,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::InvalidRequest,
        Reason::ServiceBusy,
        Reason::RequestIdReused,
        Reason::Draining,
        Reason::StoreUnavailable,
        Reason::DeploymentNotFound,
        Reason::DeploymentEnded,
        Reason::UrlRefused,
        Reason::NotPermitted,
        Reason::Unauthenticated,
        Reason::IssuerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::ServiceBusy => "SERVICE_BUSY",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::Draining => "DRAINING",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::DeploymentNotFound => "DEPLOYMENT_NOT_FOUND",
            Reason::DeploymentEnded => "DEPLOYMENT_ENDED",
            Reason::UrlRefused => "URL_REFUSED",
            Reason::NotPermitted => "NOT_PERMITTED",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::IssuerUnavailable => "ISSUER_UNAVAILABLE",
        }
    }

    /// The gRPC code a refusal for this reason has.
    pub fn code(self) -> Code {
        match self {
            Reason::InvalidRequest => Code::InvalidArgument,
            Reason::ServiceBusy => Code::Aborted,
            Reason::RequestIdReused => Code::AlreadyExists,
            Reason::Draining | Reason::StoreUnavailable | Reason::IssuerUnavailable => {
                Code::Unavailable
            }
            Reason::DeploymentNotFound => Code::NotFound,
            Reason::DeploymentEnded => Code::FailedPrecondition,
            Reason::UrlRefused | Reason::NotPermitted => Code::PermissionDenied,
            Reason::Unauthenticated => Code::Unauthenticated,
        }
    }
}

/// A refusal: the reason's code, a bounded message, and its ErrorInfo.
pub fn refuse(reason: Reason, message: impl AsRef<str>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(
        reason.code(),
        truncate(message.as_ref(), MAX_MESSAGE),
        details,
    )
}

/// INVALID_ARGUMENT for every rule a request breaks: each field in the
/// BadRequest details, and all of them in the message, so a client that
/// reads only the message still learns every one.
pub fn invalid(violations: Vec<InvalidRequest>) -> Status {
    let kept = &violations[..violations.len().min(MAX_VIOLATIONS)];
    let message = kept
        .iter()
        .map(|v| format!("{}: {}", v.field, v.reason))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    details.set_error_info(
        Reason::InvalidRequest.as_str(),
        DOMAIN,
        std::collections::HashMap::new(),
    );
    for v in kept {
        details.add_bad_request_violation(
            truncate(&v.field, MAX_DESCRIPTION),
            truncate(&v.reason, MAX_DESCRIPTION),
        );
    }
    Status::with_error_details(
        Code::InvalidArgument,
        truncate(&message, MAX_MESSAGE),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason is in the proto's list with its code, and the list
    /// names no reason deployd does not give.
    #[test]
    fn the_proto_documents_every_reason() {
        let proto = include_str!("../../proto/deployd/v1/deployd.proto");
        let listed: Vec<(String, String)> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// - reason "))
            .filter_map(|l| {
                let (reason, rest) = l.split_once(' ')?;
                let code = rest.trim_start_matches('(').split(')').next()?;
                Some((reason.to_string(), code.to_string()))
            })
            .collect();
        let ours: Vec<(String, String)> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), format!("{:?}", r.code())))
            .map(|(r, c)| (r, screaming(&c)))
            .collect();
        assert_eq!(listed, ours);
    }

    fn screaming(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn every_violation_is_in_the_details_and_the_message() {
        let s = invalid(vec![
            InvalidRequest::new("target.project", "bad"),
            InvalidRequest::new("runtime.memory", "worse"),
        ]);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "target.project: bad; runtime.memory: worse");
        let d = s.get_error_details();
        let fields: Vec<&str> = d
            .bad_request()
            .expect("BadRequest")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["target.project", "runtime.memory"]);
        assert_eq!(d.error_info().expect("ErrorInfo").reason, "INVALID_REQUEST");
    }

    /// However many rules a request breaks, the details stay small enough
    /// for a header.
    #[test]
    fn the_details_are_bounded() {
        let many = (0..500)
            .map(|i| InvalidRequest::new(format!("runtime.env.{i}"), "x".repeat(5000)))
            .collect();
        let s = invalid(many);
        assert!(s.details().len() < 8 * 1024, "{} bytes", s.details().len());
        assert_eq!(
            s.get_error_details()
                .bad_request()
                .map(|b| b.field_violations.len()),
            Some(MAX_VIOLATIONS)
        );
        assert!(s.message().len() <= MAX_MESSAGE);
    }
}
