//! The canary's steps, run: traffic moved, the step baked while the
//! candidate and the stable revision are sampled, the step judged, and the
//! rollout moved on, extended or aborted. Progress is kept in the
//! deployment, so a resumed run continues at the step it was on.

use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::spec::{CanaryAnalysis, CanaryStep, InconclusivePolicy, ProbeAnalysis};
use super::verdict::{self, Measurement, Verdict};
use crate::pipeline::cloud::{Rollout, TrafficTarget};
use crate::pipeline::error::StageError;
use crate::pipeline::event::{EventKind, Reporter, Stage};
use crate::pipeline::model::HealthCheckSpec;
use crate::pipeline::verify;
use crate::pipeline::{Deployment, Pipeline, CANDIDATE_TAG};
use crate::telemetry::metrics;

/// The tag the stable revision carries during a canary, so it can be
/// probed beside the candidate.
pub const STABLE_TAG: &str = "stable";

/// What the rollout did after judging a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepAction {
    Next,
    Promote,
    Extend,
    Abort,
    /// Inconclusive, passed by the request's policy.
    PassInconclusive,
}

impl StepAction {
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::Next => "next",
            StepAction::Promote => "promote",
            StepAction::Extend => "extend",
            StepAction::Abort => "abort",
            StepAction::PassInconclusive => "pass_inconclusive",
        }
    }
}

/// One step judged (an extended step is judged once per bake).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// From 1.
    pub step: u32,
    pub steps: u32,
    pub percent: u32,
    /// How long the step had baked when it was judged.
    pub baked: Duration,
    pub measurements: Vec<Measurement>,
    pub verdict: Verdict,
    pub action: StepAction,
    pub reason: String,
}

/// How far the canary got; part of the deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryProgress {
    /// Steps done; the next one to run.
    pub next_step: usize,
    pub results: Vec<StepResult>,
    pub aborted: bool,
}

/// Probe samples of one revision over a step.
#[derive(Debug, Default)]
struct Samples {
    ok: u64,
    failed: u64,
    times: Vec<Duration>,
}

impl Samples {
    fn n(&self) -> u64 {
        self.ok + self.failed
    }

    fn p95_ms(&self) -> Option<f64> {
        verify::stats(&self.times).map(|s| s.p95.as_secs_f64() * 1e3)
    }
}

/// What a bake needs to probe: the two tag URLs and the request headers.
struct ProbeTargets {
    candidate: String,
    stable: Option<String>,
    headers: Vec<(String, String)>,
}

impl Pipeline {
    /// The canary after its candidate passed the health gate: every step
    /// in order, then all traffic to the candidate. An aborted canary
    /// returns `CanaryAborted`, and the rollback puts users back.
    pub(crate) async fn run_canary(
        &self,
        d: &mut Deployment,
        id_token: Option<String>,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let steps = d.request.steps();
        let analysis = d.request.analysis.clone().unwrap_or_default();
        let total = steps.len() as u32;
        let (Some(candidate), Some(stable)) = (d.revision.clone(), d.previous_revision.clone())
        else {
            return Ok(());
        };
        let mut headers: Vec<(String, String)> = d
            .request
            .health
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(t) = &id_token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let mut targets = ProbeTargets {
            candidate: d.candidate_url.clone().unwrap_or_default(),
            stable: d.stable_url.clone(),
            headers,
        };
        while d.canary.next_step < steps.len() {
            let i = d.canary.next_step;
            let step = steps[i].clone();
            if step.percent == 100 {
                break;
            }
            // The first step's split was set with the revision itself.
            if i > 0 {
                let service = self
                    .set_canary_traffic(d, &stable, &candidate, step.percent, events, cancel)
                    .await?;
                if let Some(u) = tag_url(&service, CANDIDATE_TAG) {
                    targets.candidate = u;
                }
                if let Some(u) = tag_url(&service, STABLE_TAG) {
                    targets.stable = Some(u);
                }
            }
            let last = i + 1 == steps.len() || steps[i + 1].percent == 100;
            let bake = self.scaled(step.bake);
            events
                .progress(
                    Stage::Verify,
                    format!(
                        "canary step {}/{total}: {}% of traffic on {candidate}, {}% on {stable}{}",
                        i + 1,
                        step.percent,
                        100 - step.percent,
                        if step.bake.is_zero() {
                            String::new()
                        } else {
                            format!(", baking {}", shown_duration(bake))
                        }
                    ),
                )
                .await;
            if !step.bake.is_zero() {
                let result = self
                    .bake_step(
                        d,
                        (i, total, &step, last),
                        &analysis,
                        &targets,
                        events,
                        cancel,
                    )
                    .await?;
                if result.action == StepAction::Abort {
                    d.canary.aborted = true;
                    metrics::canary_abort();
                    return Err(StageError::CanaryAborted {
                        revision: candidate,
                        step: result.step,
                        steps: total,
                        percent: step.percent,
                        reason: result.reason,
                    });
                }
            }
            d.canary.next_step = i + 1;
            events.checkpoint(d).await.map_err(StageError::Journal)?;
        }
        Ok(())
    }

    /// Canary time (bakes, probe intervals, Monitoring's delay) under the
    /// daemon's time scale, which rehearsals and tests shrink.
    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.config.canary.time_scale)
    }

    async fn set_canary_traffic(
        &self,
        d: &mut Deployment,
        stable: &str,
        candidate: &str,
        percent: u32,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<crate::pipeline::cloud::RunService, StageError> {
        let target = d.request.target.clone();
        let traffic = canary_split(stable, candidate, percent);
        let rollout = self
            .cloud_call(
                Stage::Verify,
                || {
                    format!(
                        "moving {percent}% of traffic to {candidate} on {}",
                        target.service
                    )
                },
                &mut d.retries,
                events,
                cancel,
                |_| self.cloud.set_traffic(&target, &traffic),
            )
            .await?;
        match rollout {
            Rollout::Ready(s) => Ok(s),
            Rollout::Failed { message, service } => Err(StageError::RevisionNotReady {
                service: target.service.clone(),
                revision: candidate.to_string(),
                message,
                reason: service.and_then(|s| s.ready_reason),
            }),
        }
    }

    /// Holds one step for its bake (and any extension), sampling as it
    /// goes, until it has a verdict the policy acts on.
    async fn bake_step(
        &self,
        d: &mut Deployment,
        (index, total, step, last): (usize, u32, &CanaryStep, bool),
        analysis: &CanaryAnalysis,
        targets: &ProbeTargets,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<StepResult, StageError> {
        let window_start = SystemTime::now();
        let started = Instant::now();
        let cap = analysis.max_extension.unwrap_or(step.bake);
        let mut extended = Duration::ZERO;
        let mut this_bake = step.bake;
        let mut candidate = Samples::default();
        let mut stable = Samples::default();
        loop {
            let deadline = Instant::now() + self.scaled(this_bake);
            self.sample_until(
                deadline,
                analysis.probes.as_ref(),
                &d.request.health,
                targets,
                (&mut candidate, &mut stable),
                cancel,
            )
            .await?;
            let measurements = self
                .measure(
                    d,
                    analysis,
                    (&candidate, &stable, targets.stable.is_some()),
                    window_start,
                    started,
                    events,
                    cancel,
                )
                .await;
            let verdict = if measurements.is_empty() {
                Verdict::Inconclusive
            } else {
                Verdict::combine(measurements.iter().map(|m| m.verdict))
            };
            for (source, v) in by_source(&measurements) {
                metrics::canary_analysis(source, v.as_str());
            }
            let next = if last {
                StepAction::Promote
            } else {
                StepAction::Next
            };
            let (action, reason) = match verdict {
                Verdict::Pass => (next, "every measurement passed".to_string()),
                Verdict::Fail => (StepAction::Abort, failing(&measurements, Verdict::Fail)),
                Verdict::Inconclusive => match analysis.on_inconclusive {
                    InconclusivePolicy::Pass => (
                        StepAction::PassInconclusive,
                        format!(
                            "inconclusive ({}); the request's policy passes it",
                            failing(&measurements, Verdict::Inconclusive)
                        ),
                    ),
                    InconclusivePolicy::Abort => (
                        StepAction::Abort,
                        format!(
                            "inconclusive ({}) and the request's policy aborts then",
                            failing(&measurements, Verdict::Inconclusive)
                        ),
                    ),
                    InconclusivePolicy::Extend if extended < cap => {
                        this_bake = step.bake.min(cap - extended);
                        extended += this_bake;
                        (
                            StepAction::Extend,
                            format!(
                                "inconclusive ({}); baking {} more (extended {} of at most {})",
                                failing(&measurements, Verdict::Inconclusive),
                                shown_duration(self.scaled(this_bake)),
                                shown_duration(self.scaled(extended)),
                                shown_duration(self.scaled(cap))
                            ),
                        )
                    }
                    InconclusivePolicy::Extend => (
                        StepAction::Abort,
                        format!(
                            "still inconclusive after baking {} longer ({})",
                            shown_duration(self.scaled(extended)),
                            failing(&measurements, Verdict::Inconclusive)
                        ),
                    ),
                },
            };
            let result = StepResult {
                step: index as u32 + 1,
                steps: total,
                percent: step.percent,
                baked: started.elapsed(),
                measurements,
                verdict,
                action,
                reason,
            };
            metrics::canary_step(verdict.as_str(), action.as_str());
            events
                .emit(
                    Some(Stage::Verify),
                    EventKind::CanaryStep(Box::new(result.clone())),
                )
                .await;
            d.canary.results.push(result.clone());
            events.checkpoint(d).await.map_err(StageError::Journal)?;
            if action != StepAction::Extend {
                return Ok(result);
            }
        }
    }

    /// Probes both revisions every interval until `deadline`; the probes
    /// still out then are awaited (each is bounded by its timeout).
    async fn sample_until(
        &self,
        deadline: Instant,
        probes: Option<&ProbeAnalysis>,
        health: &HealthCheckSpec,
        targets: &ProbeTargets,
        (candidate, stable): (&mut Samples, &mut Samples),
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let Some(p) = probes else {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = cancel.cancelled() => return Err(StageError::Cancelled { stage: "verify" }),
            }
        };
        // A probe that hangs must count as a failure before the step ends.
        let spec = HealthCheckSpec {
            timeout: health.timeout.min(PROBE_TIMEOUT_CAP),
            ..health.clone()
        };
        let interval = self.scaled(p.interval).max(Duration::from_millis(10));
        let mut ticks = crate::pipeline::retry::poll_ticks(interval);
        let mut out = FuturesUnordered::new();
        let one = |url: String, is_candidate: bool| {
            let spec = &spec;
            let headers = &targets.headers;
            async move {
                let target = verify::health_url(&url, &spec.path);
                let (r, _, error) =
                    verify::probe_once(self.prober.as_ref(), &target, spec, headers, None, cancel)
                        .await;
                (is_candidate, error.is_none(), r.body_after)
            }
        };
        let record = |(is_candidate, ok, took): (bool, bool, Duration),
                      candidate: &mut Samples,
                      stable: &mut Samples| {
            let s = if is_candidate { candidate } else { stable };
            if ok {
                s.ok += 1;
            } else {
                s.failed += 1;
            }
            s.times.push(took);
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = cancel.cancelled() => return Err(StageError::Cancelled { stage: "verify" }),
                Some(r) = out.next(), if !out.is_empty() => record(r, candidate, stable),
                _ = ticks.tick() => {
                    out.push(one(targets.candidate.clone(), true));
                    if let Some(s) = &targets.stable {
                        out.push(one(s.clone(), false));
                    }
                }
            }
        }
        while let Some(r) = out.next().await {
            record(r, candidate, stable);
        }
        Ok(())
    }

    /// Every signal the analysis asks for, measured over the step so far.
    #[allow(clippy::too_many_arguments)]
    async fn measure(
        &self,
        d: &mut Deployment,
        analysis: &CanaryAnalysis,
        (candidate, stable, has_stable): (&Samples, &Samples, bool),
        window_start: SystemTime,
        started: Instant,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Vec<Measurement> {
        let mut out = vec![];
        if let Some(p) = &analysis.probes {
            let min = u64::from(p.min_samples);
            out.push(verdict::error_ratio(
                "probes",
                candidate.failed,
                candidate.n(),
                min,
                p.max_error_ratio,
            ));
            if let Some(max) = p.max_p95_ms {
                out.push(verdict::latency_limit(
                    "probes",
                    candidate.p95_ms(),
                    candidate.n(),
                    min,
                    max,
                ));
            }
            // Without the stable revision's tag there is no baseline to
            // hold the candidate to (the absolute limit above still holds).
            if has_stable {
                out.push(verdict::latency_vs_stable(
                    (candidate.p95_ms(), candidate.n()),
                    (stable.p95_ms(), stable.n()),
                    min,
                    p.max_p95_ratio,
                    p.latency_slack_ms,
                ));
            }
        }
        if let Some(m) = &analysis.monitoring {
            let end = SystemTime::now()
                .checked_sub(self.scaled(m.ingestion_delay))
                .unwrap_or(window_start);
            if end <= window_start {
                out.push(Measurement::unavailable(
                    "monitoring",
                    "error_ratio",
                    format!(
                        "the step is younger than Monitoring's ingestion delay ({}): no request of it can be counted yet",
                        shown_duration(self.scaled(m.ingestion_delay))
                    ),
                ));
            } else {
                let target = d.request.target.clone();
                let revision = d.revision.clone().unwrap_or_default();
                let read = self
                    .cloud_call(
                        Stage::Verify,
                        || format!("reading Cloud Monitoring's request counts of {revision}"),
                        &mut d.retries,
                        events,
                        cancel,
                        |_| {
                            self.cloud
                                .revision_requests(&target, &revision, window_start, end)
                        },
                    )
                    .await;
                match read {
                    Ok(r) => {
                        let errors = r.by_class.get("5xx").copied().unwrap_or(0);
                        let mut e = verdict::error_ratio(
                            "monitoring",
                            errors,
                            r.total(),
                            u64::from(m.min_requests),
                            m.max_error_ratio,
                        );
                        e.detail = format!("{} (5xx of all requests)", e.detail);
                        out.push(e);
                        if let Some(max) = m.max_p95_ms {
                            let p95 =
                                verdict::quantile(&r.latency_bounds_ms, &r.latency_counts, 0.95);
                            out.push(verdict::latency_limit(
                                "monitoring",
                                p95,
                                r.latency_counts.iter().sum(),
                                u64::from(m.min_requests),
                                max,
                            ));
                        }
                    }
                    Err(e) => out.push(Measurement::unavailable(
                        "monitoring",
                        "error_ratio",
                        format!(
                            "Cloud Monitoring did not answer: {}",
                            crate::pipeline::error::error_chain(&e)
                        ),
                    )),
                }
            }
        }
        if let Some(p) = &analysis.prometheus {
            let window = format!("{}s", started.elapsed().as_secs().max(1));
            let service = d.request.target.service.clone();
            let revision = d.revision.clone().unwrap_or_default();
            let fill = |q: &str| {
                q.replace("$revision", &revision)
                    .replace("$service", &service)
                    .replace("$window", &window)
            };
            for q in &p.queries {
                let value = self.promql.instant(&p.url, &fill(&q.query)).await;
                let samples = match &q.samples_query {
                    None => Ok(None),
                    Some(s) => self.promql.instant(&p.url, &fill(s)).await,
                };
                out.push(prometheus_measurement(q, value, samples));
            }
        }
        out
    }
}

/// A probe during a bake waits at most this long for its answer.
const PROBE_TIMEOUT_CAP: Duration = Duration::from_secs(10);

fn prometheus_measurement(
    q: &super::spec::PromQuery,
    value: Result<Option<f64>, String>,
    samples: Result<Option<f64>, String>,
) -> Measurement {
    let mut m = Measurement::unavailable("prometheus", &q.name, "");
    m.threshold = q.threshold;
    m.comparison = q.comparison.as_str().into();
    m.min_samples = u64::from(q.min_samples);
    let counted = match samples {
        Ok(Some(n)) if n.is_finite() && n >= 0.0 => Some(n as u64),
        Ok(_) if q.samples_query.is_none() => None,
        Ok(_) => Some(0),
        Err(e) => {
            m.detail = format!("the samples query failed: {e}");
            return m;
        }
    };
    m.samples = counted.unwrap_or(0);
    match value {
        Err(e) => m.detail = format!("the query failed: {e}"),
        Ok(None) => m.detail = "the query returned no series (no data yet?)".into(),
        Ok(Some(v)) if !v.is_finite() => {
            m.value = v;
            m.detail = "the query returned NaN (no samples in the window?)".into()
        }
        Ok(Some(v)) => {
            m.value = v;
            if counted.is_some_and(|n| n < u64::from(q.min_samples)) {
                m.detail = format!("{} of the {} samples needed", m.samples, q.min_samples);
            } else {
                m.verdict = if q.comparison.holds(v, q.threshold) {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
            }
        }
    }
    m
}

/// The split of a canary step: the stable revision keeps the rest, and
/// both carry a tag so each can be probed by itself.
pub(crate) fn canary_split(stable: &str, candidate: &str, percent: u32) -> Vec<TrafficTarget> {
    vec![
        TrafficTarget {
            revision: Some(stable.to_string()),
            percent: 100 - percent,
            tag: Some(STABLE_TAG.into()),
        },
        TrafficTarget {
            revision: Some(candidate.to_string()),
            percent,
            tag: Some(CANDIDATE_TAG.into()),
        },
    ]
}

pub(crate) fn tag_url(s: &crate::pipeline::cloud::RunService, tag: &str) -> Option<String> {
    s.tag_urls
        .iter()
        .find(|(t, _)| t == tag)
        .map(|(_, u)| u.clone())
}

/// One verdict per source, for the metrics.
fn by_source(ms: &[Measurement]) -> Vec<(&str, Verdict)> {
    let mut sources: Vec<&str> = ms.iter().map(|m| m.source.as_str()).collect();
    sources.dedup();
    sources
        .into_iter()
        .map(|s| {
            (
                s,
                Verdict::combine(ms.iter().filter(|m| m.source == s).map(|m| m.verdict)),
            )
        })
        .collect()
}

/// The measurements with this verdict, described.
fn failing(ms: &[Measurement], v: Verdict) -> String {
    ms.iter()
        .filter(|m| m.verdict == v)
        .map(Measurement::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

fn shown_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}
