//! What tests can make the emulator do wrong.

use std::time::Duration;

/// An error answer, as google.rpc.Status.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectedError {
    pub http: u16,
    pub status: String,
    pub message: String,
    pub reason: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub retry_delay: Option<Duration>,
}

impl InjectedError {
    pub fn new(http: u16, status: &str, message: &str) -> Self {
        Self {
            http,
            status: status.into(),
            message: message.into(),
            reason: None,
            metadata: vec![],
            retry_delay: None,
        }
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = Some(d);
        self
    }

    /// 429 RATE_LIMIT_EXCEEDED, as Google sends it.
    pub fn rate_limited(service: &str) -> Self {
        Self::new(429, "RESOURCE_EXHAUSTED", &format!(
            "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of service '{service}' for consumer 'project_number:0'."
        ))
        .reason("RATE_LIMIT_EXCEEDED")
    }

    pub fn unavailable() -> Self {
        Self::new(503, "UNAVAILABLE", "The service is currently unavailable.")
    }
}

/// How the next matching calls misbehave.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    Error(InjectedError),
    /// Never answer (the client's timeout fires).
    Hang,
    /// Close the connection without an answer.
    Reset,
    /// Answer normally, but only after this long (shorter than the
    /// client's timeout: a slow call, not a failed one).
    Slow(Duration),
    /// Carry the call out, then close the connection without an answer:
    /// the client cannot know whether it took effect.
    ResetAfterApply,
    /// Carry the call out at once, answer only after this long: the
    /// window in which a client has made a change but not yet heard of it
    /// (where a crash must not lose track of it).
    SlowAfterApply(Duration),
}

/// Transient faults at random, for soak runs: each call (method and path)
/// fails with probability `rate`, at most `max_consecutive` times in a row,
/// so a client that retries within that budget always gets through.
#[derive(Debug, Clone, PartialEq)]
pub struct Chaos {
    pub rate: f64,
    pub max_consecutive: u32,
    /// How long a slow answer takes.
    pub slow: Duration,
    pub seed: u64,
}

impl Chaos {
    /// One transient fault, chosen by `pick` (0..5): 429, 500, 503, a
    /// connection reset, or a slow answer.
    pub fn action(&self, pick: u32) -> FaultAction {
        match pick % 5 {
            0 => FaultAction::Error(InjectedError::rate_limited("sandbox.googleapis.com")),
            1 => FaultAction::Error(InjectedError::new(
                500,
                "INTERNAL",
                "Internal error encountered.",
            )),
            2 => FaultAction::Error(InjectedError::unavailable()),
            3 => FaultAction::Reset,
            _ => FaultAction::Slow(self.slow),
        }
    }
}

/// The next `remaining` calls of `method` (discovery id) get `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub method: String,
    pub remaining: u32,
    pub action: FaultAction,
}

/// How the next build created ends.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildFault {
    /// A step exits non-zero after printing `lines` (USER_BUILD_STEP).
    StepFails { step: String, lines: Vec<String> },
    /// The build ends with this status (e.g. INTERNAL_ERROR) and optional
    /// failureInfo.type.
    Status {
        status: String,
        failure_type: Option<String>,
    },
    /// The build stays WORKING until cancelled.
    NeverFinishes,
}

/// One scripted answer of a deployed service.
#[derive(Debug, Clone, PartialEq)]
pub struct AppResponse {
    pub status: u16,
    pub delay: Duration,
    pub body: String,
}
