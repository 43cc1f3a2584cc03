//! Single Google API calls of the deploy stages, each retried through the
//! one [`retry`] helper with [`classify_cloud`], five attempts on the build
//! backoff schedule. (Preflight has its own wrapper with a per-call deadline;
//! builds retry whole attempts.) Calls that change something are safe to
//! repeat: the client turns a create that already happened into a patch,
//! uploads are content-addressed, traffic and IAM changes are idempotent.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use super::error::{CloudError, StageError};
use super::event::{EventKind, Reporter, Stage};
use super::retry::{classify_cloud, retry, GaveUp, RetryPolicy};
use super::Pipeline;
use crate::telemetry::metrics;

impl Pipeline {
    /// Runs `op` until it succeeds, fails permanently or runs out of
    /// attempts; each retry is reported as an event, counted in `retries`
    /// and in `deployd_api_retries_total`. `what` names the step for the
    /// failure ("reading Cloud Run service api").
    pub(crate) async fn cloud_call<T, F, Fut>(
        &self,
        stage: Stage,
        what: impl FnOnce() -> String,
        retries: &mut u32,
        events: &Reporter,
        cancel: &CancellationToken,
        op: F,
    ) -> Result<T, StageError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let policy = RetryPolicy::api(self.config.retry_base_delay);
        let result = retry(&policy, cancel, op, classify_cloud, |attempt, delay, e| {
            *retries += 1;
            metrics::api_retry(e.call, e.code.name());
            events.emit(
                Some(stage),
                EventKind::Retry {
                    operation: e.call.to_string(),
                    attempt,
                    delay,
                    reason: format!("{} {}", e.code.name(), e.message),
                },
            )
        })
        .await;
        match result {
            Ok((v, _)) => Ok(v),
            Err(GaveUp::Cancelled { .. }) => Err(StageError::Cancelled {
                stage: stage.as_str(),
            }),
            Err(GaveUp::Failed { error, attempts }) => Err(StageError::Cloud {
                what: what(),
                attempts,
                source: error,
            }),
        }
    }
}
