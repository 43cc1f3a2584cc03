//! proto <-> domain. Invalid enum values and missing required messages are
//! reported as [`InvalidRequest`] naming the field.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::proto;
use crate::analysis::BuildPlan;
use crate::deployments::{Record, State};
use crate::pipeline::event::{
    CheckResult, Event, EventKind, Failure, Outcome, ProbeResult, ProbeStats, Stage,
};
use crate::pipeline::model::{
    AnalyzeRequest, BuildOptions, DeployRequest, HealthCheckSpec, Ingress, InvalidRequest,
    PreflightRequest, RollbackPolicy, RolloutMode, RuntimeSettings, SecretEnv, SourceSpec,
    StartupProbe, Target, VerifyRequest, VpcEgress,
};
use crate::pipeline::Analysis;

fn target(t: Option<proto::Target>) -> Result<Target, InvalidRequest> {
    let t = t.ok_or_else(|| InvalidRequest::new("target", "is required"))?;
    Ok(Target {
        project: t.project,
        region: t.region,
        service: t.service,
    })
}

fn ingress(v: i32, field: &'static str) -> Result<Option<Ingress>, InvalidRequest> {
    match proto::Ingress::try_from(v) {
        Ok(proto::Ingress::Unspecified) => Ok(None),
        Ok(proto::Ingress::All) => Ok(Some(Ingress::All)),
        Ok(proto::Ingress::InternalOnly) => Ok(Some(Ingress::InternalOnly)),
        Ok(proto::Ingress::InternalLoadBalancer) => Ok(Some(Ingress::InternalLoadBalancer)),
        Err(_) => Err(InvalidRequest::new(field, format!("unknown value {v}"))),
    }
}

fn egress(v: i32, field: &'static str) -> Result<Option<VpcEgress>, InvalidRequest> {
    match proto::VpcEgress::try_from(v) {
        Ok(proto::VpcEgress::Unspecified) => Ok(None),
        Ok(proto::VpcEgress::PrivateRangesOnly) => Ok(Some(VpcEgress::PrivateRangesOnly)),
        Ok(proto::VpcEgress::AllTraffic) => Ok(Some(VpcEgress::AllTraffic)),
        Err(_) => Err(InvalidRequest::new(field, format!("unknown value {v}"))),
    }
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn build_options(b: Option<proto::BuildOptions>) -> BuildOptions {
    let d = BuildOptions::default();
    let Some(b) = b else { return d };
    BuildOptions {
        machine_type: nonempty(b.machine_type).unwrap_or(d.machine_type),
        timeout: nonzero(b.timeout_seconds)
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(d.timeout),
        step_timeout: nonzero(b.step_timeout_seconds)
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(d.step_timeout),
        max_attempts: nonzero(b.max_attempts).unwrap_or(d.max_attempts),
        repository: nonempty(b.repository).unwrap_or(d.repository),
        service_account: nonempty(b.service_account),
    }
}

/// Health settings shared by DeployRequest.health_check and VerifyRequest.
pub struct HealthFields {
    pub path: String,
    pub attempts: u32,
    pub timeout_ms: u32,
    pub statuses: Vec<u32>,
    pub base_delay_ms: u32,
    pub max_delay_ms: u32,
    pub expect_body: String,
    pub headers: HashMap<String, String>,
    /// 0: the default gate; Verify sends 1.
    pub consecutive_successes: u32,
}

pub fn health(
    h: HealthFields,
    default_delay: Duration,
    field: &'static str,
) -> Result<HealthCheckSpec, InvalidRequest> {
    let d = HealthCheckSpec::default();
    let accepted_statuses = if h.statuses.is_empty() {
        d.accepted_statuses
    } else {
        h.statuses
            .into_iter()
            .map(|s| {
                u16::try_from(s)
                    .map_err(|_| InvalidRequest::new(field, format!("{s} is not an HTTP status")))
            })
            .collect::<Result<_, _>>()?
    };
    let ms = |v: u32| Duration::from_millis(v.into());
    Ok(HealthCheckSpec {
        path: nonempty(h.path).unwrap_or(d.path),
        attempts: nonzero(h.attempts).unwrap_or(d.attempts),
        timeout: nonzero(h.timeout_ms).map(ms).unwrap_or(d.timeout),
        accepted_statuses,
        base_delay: nonzero(h.base_delay_ms).map(ms).unwrap_or(default_delay),
        max_delay: nonzero(h.max_delay_ms).map(ms),
        expect_body: nonempty(h.expect_body),
        headers: h.headers.into_iter().collect(),
        consecutive_successes: nonzero(h.consecutive_successes).unwrap_or(d.consecutive_successes),
    })
}

/// A request's source: where it comes from and which directory of it.
fn source(s: Option<proto::Source>) -> Result<(SourceSpec, Option<String>), InvalidRequest> {
    let s = s.ok_or_else(|| InvalidRequest::new("source", "is required"))?;
    let subdirectory = nonempty(s.subdirectory.clone());
    let spec = match s.kind {
        Some(proto::source::Kind::LocalPath(p)) => SourceSpec::LocalPath(PathBuf::from(p)),
        Some(proto::source::Kind::GitUrl(url)) => SourceSpec::Git {
            url,
            git_ref: nonempty(s.git_ref),
        },
        Some(proto::source::Kind::Image(_)) if !s.git_ref.is_empty() => {
            return Err(InvalidRequest::new(
                "source.git_ref",
                "an image has no git ref",
            ));
        }
        Some(proto::source::Kind::Image(image)) => SourceSpec::Image(image),
        None => {
            return Err(InvalidRequest::new(
                "source",
                "needs local_path, git_url or image",
            ))
        }
    };
    Ok((spec, subdirectory))
}

pub fn analyze_request(r: proto::AnalyzeRequest) -> Result<AnalyzeRequest, InvalidRequest> {
    let (source, subdirectory) = source(r.source)?;
    Ok(AnalyzeRequest {
        source,
        subdirectory,
    })
}

pub fn analyze_response(r: Result<Analysis, Failure>) -> proto::AnalyzeResponse {
    match r {
        Ok(a) => proto::AnalyzeResponse {
            plan: Some(plan(&a.plan, a.dockerfile.as_deref())),
            source_commit: a.commit.unwrap_or_default(),
            error: None,
        },
        Err(f) => proto::AnalyzeResponse {
            error: Some(failure(f)),
            ..Default::default()
        },
    }
}

pub fn deploy_request(
    r: proto::DeployRequest,
    default_health_delay: Duration,
) -> Result<DeployRequest, InvalidRequest> {
    let (source, subdirectory) = source(r.source)?;
    let rt = r.runtime.unwrap_or_default();
    let runtime = RuntimeSettings {
        env: rt.env.into_iter().collect(),
        secrets: rt
            .secrets
            .into_iter()
            .map(|s| SecretEnv {
                env_name: s.env_name,
                secret: s.secret,
                version: s.version,
            })
            .collect(),
        cpu: nonempty(rt.cpu),
        memory: nonempty(rt.memory),
        min_instances: nonzero(rt.min_instances),
        max_instances: nonzero(rt.max_instances),
        concurrency: nonzero(rt.concurrency),
        request_timeout: nonzero(rt.request_timeout_seconds).map(|s| Duration::from_secs(s.into())),
        service_account: nonempty(rt.service_account),
        ingress: ingress(rt.ingress, "runtime.ingress")?,
        vpc_egress: egress(rt.vpc_egress, "runtime.vpc_egress")?,
        vpc_connector: nonempty(rt.vpc_connector),
        allow_unauthenticated: rt.allow_unauthenticated,
        container_port: u16::try_from(rt.container_port)
            .map_err(|_| InvalidRequest::new("runtime.container_port", "must be a TCP port"))?,
        startup_probe: None,
    };
    let mut runtime = runtime;
    let h = r.health_check.unwrap_or_default();
    let probe = h.startup_probe.clone().unwrap_or_default();
    let health = health(
        HealthFields {
            path: h.path,
            attempts: h.attempts,
            timeout_ms: h.timeout_ms,
            statuses: h.accepted_statuses,
            base_delay_ms: h.base_delay_ms,
            max_delay_ms: h.max_delay_ms,
            expect_body: h.expect_body,
            headers: h.headers,
            consecutive_successes: h.consecutive_successes,
        },
        default_health_delay,
        "health_check",
    )?;
    // On by default, on the health check's path.
    runtime.startup_probe = (!probe.disabled).then(|| {
        StartupProbe::with_defaults(
            nonempty(probe.path).unwrap_or_else(|| health.path.clone()),
            probe.initial_delay_seconds,
            probe.period_seconds,
            probe.timeout_seconds,
            probe.failure_threshold,
        )
    });
    let rollback = match proto::RollbackPolicy::try_from(r.rollback_policy) {
        Ok(proto::RollbackPolicy::Recommend) => RollbackPolicy::Recommend,
        Ok(proto::RollbackPolicy::Unspecified | proto::RollbackPolicy::Automatic) => {
            RollbackPolicy::Automatic
        }
        Err(_) => {
            return Err(InvalidRequest::new(
                "rollback_policy",
                format!("unknown value {}", r.rollback_policy),
            ))
        }
    };
    let rollout = match proto::RolloutMode::try_from(r.rollout_mode) {
        Ok(proto::RolloutMode::Direct) => RolloutMode::Direct,
        Ok(proto::RolloutMode::VerifyBeforeTraffic) => RolloutMode::VerifyBeforeTraffic,
        Ok(proto::RolloutMode::Canary) => RolloutMode::Canary {
            percent: match r.canary_steps.first() {
                Some(first) if r.canary_percent == 0 => first.percent,
                Some(_) => {
                    return Err(InvalidRequest::new(
                        "canary_percent",
                        "set canary_steps or canary_percent, not both",
                    ))
                }
                None => nonzero(r.canary_percent).unwrap_or(10),
            },
        },
        Err(_) => {
            return Err(InvalidRequest::new(
                "rollout_mode",
                format!("unknown value {}", r.rollout_mode),
            ))
        }
    };
    Ok(DeployRequest {
        target: target(r.target)?,
        source,
        subdirectory,
        runtime,
        build: build_options(r.build),
        health,
        rollback,
        rollout,
        canary_steps: super::canary::steps(r.canary_steps)?,
        analysis: r.analysis.map(super::canary::analysis).transpose()?,
    })
}

pub fn preflight_request(r: proto::PreflightRequest) -> Result<PreflightRequest, InvalidRequest> {
    Ok(PreflightRequest {
        target: target(r.target)?,
        service_account: nonempty(r.service_account),
        ingress: ingress(r.ingress, "ingress")?,
        vpc_egress: egress(r.vpc_egress, "vpc_egress")?,
        build: build_options(Some(proto::BuildOptions {
            repository: r.repository,
            service_account: r.build_service_account,
            ..Default::default()
        })),
        prebuilt_image: false,
    })
}

pub fn verify_request(
    r: proto::VerifyRequest,
    default_delay: Duration,
) -> Result<VerifyRequest, InvalidRequest> {
    Ok(VerifyRequest {
        url: r.url,
        health: health(
            HealthFields {
                path: r.health_path,
                attempts: r.attempts,
                timeout_ms: r.timeout_ms,
                statuses: r.accepted_statuses,
                base_delay_ms: r.base_delay_ms,
                max_delay_ms: r.max_delay_ms,
                expect_body: r.expect_body,
                headers: r.headers,
                // A Verify judges a URL by one healthy answer.
                consecutive_successes: 1,
            },
            default_delay,
            "health_path",
        )?,
    })
}

pub fn stage(s: Stage) -> proto::Stage {
    match s {
        Stage::Source => proto::Stage::Source,
        Stage::Analyze => proto::Stage::Analyze,
        Stage::Preflight => proto::Stage::Preflight,
        Stage::Build => proto::Stage::Build,
        Stage::Deploy => proto::Stage::Deploy,
        Stage::Verify => proto::Stage::Verify,
        Stage::Rollback => proto::Stage::Rollback,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn check(c: CheckResult) -> proto::Check {
    proto::Check {
        name: c.name.to_string(),
        ok: c.ok,
        detail: c.detail,
        remediation: c.remediation,
        inconclusive: c.inconclusive,
        skipped: c.skipped,
    }
}

fn failure(f: Failure) -> proto::Failure {
    proto::Failure {
        code: f.code,
        message: f.message,
        retriable: f.retriable,
        remediation: f.remediation,
    }
}

fn probe(p: ProbeResult) -> proto::Probe {
    proto::Probe {
        attempt: p.attempt,
        url: p.url,
        status_code: p.status.map(u32::from).unwrap_or(0),
        response_time_ms: ms(p.response_time),
        healthy: p.healthy,
        error: p.error.unwrap_or_default(),
        error_class: p
            .error_class
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        headers_ms: ms(p.headers_time),
        final_url: p.final_url,
    }
}

pub fn plan(p: &BuildPlan, dockerfile: Option<&str>) -> proto::BuildPlan {
    proto::BuildPlan {
        language: p.language.as_str().into(),
        version: p.version.clone().unwrap_or_default(),
        framework: p.framework.clone().unwrap_or_default(),
        package_manager: p.package_manager.clone().unwrap_or_default(),
        install: p.install.clone(),
        build: p.build.clone(),
        start: p.start.clone(),
        port: p.port.into(),
        evidence: p
            .evidence
            .iter()
            .map(|e| proto::Evidence {
                file: e.file.clone(),
                line: e.line.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
                note: e.note.clone(),
            })
            .collect(),
        dockerfile: dockerfile.unwrap_or_default().into(),
        warnings: p
            .warnings
            .iter()
            .map(|w| proto::PlanWarning {
                file: w.file.clone(),
                line: w.line.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
                message: w.message.clone(),
                env: w.env.clone().unwrap_or_default(),
            })
            .collect(),
        detected_language: p
            .detected
            .map(|l| l.as_str().to_string())
            .unwrap_or_default(),
        user: p.user.clone().unwrap_or_default(),
    }
}

fn probe_stats(s: ProbeStats) -> proto::ProbeStats {
    proto::ProbeStats {
        attempts: s.attempts,
        p50_ms: ms(s.p50),
        p95_ms: ms(s.p95),
        max_ms: ms(s.max),
    }
}

fn outcome(o: Outcome) -> proto::Outcome {
    proto::Outcome {
        success: o.success,
        url: o.url,
        verified: o.verified,
        response_time_ms: o.response_time.map(ms).unwrap_or(0.0),
        should_rollback: o.should_rollback,
        error: o.error.map(failure),
        checks: o.checks.into_iter().map(check).collect(),
        revision: o.revision,
        previous_revision: o.previous_revision,
        image: o.image,
        build_id: o.build_id,
        failed_stage: o
            .failed_stage
            .map(stage)
            .unwrap_or(proto::Stage::Unspecified)
            .into(),
        source_commit: o.source_commit,
        source_commit_time: o
            .source_commit_time
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        rolled_back: o.rolled_back,
        probe_stats: o.probe_stats.map(probe_stats),
        final_url: o.final_url,
        canary_steps: o
            .canary_steps
            .iter()
            .map(super::canary::step_result)
            .collect(),
        canary_aborted: o.canary_aborted,
        rollback_failure: o.rollback_failure.map(|r| proto::RollbackFailure {
            traffic_moved: r.traffic_moved,
            serving_revision: r.serving_revision,
            error: Some(failure(r.error)),
        }),
    }
}

pub fn event(e: Event) -> proto::Event {
    use proto::event::Kind;
    let kind = match e.kind {
        EventKind::StageStarted => Kind::StageStarted(proto::StageStarted {}),
        EventKind::StageFinished { ok, duration } => Kind::StageFinished(proto::StageFinished {
            ok,
            duration_ms: ms(duration),
        }),
        EventKind::Progress(p) => Kind::Progress(proto::Progress {
            message: p.message,
            build_id: p.build.build_id.unwrap_or_default(),
            log_url: p.build.log_url.unwrap_or_default(),
            attempt: p.build.attempt.unwrap_or_default(),
            max_attempts: p.build.max_attempts.unwrap_or_default(),
            archive_sha256: p.build.archive_sha256.unwrap_or_default(),
            archive_uri: p.build.archive_uri.unwrap_or_default(),
            image: p.build.image.unwrap_or_default(),
        }),
        EventKind::Log(line) => Kind::Log(proto::LogLine { line }),
        EventKind::Check(c) => Kind::Check(check(c)),
        EventKind::Probe(p) => Kind::Probe(probe(p)),
        EventKind::Retry {
            operation,
            attempt,
            delay,
            reason,
        } => Kind::Retry(proto::Retry {
            operation,
            attempt,
            delay_ms: ms(delay),
            reason,
        }),
        EventKind::Plan {
            plan: p,
            dockerfile,
        } => Kind::Plan(plan(&p, dockerfile.as_deref())),
        EventKind::CanaryStep(r) => Kind::CanaryStep(super::canary::step_result(&r)),
        EventKind::Outcome(o) => Kind::Outcome(outcome(*o)),
    };
    proto::Event {
        deployment_id: e.deployment_id,
        seq: e.seq,
        stage: e
            .stage
            .map(stage)
            .unwrap_or(proto::Stage::Unspecified)
            .into(),
        time: Some(timestamp(e.time)),
        kind: Some(kind),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn state(s: State) -> proto::DeploymentState {
    match s {
        State::Running => proto::DeploymentState::Running,
        State::Succeeded => proto::DeploymentState::Succeeded,
        State::Failed => proto::DeploymentState::Failed,
        State::Cancelled => proto::DeploymentState::Cancelled,
    }
}

/// A state filter; `None` for UNSPECIFIED (all).
pub fn state_filter(v: i32) -> Result<Option<State>, InvalidRequest> {
    match proto::DeploymentState::try_from(v) {
        Ok(proto::DeploymentState::Unspecified) => Ok(None),
        Ok(proto::DeploymentState::Running) => Ok(Some(State::Running)),
        Ok(proto::DeploymentState::Succeeded) => Ok(Some(State::Succeeded)),
        Ok(proto::DeploymentState::Failed) => Ok(Some(State::Failed)),
        Ok(proto::DeploymentState::Cancelled) => Ok(Some(State::Cancelled)),
        Err(_) => Err(InvalidRequest::new("state", format!("unknown value {v}"))),
    }
}

pub fn deployment(r: Record) -> proto::Deployment {
    proto::Deployment {
        request: r
            .progress
            .as_ref()
            .map(|p| deploy_request_proto(&p.request, r.request_id.clone().unwrap_or_default())),
        id: r.id,
        request_id: r.request_id.unwrap_or_default(),
        target: Some(target_proto(&r.target)),
        state: state(r.state).into(),
        stage: r
            .stage
            .map(stage)
            .unwrap_or(proto::Stage::Unspecified)
            .into(),
        create_time: Some(timestamp(r.created)),
        update_time: Some(timestamp(r.updated)),
        end_time: r.ended.map(timestamp),
        caller: r.caller,
        outcome: r.outcome.map(outcome),
        owner: r.owner.unwrap_or_default(),
        cancel_requested: r.cancel_requested,
        resumed: r.resumed,
        last_seq: r.last_seq,
    }
}

fn target_proto(t: &Target) -> proto::Target {
    proto::Target {
        project: t.project.clone(),
        region: t.region.clone(),
        service: t.service.clone(),
    }
}

/// The domain request as the proto says it, defaults filled in.
pub fn deploy_request_proto(r: &DeployRequest, request_id: String) -> proto::DeployRequest {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let (kind, git_ref) = match &r.source {
        SourceSpec::LocalPath(p) => (
            proto::source::Kind::LocalPath(p.display().to_string()),
            String::new(),
        ),
        SourceSpec::Git { url, git_ref } => (
            proto::source::Kind::GitUrl(url.clone()),
            git_ref.clone().unwrap_or_default(),
        ),
        SourceSpec::Image(image) => (proto::source::Kind::Image(image.clone()), String::new()),
    };
    let rt = &r.runtime;
    let (rollout_mode, canary_percent) = match r.rollout {
        RolloutMode::Direct => (proto::RolloutMode::Direct, 0),
        RolloutMode::VerifyBeforeTraffic => (proto::RolloutMode::VerifyBeforeTraffic, 0),
        RolloutMode::Canary { .. } if !r.canary_steps.is_empty() => (proto::RolloutMode::Canary, 0),
        RolloutMode::Canary { percent } => (proto::RolloutMode::Canary, percent),
    };
    proto::DeployRequest {
        target: Some(target_proto(&r.target)),
        source: Some(proto::Source {
            kind: Some(kind),
            git_ref,
            subdirectory: r.subdirectory.clone().unwrap_or_default(),
        }),
        runtime: Some(proto::RuntimeSettings {
            env: rt.env.clone().into_iter().collect(),
            secrets: rt
                .secrets
                .iter()
                .map(|s| proto::SecretEnv {
                    env_name: s.env_name.clone(),
                    secret: s.secret.clone(),
                    version: s.version.clone(),
                })
                .collect(),
            cpu: rt.cpu.clone().unwrap_or_default(),
            memory: rt.memory.clone().unwrap_or_default(),
            min_instances: rt.min_instances.unwrap_or(0),
            max_instances: rt.max_instances.unwrap_or(0),
            concurrency: rt.concurrency.unwrap_or(0),
            request_timeout_seconds: rt.request_timeout.map(secs).unwrap_or(0),
            service_account: rt.service_account.clone().unwrap_or_default(),
            ingress: match rt.ingress {
                None => proto::Ingress::Unspecified,
                Some(Ingress::All) => proto::Ingress::All,
                Some(Ingress::InternalOnly) => proto::Ingress::InternalOnly,
                Some(Ingress::InternalLoadBalancer) => proto::Ingress::InternalLoadBalancer,
            }
            .into(),
            vpc_egress: match rt.vpc_egress {
                None => proto::VpcEgress::Unspecified,
                Some(VpcEgress::PrivateRangesOnly) => proto::VpcEgress::PrivateRangesOnly,
                Some(VpcEgress::AllTraffic) => proto::VpcEgress::AllTraffic,
            }
            .into(),
            vpc_connector: rt.vpc_connector.clone().unwrap_or_default(),
            allow_unauthenticated: rt.allow_unauthenticated,
            container_port: rt.container_port.into(),
        }),
        build: Some(proto::BuildOptions {
            machine_type: r.build.machine_type.clone(),
            timeout_seconds: secs(r.build.timeout),
            step_timeout_seconds: secs(r.build.step_timeout),
            max_attempts: r.build.max_attempts,
            repository: r.build.repository.clone(),
            service_account: r.build.service_account.clone().unwrap_or_default(),
        }),
        health_check: Some(proto::HealthCheck {
            path: r.health.path.clone(),
            attempts: r.health.attempts,
            timeout_ms: millis(r.health.timeout),
            accepted_statuses: r
                .health
                .accepted_statuses
                .iter()
                .map(|s| u32::from(*s))
                .collect(),
            base_delay_ms: millis(r.health.base_delay),
            expect_body: r.health.expect_body.clone().unwrap_or_default(),
            headers: r.health.headers.clone().into_iter().collect(),
            max_delay_ms: r.health.max_delay.map(millis).unwrap_or(0),
            consecutive_successes: r.health.consecutive_successes,
            startup_probe: Some(match &r.runtime.startup_probe {
                Some(p) => proto::StartupProbe {
                    disabled: false,
                    path: p.path.clone(),
                    initial_delay_seconds: p.initial_delay_seconds,
                    period_seconds: p.period_seconds,
                    timeout_seconds: p.timeout_seconds,
                    failure_threshold: p.failure_threshold,
                },
                None => proto::StartupProbe {
                    disabled: true,
                    ..Default::default()
                },
            }),
        }),
        rollback_policy: match r.rollback {
            RollbackPolicy::Automatic => proto::RollbackPolicy::Automatic,
            RollbackPolicy::Recommend => proto::RollbackPolicy::Recommend,
        }
        .into(),
        rollout_mode: rollout_mode.into(),
        canary_percent,
        request_id,
        canary_steps: super::canary::steps_proto(&r.canary_steps),
        analysis: r.analysis.as_ref().map(super::canary::analysis_proto),
    }
}

fn band(b: Option<crate::deployments::delivery::Band>) -> i32 {
    use crate::deployments::delivery::Band;
    let band = match b {
        None => proto::PerformanceBand::Unspecified,
        Some(Band::Elite) => proto::PerformanceBand::Elite,
        Some(Band::High) => proto::PerformanceBand::High,
        Some(Band::Medium) => proto::PerformanceBand::Medium,
        Some(Band::Low) => proto::PerformanceBand::Low,
    };
    band.into()
}

/// The target and window of a GetDeliveryMetrics request; `max_window` is
/// the store's retention.
pub fn delivery_request(
    r: proto::GetDeliveryMetricsRequest,
    max_window: Duration,
) -> Result<(Target, Duration), InvalidRequest> {
    let target = target(r.target)?;
    target.validate(true)?;
    let window = match &r.window {
        None => DEFAULT_DELIVERY_WINDOW,
        Some(w) => super::canary::duration("window", w)?,
    };
    if window < Duration::from_secs(60) {
        return Err(InvalidRequest::new("window", "must be at least a minute"));
    }
    if window > max_window {
        return Err(InvalidRequest::new(
            "window",
            format!(
                "must be at most the store's retention of {} days",
                max_window.as_secs() / 86_400
            ),
        ));
    }
    Ok((target, window))
}

/// DORA's usual window.
pub const DEFAULT_DELIVERY_WINDOW: Duration = Duration::from_secs(30 * 86_400);

pub fn delivery_metrics(
    t: &Target,
    m: &crate::deployments::delivery::DeliveryMetrics,
) -> proto::DeliveryMetrics {
    use super::canary::duration_proto;
    proto::DeliveryMetrics {
        target: Some(proto::Target {
            project: t.project.clone(),
            region: t.region.clone(),
            service: t.service.clone(),
        }),
        start_time: Some(timestamp(m.start)),
        end_time: Some(timestamp(m.end)),
        successful_deployments: m.successes,
        deployments_per_day: m.deployments_per_day,
        deployment_frequency_band: band(Some(m.frequency_band)),
        lead_time_samples: m.lead_time_samples,
        lead_time_median: m.lead_time_median.map(duration_proto),
        lead_time_band: band(m.lead_time_band),
        change_failures: m.change_failures,
        change_failure_rate: m.change_failure_rate.unwrap_or(0.0),
        change_failure_band: band(m.change_failure_band),
        restores: m.restores,
        time_to_restore_median: m.time_to_restore_median.map(duration_proto),
        time_to_restore_band: band(m.restore_band),
        failing_since: m.failing_since.map(timestamp),
    }
}
