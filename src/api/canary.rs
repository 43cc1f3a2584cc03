//! The canary's request settings and step results between the proto and
//! the domain.

use std::time::Duration;

use crate::api::proto;
use crate::pipeline::canary::verdict::{Measurement, Verdict};
use crate::pipeline::canary::{StepAction, StepResult};
use crate::pipeline::model::{
    CanaryAnalysis, CanaryStep, Comparison, InconclusivePolicy, InvalidRequest, MonitoringAnalysis,
    ProbeAnalysis, PromQuery, PrometheusAnalysis,
};

pub(crate) fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, InvalidRequest> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(InvalidRequest::new(field, "must not be negative"));
    }
    Ok(Duration::new(
        d.seconds as u64,
        d.nanos.clamp(0, 999_999_999) as u32,
    ))
}

pub(crate) fn duration_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn positive(v: f64) -> Option<f64> {
    (v != 0.0).then_some(v)
}

pub fn steps(steps: Vec<proto::CanaryStep>) -> Result<Vec<CanaryStep>, InvalidRequest> {
    steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(CanaryStep {
                percent: s.percent,
                bake: match &s.bake {
                    Some(b) => duration(&format!("canary_steps[{i}].bake"), b)?,
                    None => Duration::ZERO,
                },
            })
        })
        .collect()
}

pub fn analysis(a: proto::CanaryAnalysis) -> Result<CanaryAnalysis, InvalidRequest> {
    let probes = match a.probes {
        Some(p) if p.disabled => None,
        p => {
            let p = p.unwrap_or_default();
            let d = ProbeAnalysis::default();
            Some(ProbeAnalysis {
                interval: match p.interval_ms {
                    0 => d.interval,
                    ms => Duration::from_millis(ms.into()),
                },
                min_samples: if p.min_samples == 0 {
                    d.min_samples
                } else {
                    p.min_samples
                },
                max_error_ratio: positive(p.max_error_ratio).unwrap_or(d.max_error_ratio),
                max_p95_ms: positive(p.max_p95_ms),
                max_p95_ratio: positive(p.max_p95_ratio).unwrap_or(d.max_p95_ratio),
                latency_slack_ms: positive(p.latency_slack_ms).unwrap_or(d.latency_slack_ms),
            })
        }
    };
    let monitoring = match a.monitoring {
        Some(m) if m.enabled => {
            let d = MonitoringAnalysis::default();
            Some(MonitoringAnalysis {
                min_requests: if m.min_requests == 0 {
                    d.min_requests
                } else {
                    m.min_requests
                },
                max_error_ratio: positive(m.max_error_ratio).unwrap_or(d.max_error_ratio),
                max_p95_ms: positive(m.max_p95_ms),
                ingestion_delay: match &m.ingestion_delay {
                    Some(x) => duration("analysis.monitoring.ingestion_delay", x)?,
                    None => d.ingestion_delay,
                },
            })
        }
        _ => None,
    };
    let prometheus = match a.prometheus {
        Some(p) if !p.url.is_empty() || !p.queries.is_empty() => Some(PrometheusAnalysis {
            url: p.url,
            queries: p
                .queries
                .into_iter()
                .enumerate()
                .map(|(i, q)| {
                    let comparison = match proto::Comparison::try_from(q.comparison) {
                        Ok(proto::Comparison::Less) => Comparison::Less,
                        Ok(proto::Comparison::LessOrEqual) => Comparison::LessOrEqual,
                        Ok(proto::Comparison::Greater) => Comparison::Greater,
                        Ok(proto::Comparison::GreaterOrEqual) => Comparison::GreaterOrEqual,
                        _ => {
                            return Err(InvalidRequest::new(
                                format!("analysis.prometheus.queries[{i}].comparison"),
                                "must say how the result compares to the threshold (COMPARISON_LESS, ...)",
                            ))
                        }
                    };
                    Ok(PromQuery {
                        name: q.name,
                        query: q.query,
                        comparison,
                        threshold: q.threshold,
                        samples_query: (!q.samples_query.is_empty()).then_some(q.samples_query),
                        min_samples: q.min_samples,
                    })
                })
                .collect::<Result<_, _>>()?,
        }),
        _ => None,
    };
    let on_inconclusive = match proto::InconclusivePolicy::try_from(a.on_inconclusive) {
        Ok(proto::InconclusivePolicy::Unspecified | proto::InconclusivePolicy::Extend) => {
            InconclusivePolicy::Extend
        }
        Ok(proto::InconclusivePolicy::Pass) => InconclusivePolicy::Pass,
        Ok(proto::InconclusivePolicy::Abort) => InconclusivePolicy::Abort,
        Err(_) => {
            return Err(InvalidRequest::new(
                "analysis.on_inconclusive",
                format!("unknown value {}", a.on_inconclusive),
            ))
        }
    };
    Ok(CanaryAnalysis {
        probes,
        monitoring,
        prometheus,
        on_inconclusive,
        max_extension: a
            .max_extension
            .as_ref()
            .map(|d| duration("analysis.max_extension", d))
            .transpose()?,
    })
}

pub fn steps_proto(steps: &[CanaryStep]) -> Vec<proto::CanaryStep> {
    steps
        .iter()
        .map(|s| proto::CanaryStep {
            percent: s.percent,
            bake: Some(duration_proto(s.bake)),
        })
        .collect()
}

pub fn analysis_proto(a: &CanaryAnalysis) -> proto::CanaryAnalysis {
    proto::CanaryAnalysis {
        probes: Some(match &a.probes {
            None => proto::ProbeAnalysis {
                disabled: true,
                ..Default::default()
            },
            Some(p) => proto::ProbeAnalysis {
                disabled: false,
                interval_ms: u32::try_from(p.interval.as_millis()).unwrap_or(u32::MAX),
                min_samples: p.min_samples,
                max_error_ratio: p.max_error_ratio,
                max_p95_ms: p.max_p95_ms.unwrap_or(0.0),
                max_p95_ratio: p.max_p95_ratio,
                latency_slack_ms: p.latency_slack_ms,
            },
        }),
        monitoring: a.monitoring.as_ref().map(|m| proto::MonitoringAnalysis {
            enabled: true,
            min_requests: m.min_requests,
            max_error_ratio: m.max_error_ratio,
            max_p95_ms: m.max_p95_ms.unwrap_or(0.0),
            ingestion_delay: Some(duration_proto(m.ingestion_delay)),
        }),
        prometheus: a.prometheus.as_ref().map(|p| proto::PrometheusAnalysis {
            url: p.url.clone(),
            queries: p
                .queries
                .iter()
                .map(|q| proto::PromQuery {
                    name: q.name.clone(),
                    query: q.query.clone(),
                    comparison: match q.comparison {
                        Comparison::Less => proto::Comparison::Less,
                        Comparison::LessOrEqual => proto::Comparison::LessOrEqual,
                        Comparison::Greater => proto::Comparison::Greater,
                        Comparison::GreaterOrEqual => proto::Comparison::GreaterOrEqual,
                    }
                    .into(),
                    threshold: q.threshold,
                    samples_query: q.samples_query.clone().unwrap_or_default(),
                    min_samples: q.min_samples,
                })
                .collect(),
        }),
        on_inconclusive: match a.on_inconclusive {
            InconclusivePolicy::Extend => proto::InconclusivePolicy::Extend,
            InconclusivePolicy::Pass => proto::InconclusivePolicy::Pass,
            InconclusivePolicy::Abort => proto::InconclusivePolicy::Abort,
        }
        .into(),
        max_extension: a.max_extension.map(duration_proto),
    }
}

fn verdict(v: Verdict) -> i32 {
    match v {
        Verdict::Pass => proto::Verdict::Pass,
        Verdict::Fail => proto::Verdict::Fail,
        Verdict::Inconclusive => proto::Verdict::Inconclusive,
    }
    .into()
}

/// NaN (no value) travels as 0; the verdict and detail say why.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

fn measurement(m: &Measurement) -> proto::Measurement {
    proto::Measurement {
        source: m.source.clone(),
        name: m.name.clone(),
        value: finite(m.value),
        threshold: finite(m.threshold),
        comparison: m.comparison.clone(),
        samples: m.samples,
        min_samples: m.min_samples,
        verdict: verdict(m.verdict),
        baseline: m.baseline.map(finite).unwrap_or(0.0),
        detail: m.detail.clone(),
    }
}

pub fn step_result(r: &StepResult) -> proto::CanaryStepResult {
    proto::CanaryStepResult {
        step: r.step,
        steps: r.steps,
        percent: r.percent,
        baked: Some(duration_proto(r.baked)),
        measurements: r.measurements.iter().map(measurement).collect(),
        verdict: verdict(r.verdict),
        action: StepAction::as_str(r.action).into(),
        reason: r.reason.clone(),
    }
}
