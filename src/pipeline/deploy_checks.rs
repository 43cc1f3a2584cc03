//! Preflight checks only a deploy has, because only a deploy says what it
//! will ask of Cloud Run and how it will be verified: the revision spec
//! (Cloud Run's own `validateOnly`), an identity to probe a private
//! service with, and access to the signals its canary analysis reads. Each
//! would otherwise be found only after the build.

use std::collections::BTreeMap;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::cloud::ServiceSpec;
use super::error::{Code, StageError};
use super::event::{CheckResult, Reporter};
use super::preflight::CallError;
use super::{naming, shell, Deployment, Pipeline};

pub const REVISION_SPEC: &str = "revision_spec";
pub const PROBE_IDENTITY: &str = "probe_identity";
pub const MONITORING_ACCESS: &str = "monitoring_access";
pub const PROMETHEUS: &str = "prometheus";

type Check<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = CheckResult> + Send + 'a>>;

impl Pipeline {
    /// The checks of what verification needs, each reported as it
    /// completes; they need nothing the project checks find.
    pub(crate) async fn verification_checks(
        &self,
        d: &Deployment,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Vec<CheckResult> {
        let mut checks: Vec<Check<'_>> = vec![];
        if !d.request.runtime.allow_unauthenticated {
            checks.push(Box::pin(self.check_probe_identity(d, cancel)));
        }
        if let Some(a) = &d.request.analysis {
            if a.monitoring.is_some() {
                checks.push(Box::pin(self.check_monitoring_access(d, cancel)));
            }
            if let Some(p) = &a.prometheus {
                checks.push(Box::pin(self.check_prometheus(&p.url)));
            }
        }
        let mut pending: FuturesUnordered<Check<'_>> = checks.into_iter().collect();
        let mut results = vec![];
        while let Some(r) = pending.next().await {
            self.report_check(&r, events).await;
            results.push(r);
        }
        results
    }

    /// Cloud Run's verdict on the revision's settings (`validateOnly`).
    /// Asked once the project checks passed: before that, a refusal would
    /// only repeat what they found (API disabled, a role missing).
    pub(crate) async fn revision_check(
        &self,
        d: &Deployment,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> CheckResult {
        let target = &d.request.target;
        let r = match self.call(cancel, || self.cloud.run_service(target)).await {
            Ok(existing) => {
                self.check_revision_spec(d, existing.is_some(), cancel)
                    .await
            }
            Err(e) => super::preflight::call_error_check(
                REVISION_SPEC,
                &format!("reading Cloud Run service {}", target.service),
                e,
                &target.project,
            ),
        };
        self.report_check(&r, events).await;
        r
    }

    async fn check_revision_spec(
        &self,
        d: &Deployment,
        exists: bool,
        cancel: &CancellationToken,
    ) -> CheckResult {
        let target = &d.request.target;
        // The image is not built yet: its future name stands in for it.
        let spec = ServiceSpec {
            target: target.clone(),
            image: d
                .request
                .source
                .image()
                .map(str::to_string)
                .unwrap_or_else(|| naming::image(target, &d.request.build.repository)),
            runtime: d.revision_runtime(),
            labels: BTreeMap::from([("managed-by".to_string(), "deployd".to_string())]),
            revision_name: None,
            traffic: vec![],
        };
        match self
            .call(cancel, || self.cloud.validate_service(&spec, exists))
            .await
        {
            Ok(()) => CheckResult::pass(
                REVISION_SPEC,
                format!(
                    "Cloud Run accepts the revision's settings (validateOnly {} of {} in {})",
                    if exists { "update" } else { "create" },
                    target.service,
                    target.region
                ),
            ),
            Err(CallError::Failed(e)) if e.is(Code::InvalidArgument) => CheckResult::fail(
                REVISION_SPEC,
                format!("Cloud Run would refuse this revision: {}", e.message),
                vec!["Change the setting the message names (runtime.cpu and runtime.memory must be a pairing Cloud Run allows; target.region a Cloud Run region), then deploy again.".into()],
            ),
            Err(e) => super::preflight::call_error_check(
                REVISION_SPEC,
                "validating the revision with Cloud Run",
                e,
                &target.project,
            ),
        }
    }

    async fn check_probe_identity(
        &self,
        d: &Deployment,
        cancel: &CancellationToken,
    ) -> CheckResult {
        let target = &d.request.target;
        // Any audience shows the daemon can mint; the service's own URL is
        // not known before its first revision.
        let audience = format!(
            "https://{}-{}.{}.run.app",
            target.service, target.project, target.region
        );
        match self.call(cancel, || self.cloud.id_token(&audience)).await {
            Ok(_) => CheckResult::pass(
                PROBE_IDENTITY,
                format!(
                    "the daemon can mint identity tokens to probe the private service {}",
                    target.service
                ),
            ),
            Err(CallError::Failed(e))
                if e.reason.as_deref() == Some(super::cloud::NO_PROBE_IDENTITY) =>
            {
                let why = StageError::NoProbeIdentity {
                    service: target.service.clone(),
                    reason: e.message.clone(),
                };
                CheckResult::fail(
                    PROBE_IDENTITY,
                    why.to_string(),
                    why.to_failure(&target.project).remediation,
                )
            }
            Err(e) => super::preflight::call_error_check(
                PROBE_IDENTITY,
                &format!(
                    "minting an identity token to probe the private service {}",
                    target.service
                ),
                e,
                &target.project,
            ),
        }
    }

    async fn check_monitoring_access(
        &self,
        d: &Deployment,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const API: &str = "monitoring.googleapis.com";
        const PERMISSION: &str = "monitoring.timeSeries.list";
        let p = &d.request.target.project;
        let q_p = shell::quote(p);
        let enabled = self
            .call(cancel, || self.cloud.services_enabled(p, &[API]))
            .await;
        match enabled {
            Ok(states) if states.iter().any(|(name, on)| name == API && !on) => {
                return CheckResult::fail(
                    MONITORING_ACCESS,
                    format!("the Cloud Monitoring API is disabled in project {p}; the canary's monitoring analysis reads it"),
                    vec![format!("gcloud services enable {API} --project={q_p}")],
                )
            }
            Ok(_) => {}
            Err(e) => {
                return super::preflight::call_error_check(
                    MONITORING_ACCESS,
                    "checking the Cloud Monitoring API",
                    e,
                    p,
                )
            }
        }
        match self
            .call(cancel, || self.cloud.test_project_permissions(p, &[PERMISSION]))
            .await
        {
            Ok(granted) if granted.iter().any(|g| g == PERMISSION) => CheckResult::pass(
                MONITORING_ACCESS,
                format!("the daemon may read Cloud Monitoring in {p} ({PERMISSION})"),
            ),
            Ok(_) => CheckResult::fail(
                MONITORING_ACCESS,
                format!("the daemon lacks {PERMISSION} in project {p}, which the canary's monitoring analysis needs"),
                vec![format!(
                    "gcloud projects add-iam-policy-binding {q_p} --member={} --role=roles/monitoring.viewer",
                    shell::quote(&self.config.caller_member)
                )],
            ),
            Err(e) => super::preflight::call_error_check(
                MONITORING_ACCESS,
                "testing the Cloud Monitoring permission",
                e,
                p,
            ),
        }
    }

    async fn check_prometheus(&self, url: &str) -> CheckResult {
        let answer = tokio::time::timeout(
            self.config.check_timeout,
            self.promql.instant(url, "vector(1)"),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.config.check_timeout)));
        let remedy = vec![format!(
            "Check that {url} is a Prometheus HTTP API (it answers GET /api/v1/query) that the daemon can reach."
        )];
        match answer {
            Ok(Some(1.0)) => CheckResult::pass(
                PROMETHEUS,
                format!("Prometheus at {url} answers queries"),
            ),
            Ok(other) => CheckResult::fail(
                PROMETHEUS,
                format!("{url} evaluated vector(1) to {other:?}, not 1: it does not behave as Prometheus"),
                remedy,
            ),
            Err(e) => CheckResult::fail(
                PROMETHEUS,
                format!("Prometheus at {url} did not answer a test query: {e}"),
                remedy,
            ),
        }
    }
}
