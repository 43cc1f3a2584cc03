//! What a caller asks of a canary: the steps and how each is judged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::model::InvalidRequest;
use super::super::rules::shown;

/// One step: the candidate's share of traffic, held for `bake`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub percent: u32,
    pub bake: Duration,
}

pub const MAX_STEPS: usize = 10;
pub const MAX_BAKE: Duration = Duration::from_secs(6 * 3600);

/// The signals a step is judged by; every one that is on must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryAnalysis {
    pub probes: Option<ProbeAnalysis>,
    pub monitoring: Option<MonitoringAnalysis>,
    pub prometheus: Option<PrometheusAnalysis>,
    pub on_inconclusive: InconclusivePolicy,
    /// How much longer, in all, a step may bake for want of samples;
    /// `None`: as long as its own bake.
    pub max_extension: Option<Duration>,
}

impl Default for CanaryAnalysis {
    fn default() -> Self {
        Self {
            probes: Some(ProbeAnalysis::default()),
            monitoring: None,
            prometheus: None,
            on_inconclusive: InconclusivePolicy::Extend,
            max_extension: None,
        }
    }
}

/// deployd's own probes of the candidate and the stable revision, side
/// by side, through their tag URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeAnalysis {
    pub interval: Duration,
    pub min_samples: u32,
    pub max_error_ratio: f64,
    pub max_p95_ms: Option<f64>,
    pub max_p95_ratio: f64,
    pub latency_slack_ms: f64,
}

impl Default for ProbeAnalysis {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            min_samples: 10,
            max_error_ratio: 0.01,
            max_p95_ms: None,
            max_p95_ratio: 1.2,
            latency_slack_ms: 25.0,
        }
    }
}

/// Cloud Monitoring's count and latency of the requests users made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitoringAnalysis {
    pub min_requests: u32,
    pub max_error_ratio: f64,
    pub max_p95_ms: Option<f64>,
    /// The window read ends this long before now: Monitoring shows a
    /// request only after a while.
    pub ingestion_delay: Duration,
}

impl Default for MonitoringAnalysis {
    fn default() -> Self {
        Self {
            min_requests: 50,
            max_error_ratio: 0.01,
            max_p95_ms: None,
            ingestion_delay: Duration::from_secs(180),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrometheusAnalysis {
    /// The Prometheus HTTP API's base URL.
    pub url: String,
    pub queries: Vec<PromQuery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromQuery {
    pub name: String,
    pub query: String,
    pub comparison: Comparison,
    pub threshold: f64,
    pub samples_query: Option<String>,
    pub min_samples: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Less => value < threshold,
            Comparison::LessOrEqual => value <= threshold,
            Comparison::Greater => value > threshold,
            Comparison::GreaterOrEqual => value >= threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }
}

/// What a step without enough samples does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InconclusivePolicy {
    /// Bake longer, up to the cap; then abort.
    #[default]
    Extend,
    Pass,
    Abort,
}

pub const MAX_QUERIES: usize = 10;
const MAX_QUERY_BYTES: usize = 4096;

/// The steps of a canary, checked.
pub fn validate_steps(steps: &[CanaryStep]) -> Result<(), InvalidRequest> {
    if steps.len() > MAX_STEPS {
        return Err(InvalidRequest::new(
            "canary_steps",
            format!("at most {MAX_STEPS} steps"),
        ));
    }
    let mut last = 0;
    for (i, s) in steps.iter().enumerate() {
        let field = format!("canary_steps[{i}]");
        if !(1..=100).contains(&s.percent) {
            return Err(InvalidRequest::new(
                format!("{field}.percent"),
                "must be between 1 and 100",
            ));
        }
        if s.percent <= last {
            return Err(InvalidRequest::new(
                format!("{field}.percent"),
                format!(
                    "{}% does not rise above the step before ({last}%)",
                    s.percent
                ),
            ));
        }
        if i == 0 && s.percent == 100 {
            return Err(InvalidRequest::new(
                format!("{field}.percent"),
                "the first step must leave the stable revision some traffic (1-99)",
            ));
        }
        if s.bake > MAX_BAKE {
            return Err(InvalidRequest::new(
                format!("{field}.bake"),
                format!("at most {} h", MAX_BAKE.as_secs() / 3600),
            ));
        }
        last = s.percent;
    }
    Ok(())
}

fn ratio(field: &str, v: f64) -> Result<(), InvalidRequest> {
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(InvalidRequest::new(field, "must be between 0 and 1"));
    }
    Ok(())
}

fn non_negative(field: &str, v: f64) -> Result<(), InvalidRequest> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(InvalidRequest::new(field, "must be a finite number >= 0"));
    }
    Ok(())
}

impl CanaryAnalysis {
    /// The syntax and bounds of every setting.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if let Some(p) = &self.probes {
            if p.interval < Duration::from_millis(100) || p.interval > Duration::from_secs(60) {
                return Err(InvalidRequest::new(
                    "analysis.probes.interval_ms",
                    "must be between 100 and 60000",
                ));
            }
            if p.min_samples > 10_000 {
                return Err(InvalidRequest::new(
                    "analysis.probes.min_samples",
                    "at most 10000",
                ));
            }
            ratio("analysis.probes.max_error_ratio", p.max_error_ratio)?;
            non_negative("analysis.probes.max_p95_ms", p.max_p95_ms.unwrap_or(0.0))?;
            non_negative("analysis.probes.latency_slack_ms", p.latency_slack_ms)?;
            if !(p.max_p95_ratio.is_finite() && p.max_p95_ratio >= 1.0) {
                return Err(InvalidRequest::new(
                    "analysis.probes.max_p95_ratio",
                    "must be a finite number >= 1",
                ));
            }
        }
        if let Some(m) = &self.monitoring {
            ratio("analysis.monitoring.max_error_ratio", m.max_error_ratio)?;
            non_negative(
                "analysis.monitoring.max_p95_ms",
                m.max_p95_ms.unwrap_or(0.0),
            )?;
            if m.ingestion_delay > Duration::from_secs(3600) {
                return Err(InvalidRequest::new(
                    "analysis.monitoring.ingestion_delay",
                    "at most 1 h",
                ));
            }
        }
        if let Some(p) = &self.prometheus {
            validate_prometheus(p)?;
        }
        if self.max_extension.is_some_and(|e| e > MAX_BAKE) {
            return Err(InvalidRequest::new(
                "analysis.max_extension",
                format!("at most {} h", MAX_BAKE.as_secs() / 3600),
            ));
        }
        if self.probes.is_none() && self.monitoring.is_none() && self.prometheus.is_none() {
            return Err(InvalidRequest::new(
                "analysis",
                "every signal is off: a canary step needs at least one to be judged",
            ));
        }
        Ok(())
    }

    /// A query is a request the daemon makes: its Prometheus must be one
    /// the daemon's operator allows (`hosts`).
    pub fn check_prometheus_host(&self, hosts: &[String]) -> Result<(), InvalidRequest> {
        let Some(p) = &self.prometheus else {
            return Ok(());
        };
        let host = url::Url::parse(&p.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        if !hosts
            .iter()
            .any(|h| super::super::addr::host_matches(h, &host))
        {
            return Err(InvalidRequest::new(
                "analysis.prometheus.url",
                format!(
                    "{} is not a Prometheus host this daemon may query; its operator allows hosts with `deployd serve --prometheus-hosts HOST`",
                    shown(&host)
                ),
            ));
        }
        Ok(())
    }
}

fn validate_prometheus(p: &PrometheusAnalysis) -> Result<(), InvalidRequest> {
    let field = "analysis.prometheus.url";
    let url = url::Url::parse(&p.url)
        .map_err(|e| InvalidRequest::new(field, format!("{} is not a URL: {e}", shown(&p.url))))?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(InvalidRequest::new(
            field,
            "must be http(s)://host[:port][/path], without credentials, query or fragment",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidRequest::new(field, "names no host"));
    }
    if p.queries.is_empty() || p.queries.len() > MAX_QUERIES {
        return Err(InvalidRequest::new(
            "analysis.prometheus.queries",
            format!("between 1 and {MAX_QUERIES} queries"),
        ));
    }
    for (i, q) in p.queries.iter().enumerate() {
        let f = |n: &str| format!("analysis.prometheus.queries[{i}].{n}");
        if q.name.is_empty()
            || q.name.len() > 63
            || !q
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(InvalidRequest::new(
                f("name"),
                "1-63 characters of [a-z0-9_-]",
            ));
        }
        for (name, text) in [
            ("query", Some(&q.query)),
            ("samples_query", q.samples_query.as_ref()),
        ] {
            let Some(text) = text else { continue };
            if text.trim().is_empty()
                || text.len() > MAX_QUERY_BYTES
                || text.chars().any(char::is_control)
            {
                return Err(InvalidRequest::new(
                    f(name),
                    format!("a PromQL expression of at most {MAX_QUERY_BYTES} bytes, on one line"),
                ));
            }
        }
        if !q.threshold.is_finite() {
            return Err(InvalidRequest::new(
                f("threshold"),
                "must be a finite number",
            ));
        }
        if q.min_samples > 0 && q.samples_query.is_none() {
            return Err(InvalidRequest::new(
                f("min_samples"),
                "needs a samples_query to count the samples",
            ));
        }
    }
    Ok(())
}
