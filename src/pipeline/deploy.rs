//! The deploy stage: a new Cloud Run revision of the built image, with the
//! request's runtime settings and invoker binding, routed per the rollout
//! mode; promotion once verified; and rollback to the revision that served
//! before when the new one is not healthy.

use std::collections::BTreeMap;

use super::cloud::{Rollout, RunService, ServiceSpec, TrafficTarget};
use super::error::StageError;
use super::event::{Reporter, Stage};
use super::model::{HealthCheckSpec, RolloutMode, Target};
use super::verify::{self, ProbeContext};
use super::{Deployment, Pipeline};
use crate::telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// The tag a candidate revision is verified through.
pub const CANDIDATE_TAG: &str = "candidate";

fn pinned(revision: &str, percent: u32) -> TrafficTarget {
    TrafficTarget {
        revision: Some(revision.to_string()),
        percent,
        tag: None,
    }
}

impl Pipeline {
    pub(crate) async fn stage_deploy(
        &self,
        d: &mut Deployment,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let target = d.request.target.clone();
        let image = d
            .build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default();
        let existing = self
            .cloud_call(
                Stage::Deploy,
                || format!("reading Cloud Run service {}", target.service),
                &mut d.retries,
                events,
                cancel,
                |_| self.cloud.run_service(&target),
            )
            .await?;
        if !d.rollout_sent {
            self.plan_rollout(d, existing.as_ref(), events).await;
            // Recorded before it is sent: a resumed run looks the revision
            // up by this name instead of sending the request again.
            d.rollout_sent = true;
            events.checkpoint(d).await.map_err(StageError::Journal)?;
        }
        let mode = d.effective_rollout;
        let name = d
            .planned_revision
            .clone()
            .unwrap_or_else(|| revision_name(&target.service, &d.id));
        let sent_before = existing
            .as_ref()
            .is_some_and(|s| s.latest_created_revision.as_deref() == Some(name.as_str()));
        let rollout = if sent_before {
            events
                .progress(
                    Stage::Deploy,
                    format!("revision {name} was created before the restart; waiting for it instead of sending the request again"),
                )
                .await;
            self.await_rollout(&target, &name, &mut d.retries, events, cancel)
                .await?
        } else {
            let traffic = match (&mode, &d.previous_revision) {
                (RolloutMode::VerifyBeforeTraffic, Some(prev)) => vec![
                    pinned(prev, 100),
                    TrafficTarget {
                        revision: Some(name.clone()),
                        percent: 0,
                        tag: Some(CANDIDATE_TAG.into()),
                    },
                ],
                (RolloutMode::Canary { .. }, Some(prev)) => {
                    let first = d.request.steps().first().map_or(10, |s| s.percent);
                    super::canary::run::canary_split(prev, &name, first)
                }
                _ => vec![],
            };
            if let Some(p) = &d.request.runtime.startup_probe {
                events
                    .progress(
                        Stage::Deploy,
                        format!(
                            "revision {name} has an HTTP startup probe: GET {} every {} s ({} s timeout), ready within {} s or not at all",
                            p.path,
                            p.period_seconds,
                            p.timeout_seconds,
                            p.initial_delay_seconds + p.period_seconds * p.failure_threshold
                        ),
                    )
                    .await;
            }
            let spec = ServiceSpec {
                target: target.clone(),
                image,
                runtime: d.revision_runtime(),
                labels: BTreeMap::from([("managed-by".to_string(), "deployd".to_string())]),
                revision_name: Some(name.clone()),
                traffic,
            };
            // A create whose answer was lost comes back ALREADY_EXISTS on the
            // next attempt, which the client turns into a patch.
            self.cloud_call(
                Stage::Deploy,
                || {
                    format!(
                        "deploying Cloud Run service {} in {}/{}",
                        target.service, target.project, target.region
                    )
                },
                &mut d.retries,
                events,
                cancel,
                |_| self.cloud.deploy_service(&spec, existing.is_some()),
            )
            .await?
        };
        let service = match rollout {
            Rollout::Ready(s) => s,
            Rollout::Failed { message, service } => {
                let revision = name.clone();
                d.revision = Some(revision.clone());
                return Err(StageError::RevisionNotReady {
                    service: target.service,
                    revision,
                    message,
                    reason: service.and_then(|s| s.ready_reason),
                });
            }
        };
        // The operation finishing is not enough: the service must say it is
        // Ready, and (routing to the latest) serve the revision just made.
        let fresh = service.latest_ready_revision.as_deref() == Some(name.as_str());
        if !service.ready || !fresh {
            let revision = name.clone();
            d.revision = Some(revision.clone());
            return Err(StageError::RevisionNotReady {
                service: target.service,
                revision,
                reason: service.ready_reason.clone(),
                message: service.ready_message.clone().unwrap_or_else(|| {
                    format!(
                        "the service is not Ready (latest ready revision {:?}, latest created {:?})",
                        service.latest_ready_revision, service.latest_created_revision
                    )
                }),
            });
        }
        d.revision = Some(name);
        d.url = Some(service.uri.clone());
        d.candidate_url = (mode != RolloutMode::Direct)
            .then(|| tag_url(&service))
            .flatten();
        d.stable_url = matches!(mode, RolloutMode::Canary { .. })
            .then(|| super::canary::run::tag_url(&service, super::canary::STABLE_TAG))
            .flatten();
        let public = d.request.runtime.allow_unauthenticated;
        self.cloud_call(
            Stage::Deploy,
            || format!("setting the invoker policy of {}", target.service),
            &mut d.retries,
            events,
            cancel,
            |_| self.cloud.set_public_invoker(&target, public),
        )
        .await?;
        let revision = d.revision.as_deref().unwrap_or("?");
        let msg = match (mode, &d.candidate_url) {
            (RolloutMode::VerifyBeforeTraffic, Some(u)) => {
                format!("revision {revision} is ready with no traffic, to be verified at {u}")
            }
            (RolloutMode::Canary { .. }, Some(u)) => format!(
                "revision {revision} is ready with {}% of traffic, to be verified at {u}",
                d.request.steps().first().map_or(10, |s| s.percent)
            ),
            _ => format!("revision {revision} is ready at {}", service.uri),
        };
        events.progress(Stage::Deploy, msg).await;
        for notice in &service.notices {
            events.progress(Stage::Deploy, notice.clone()).await;
        }
        Ok(())
    }

    /// Decides the rollout before anything is sent: the revision serving
    /// now (the rollback target), the mode (a first deploy is direct) and
    /// the new revision's name.
    async fn plan_rollout(
        &self,
        d: &mut Deployment,
        existing: Option<&RunService>,
        events: &Reporter,
    ) {
        let target = &d.request.target;
        d.previous_revision = existing.and_then(|s| s.serving_revision());
        if let Some(image) = d.request.source.image() {
            events
                .build_progress(
                    Stage::Deploy,
                    format!("deploying the prebuilt image {image} (no source, analysis or build)"),
                    super::event::BuildFacts {
                        image: Some(image.to_string()),
                        ..Default::default()
                    },
                )
                .await;
        }
        let mut mode = d.request.rollout;
        match (&d.previous_revision, mode) {
            (None, RolloutMode::Direct) => {
                events
                    .progress(Stage::Deploy, format!("creating {}", target.service))
                    .await
            }
            (None, _) => {
                // Nothing serves yet, so no user can be hurt; Cloud Run also
                // refuses a no-traffic first revision.
                events
                    .progress(
                        Stage::Deploy,
                        format!(
                            "creating {}: a first revision takes all traffic",
                            target.service
                        ),
                    )
                    .await;
                mode = RolloutMode::Direct;
            }
            (Some(prev), _) => {
                events
                    .progress(
                        Stage::Deploy,
                        format!("updating {} (serving {prev})", target.service),
                    )
                    .await
            }
        }
        d.effective_rollout = mode;
        // Named by deployd, so traffic can be routed to it before it exists
        // and a repeated step finds it.
        d.planned_revision = Some(revision_name(&target.service, &d.id));
    }

    /// A rollout sent before a restart: the service is read until it is no
    /// longer reconciling, and judged as the rollout's own answer would be.
    async fn await_rollout(
        &self,
        target: &Target,
        name: &str,
        retries: &mut u32,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<Rollout, StageError> {
        let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
        // A fixed schedule: the read's round trip does not stretch it.
        let mut ticks = super::retry::poll_ticks(self.config.poll_interval);
        loop {
            let service = self
                .cloud_call(
                    Stage::Deploy,
                    || format!("reading Cloud Run service {}", target.service),
                    retries,
                    events,
                    cancel,
                    |_| self.cloud.run_service(target),
                )
                .await?;
            let Some(service) = service else {
                return Ok(Rollout::Failed {
                    message: format!("the service {} no longer exists", target.service),
                    service: None,
                });
            };
            if !service.reconciling {
                return Ok(if service.latest_ready_revision.as_deref() == Some(name) {
                    Rollout::Ready(service)
                } else {
                    Rollout::Failed {
                        message: service
                            .ready_message
                            .clone()
                            .unwrap_or_else(|| format!("revision {name} did not become ready")),
                        service: Some(service),
                    }
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Rollout::Failed {
                    message: format!(
                        "the rollout of {name} was still in progress after {ROLLOUT_WAIT:?}"
                    ),
                    service: Some(service),
                });
            }
            tokio::select! {
                _ = ticks.tick() => {}
                _ = cancel.cancelled() => return Err(StageError::Cancelled { stage: "deploy" }),
            }
        }
    }

    /// After a candidate verified healthy: all traffic to it.
    pub(crate) async fn promote(
        &self,
        d: &mut Deployment,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let target = d.request.target.clone();
        let Some(revision) = d.revision.clone() else {
            return Ok(());
        };
        self.route_all_to(
            Stage::Verify,
            &target,
            &revision,
            "moving all traffic to",
            (&mut d.retries, events, cancel),
        )
        .await?;
        events
            .progress(
                Stage::Verify,
                format!("promoted {revision} to 100% of traffic"),
            )
            .await;
        Ok(())
    }

    /// 100% of traffic to `revision` (a traffic-only change), awaited.
    async fn route_all_to(
        &self,
        stage: Stage,
        target: &Target,
        revision: &str,
        doing: &str,
        (retries, events, cancel): (&mut u32, &Reporter, &CancellationToken),
    ) -> Result<RunService, StageError> {
        let traffic = [pinned(revision, 100)];
        let rollout = self
            .cloud_call(
                stage,
                || format!("{doing} {revision} on {}", target.service),
                retries,
                events,
                cancel,
                |_| self.cloud.set_traffic(target, &traffic),
            )
            .await?;
        match rollout {
            Rollout::Ready(s) => Ok(s),
            Rollout::Failed { message, service } => Err(StageError::RevisionNotReady {
                service: target.service.clone(),
                revision: revision.to_string(),
                message,
                reason: service.and_then(|s| s.ready_reason),
            }),
        }
    }

    /// Moves traffic back to the previous revision, waits, and verifies it.
    /// Returns whether users are back on a healthy revision.
    pub(crate) async fn stage_rollback(
        &self,
        d: &mut Deployment,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let target: Target = d.request.target.clone();
        let Some(prev) = d.previous_revision.clone() else {
            events
                .progress(
                    Stage::Rollback,
                    "first deploy: there is no previous revision to roll back to",
                )
                .await;
            return Ok(());
        };
        if d.effective_rollout == RolloutMode::VerifyBeforeTraffic {
            events
                .progress(
                    Stage::Rollback,
                    format!("traffic never left {prev}; nothing to roll back"),
                )
                .await;
            return Ok(());
        }
        events
            .progress(
                Stage::Rollback,
                format!("moving 100% of traffic back to {prev}"),
            )
            .await;
        let result = async {
            let service = self
                .route_all_to(
                    Stage::Rollback,
                    &target,
                    &prev,
                    "moving traffic back to",
                    (&mut d.retries, events, cancel),
                )
                .await?;
            d.rollback_traffic_moved = true;
            let token = if d.request.runtime.allow_unauthenticated {
                None
            } else {
                // Without a token the probe is refused and the rollback
                // reported unverified, which says what happened.
                self.cloud_call(
                    Stage::Rollback,
                    || format!("minting an identity token to probe {}", target.service),
                    &mut d.retries,
                    events,
                    cancel,
                    |_| self.cloud.id_token(&service.uri),
                )
                .await
                .ok()
            };
            // The stable revision serves again: one healthy answer, no gate.
            let spec = HealthCheckSpec {
                consecutive_successes: 1,
                ..d.request.health.clone()
            };
            let v = verify::verify(
                self.prober.as_ref(),
                &service.uri,
                &spec,
                ProbeContext {
                    id_token: token,
                    policy: None,
                    origin: metrics::ProbeOrigin::Deploy,
                    stage: Stage::Rollback,
                },
                events,
                cancel,
            )
            .await;
            if v.healthy {
                Ok(())
            } else {
                Err(StageError::Unhealthy {
                    url: verify::health_url(&service.uri, &d.request.health.path),
                    attempts: v.attempts,
                    last_error: format!(
                        "the previous revision {prev} is not healthy either: {}",
                        v.last_error.unwrap_or_default()
                    ),
                })
            }
        }
        .await;
        metrics::rollback(if result.is_ok() { "success" } else { "failure" });
        if result.is_ok() {
            d.rolled_back = true;
            events
                .progress(
                    Stage::Rollback,
                    format!("rolled back: {prev} serves 100% and is healthy"),
                )
                .await;
        }
        result
    }
}

/// How long a resumed run waits for a rollout sent before its restart.
const ROLLOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `{service}-{8 hex of the deployment id}`: unique, and a valid revision
/// name (Cloud Run requires the service name as prefix).
fn revision_name(service: &str, deployment_id: &str) -> String {
    let suffix: String = deployment_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    let mut base = service.to_string();
    base.truncate(63 - 1 - suffix.len());
    format!(
        "{}-{}",
        base.trim_end_matches('-'),
        suffix.to_ascii_lowercase()
    )
}

fn tag_url(s: &RunService) -> Option<String> {
    s.tag_urls
        .iter()
        .find(|(t, _)| t == CANDIDATE_TAG)
        .map(|(_, u)| u.clone())
}
