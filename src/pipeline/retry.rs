//! When to try again, and how long to wait. "Is this retriable?" lives in the
//! `classify_*` functions, one per source of errors; "how do we back off?" in
//! [`RetryPolicy`] and the one [`retry`] helper every stage uses; "when do
//! we look again?" in [`poll_ticks`], the schedule of the pipeline's poll loops.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::error::{CloudError, Code};

/// Exponential backoff: `base`, `2*base`, `4*base`... capped at `max_delay`,
/// plus up to `jitter` (a fraction) of each delay at random.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub jitter: f64,
}

impl RetryPolicy {
    /// The build schedule: 3 attempts, 2 s then 4 s (8 s for a fourth).
    pub fn builds(base_delay: Duration) -> Self {
        Self {
            max_attempts: 3,
            base_delay,
            max_delay: base_delay * 32,
            jitter: 0.1,
        }
    }

    /// Single API calls: 5 attempts on the same schedule (2, 4, 8, 16 s),
    /// as Google's guidance allows for transient errors. A step such as
    /// "set the invoker policy" is two calls (read, write), and each
    /// attempt needs both to get through.
    pub fn api(base_delay: Duration) -> Self {
        Self {
            max_attempts: 5,
            ..Self::builds(base_delay)
        }
    }

    /// The delay before attempt `next` (2-based: the first retry waits `base`).
    pub fn delay_before(&self, next: u32) -> Duration {
        let exp = next.saturating_sub(2).min(20);
        let d = self.base_delay.saturating_mul(1u32 << exp);
        d.min(self.max_delay)
    }

    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter <= 0.0 || d.is_zero() {
            return d;
        }
        let extra = rand::rng().random_range(0.0..=self.jitter);
        d.mul_f64(1.0 + extra)
    }
}

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retriability {
    /// Try again; `after` overrides the policy's delay (RetryInfo).
    Retriable {
        after: Option<Duration>,
    },
    Permanent,
}

impl Retriability {
    pub fn is_retriable(self) -> bool {
        matches!(self, Retriability::Retriable { .. })
    }
}

/// API errors: decided by the canonical code and ErrorInfo reason, never by
/// the message text.
pub fn classify_cloud(e: &CloudError) -> Retriability {
    if e.transport {
        return Retriability::Retriable { after: None };
    }
    // A quota with no allocation at all will not refill by waiting.
    if e.metadata.get("quota_limit_value").map(String::as_str) == Some("0") {
        return Retriability::Permanent;
    }
    match e.code {
        Code::ResourceExhausted
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal => Retriability::Retriable {
            after: e.retry_delay,
        },
        _ => Retriability::Permanent,
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// The error was permanent, or the attempts ran out.
    Failed {
        error: E,
        attempts: u32,
    },
    Cancelled {
        attempts: u32,
    },
}

/// Runs `op` until it succeeds, fails permanently, runs out of attempts or is
/// cancelled. `on_retry(attempt_that_failed, delay, &error)` is called before
/// each wait, so callers can report and count retries. Cancellation cuts the
/// waits short; a running `op` is not dropped mid-way, so ops that own remote
/// work (a build) watch the token themselves and clean up.
pub async fn retry<T, E, F, Fut, C, R, RFut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    mut op: F,
    classify: C,
    mut on_retry: R,
) -> Result<(T, u32), GaveUp<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(&E) -> Retriability,
    R: FnMut(u32, Duration, &E) -> RFut,
    RFut: Future<Output = ()>,
{
    let mut attempt = 1;
    loop {
        if cancel.is_cancelled() {
            return Err(GaveUp::Cancelled {
                attempts: attempt - 1,
            });
        }
        let error = match op(attempt).await {
            Ok(v) => return Ok((v, attempt)),
            // An attempt that failed because it was cancelled (it cancelled
            // its remote work) is a cancellation, not a failure.
            Err(_) if cancel.is_cancelled() => return Err(GaveUp::Cancelled { attempts: attempt }),
            Err(e) => e,
        };
        let after = match classify(&error) {
            Retriability::Retriable { after } if attempt < policy.max_attempts => after,
            _ => {
                return Err(GaveUp::Failed {
                    error,
                    attempts: attempt,
                })
            }
        };
        let delay = match after {
            // Honour the server's hint, but never wait less than our schedule.
            Some(hint) => hint.max(policy.delay_before(attempt + 1)),
            None => policy.jittered(policy.delay_before(attempt + 1)),
        };
        on_retry(attempt, delay, &error).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(GaveUp::Cancelled { attempts: attempt }),
        }
        attempt += 1;
    }
}

/// Ticks every `period` from now on (the first after one period), on a
/// fixed schedule; a late tick delays the next rather than bunching up.
pub fn poll_ticks(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The early poll after a sign that something is about to finish: a
/// tenth of the interval, at least 50 ms (at most a few extra calls).
pub fn soon(period: Duration) -> Duration {
    (period / 10).max(Duration::from_millis(50)).min(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls that take 300 ms each still come every second, not every
    /// 1.3 s; a poll slower than the period delays the next, never bunches.
    #[tokio::test(start_paused = true)]
    async fn polls_keep_their_schedule_whatever_each_poll_takes() {
        let start = tokio::time::Instant::now();
        let mut ticks = poll_ticks(Duration::from_secs(1));
        let mut at = vec![];
        for work_ms in [300, 300, 300, 1500, 300] {
            ticks.tick().await;
            at.push(start.elapsed().as_millis());
            tokio::time::sleep(Duration::from_millis(work_ms)).await;
        }
        assert_eq!(at, vec![1000, 2000, 3000, 4000, 5500]);
        assert_eq!(soon(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(soon(Duration::from_millis(100)), Duration::from_millis(50));
        assert_eq!(soon(Duration::from_millis(10)), Duration::from_millis(10));
    }
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    fn err(code: Code) -> CloudError {
        CloudError::new("test.call", code, "boom")
    }

    #[test]
    fn classification_table() {
        use Retriability::*;
        let mut transport = err(Code::Unknown);
        transport.transport = true;
        let mut no_quota = err(Code::ResourceExhausted);
        no_quota
            .metadata
            .insert("quota_limit_value".into(), "0".into());
        let mut hinted = err(Code::ResourceExhausted);
        hinted.retry_delay = Some(Duration::from_secs(21));
        let cases = [
            (err(Code::ResourceExhausted), Retriable { after: None }),
            (err(Code::Unavailable), Retriable { after: None }),
            (err(Code::DeadlineExceeded), Retriable { after: None }),
            (err(Code::Aborted), Retriable { after: None }),
            (err(Code::Internal), Retriable { after: None }),
            (transport, Retriable { after: None }),
            (
                hinted,
                Retriable {
                    after: Some(Duration::from_secs(21)),
                },
            ),
            (err(Code::InvalidArgument), Permanent),
            (err(Code::PermissionDenied), Permanent),
            (err(Code::NotFound), Permanent),
            (err(Code::FailedPrecondition), Permanent),
            (err(Code::AlreadyExists), Permanent),
            (err(Code::Unauthenticated), Permanent),
            (no_quota, Permanent),
        ];
        for (e, want) in cases {
            assert_eq!(classify_cloud(&e), want, "{e:?}");
        }
    }

    #[test]
    fn schedule_doubles_from_base() {
        let p = RetryPolicy::builds(Duration::from_secs(2));
        let got: Vec<u64> = (2..=5).map(|n| p.delay_before(n).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_on_schedule_then_succeeds() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::builds(Duration::from_secs(2))
        };
        let calls = AtomicU32::new(0);
        let waits = Mutex::new(vec![]);
        let start = tokio::time::Instant::now();
        let (v, attempts) = retry(
            &policy,
            &CancellationToken::new(),
            |_| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(err(Code::ResourceExhausted))
                } else {
                    Ok("done")
                }
            },
            classify_cloud,
            |_, d, _| {
                waits.lock().unwrap().push(d);
                async {}
            },
        )
        .await
        .expect("succeeds on the third attempt");
        assert_eq!((v, attempts), ("done", 3));
        assert_eq!(
            *waits.lock().unwrap(),
            vec![Duration::from_secs(2), Duration::from_secs(4)]
        );
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_stops_after_one_attempt() {
        let policy = RetryPolicy::builds(Duration::from_secs(2));
        let calls = AtomicU32::new(0);
        let r: Result<((), u32), _> = retry(
            &policy,
            &CancellationToken::new(),
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(Code::PermissionDenied))
            },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        assert!(matches!(r, Err(GaveUp::Failed { attempts: 1, .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let policy = RetryPolicy::builds(Duration::from_millis(10));
        let r: Result<((), u32), _> = retry(
            &policy,
            &CancellationToken::new(),
            |_| async { Err(err(Code::Unavailable)) },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        assert!(matches!(r, Err(GaveUp::Failed { attempts: 3, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_info_hint_is_honoured() {
        let policy = RetryPolicy::builds(Duration::from_secs(2));
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let _ = retry(
            &policy,
            &CancellationToken::new(),
            |_| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mut e = err(Code::ResourceExhausted);
                    e.retry_delay = Some(Duration::from_secs(21));
                    Err(e)
                } else {
                    Ok(())
                }
            },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(21));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_failing_because_of_cancellation_is_a_cancellation() {
        let policy = RetryPolicy::builds(Duration::from_secs(2));
        let cancel = CancellationToken::new();
        let r: Result<((), u32), _> = retry(
            &policy,
            &cancel,
            |_| {
                // The op notices the cancel, cleans up, and fails.
                cancel.cancel();
                async { Err(err(Code::Unavailable)) }
            },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        assert!(matches!(r, Err(GaveUp::Cancelled { attempts: 1 })));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_interrupts_the_wait() {
        let policy = RetryPolicy::builds(Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c2.cancel();
        });
        let r: Result<((), u32), _> = retry(
            &policy,
            &cancel,
            |_| async { Err(err(Code::Unavailable)) },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        assert!(matches!(r, Err(GaveUp::Cancelled { attempts: 1 })));
    }
}
