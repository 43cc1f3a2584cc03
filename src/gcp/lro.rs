//! google.longrunning.Operation, shared by every API that returns one.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::error::GcpError;
use super::http::Transport;
use crate::pipeline::error::Code;

#[derive(Debug, Clone, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub error: Option<OpStatus>,
    #[serde(default)]
    pub response: Option<Value>,
}

/// `Operation.error`: `code` is the gRPC code number, not HTTP.
#[derive(Debug, Clone, Deserialize)]
pub struct OpStatus {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// How operations are polled.
#[derive(Debug, Clone)]
pub struct PollPolicy {
    pub first: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub give_up_after: Duration,
}

impl Default for PollPolicy {
    /// gcloud's: 2 s, x1.1, capped at 10 s, for 30 min. Starts at 1 s here
    /// since deploys are latency-sensitive.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            multiplier: 1.1,
            max: Duration::from_secs(10),
            give_up_after: Duration::from_secs(30 * 60),
        }
    }
}

/// The methods that poll an operation of an API, so a poll is named (in
/// spans and metrics) as the call it is, not as the call that started it.
struct Polls {
    get: &'static str,
    wait: &'static str,
}

fn polls_of(method: &'static str) -> Polls {
    match method.split('.').next() {
        Some("run") => Polls {
            get: "run.projects.locations.operations.get",
            wait: "run.projects.locations.operations.wait",
        },
        Some("artifactregistry") => Polls {
            get: "artifactregistry.projects.locations.operations.get",
            wait: "artifactregistry.projects.locations.operations.wait",
        },
        Some("cloudbuild") => Polls {
            get: "cloudbuild.projects.locations.operations.get",
            wait: "cloudbuild.projects.locations.operations.wait",
        },
        _ => Polls {
            get: "operations.get",
            wait: "operations.wait",
        },
    }
}

/// Consecutive transient poll failures tolerated.
const MAX_POLL_FAILURES: u32 = 10;

/// Polls `GET {base}/{version}/{name}` until done; returns the response.
pub async fn wait(
    t: &Transport,
    method: &'static str,
    base: &str,
    version: &str,
    mut op: Operation,
    policy: &PollPolicy,
) -> Result<Value, GcpError> {
    let started = Instant::now();
    let mut delay = policy.first;
    let mut failures = 0;
    // Each poll is due `delay` after the previous one was sent, not after
    // its answer: the round trip does not stretch the schedule.
    let mut due = tokio::time::Instant::now() + delay;
    while !op.done {
        if started.elapsed() > policy.give_up_after {
            return Err(GcpError::OperationTimeout {
                method,
                name: op.name,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep_until(due).await;
        delay = delay.mul_f64(policy.multiplier).min(policy.max);
        due = tokio::time::Instant::now() + delay;
        let url = format!("{base}/{version}/{}", op.name);
        match t
            .json::<Operation>(polls_of(method).get, t.request(Method::GET, url))
            .await
        {
            Ok(next) => {
                failures = 0;
                op = next;
            }
            Err(e) if e.is_transient() && failures < MAX_POLL_FAILURES => {
                failures += 1;
                tracing::debug!(operation = %op.name, error = %e, "operation poll failed; polling again");
            }
            Err(e) => return Err(e),
        }
    }
    finished(method, op)
}

/// How long one `:wait` call may hold: well under the client's 60 s
/// request timeout, and what gcloud asks for.
const LONG_POLL: Duration = Duration::from_secs(30);

/// Waits for `op` with the API's long poll, `POST {base}/{version}/{name}:wait`
/// (Cloud Run v2 has it): the server answers as soon as the operation is
/// done, so nothing waits for a poll tick and one call replaces many.
/// `:wait` is best effort and may answer early; then the next call is
/// sent no sooner than `policy.first` after the previous one, so it never
/// calls more often than polling would. A server without the method
/// (UNIMPLEMENTED, or 404 from an emulator) is polled instead.
pub async fn wait_long(
    t: &Transport,
    method: &'static str,
    base: &str,
    version: &str,
    mut op: Operation,
    policy: &PollPolicy,
) -> Result<Value, GcpError> {
    let started = Instant::now();
    let mut failures = 0;
    while !op.done {
        let waited = started.elapsed();
        if waited > policy.give_up_after {
            return Err(GcpError::OperationTimeout {
                method,
                name: op.name,
                waited,
            });
        }
        let hold = LONG_POLL
            .min(policy.give_up_after - waited)
            .max(Duration::from_secs(1));
        let sent = tokio::time::Instant::now();
        // Every long-poll slot taken (a burst of rollouts): poll this time.
        let slot = t.try_long_poll();
        let (call, rb) = match &slot {
            Some(_) => {
                let url = format!("{base}/{version}/{}:wait", op.name);
                let body = serde_json::json!({"timeout": format!("{}s", hold.as_secs())});
                (
                    polls_of(method).wait,
                    t.request(Method::POST, url).json(&body),
                )
            }
            None => (
                polls_of(method).get,
                t.request(Method::GET, format!("{base}/{version}/{}", op.name)),
            ),
        };
        let answer = t.json::<Operation>(call, rb).await;
        drop(slot);
        match answer {
            Ok(next) => {
                failures = 0;
                op = next;
            }
            Err(e) if e.is(Code::Unimplemented) || e.is(Code::NotFound) => {
                tracing::debug!(operation = %op.name, error = %e, "no long poll here; polling");
                return wait(t, method, base, version, op, policy).await;
            }
            Err(e) if e.is_transient() && failures < MAX_POLL_FAILURES => {
                failures += 1;
                tracing::debug!(operation = %op.name, error = %e, "operation wait failed; waiting again");
            }
            Err(e) => return Err(e),
        }
        if !op.done {
            tokio::time::sleep_until(sent + policy.first).await;
        }
    }
    finished(method, op)
}

fn finished(method: &'static str, op: Operation) -> Result<Value, GcpError> {
    if let Some(err) = op.error {
        return Err(GcpError::Operation {
            method,
            name: op.name,
            code: Code::from_number(err.code),
            message: err.message,
        });
    }
    Ok(op.response.unwrap_or(Value::Null))
}
