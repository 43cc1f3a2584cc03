//! `deploy`'s canary flags: the steps (`5:2m,25:5m,50:5m,100`) and how
//! each step is judged.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::api::proto;

#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Canary steps and analysis")]
pub struct CanaryArgs {
    /// Traffic steps of a canary, PERCENT:BAKE,... with the last step's bake
    /// optional, e.g. 5:2m,25:5m,50:5m,100 (implies --rollout canary). Each
    /// step is held for its bake while the candidate is judged.
    #[arg(long, value_parser = parse_steps)]
    pub canary_steps: Option<Steps>,
    /// Do not judge steps by deployd's own probes of the candidate and the
    /// stable revision.
    #[arg(long)]
    pub no_probe_analysis: bool,
    /// Between two analysis probes of each revision (e.g. 2s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub probe_interval: Option<Duration>,
    /// Candidate probes a step needs for a verdict (default 10).
    #[arg(long)]
    pub min_samples: Option<u32>,
    /// Failed share of the candidate's probes that fails a step (default 0.01).
    #[arg(long)]
    pub max_error_ratio: Option<f64>,
    /// The candidate's probe p95 may not exceed this many ms.
    #[arg(long)]
    pub max_p95_ms: Option<f64>,
    /// The candidate's probe p95 may not exceed this multiple of the stable
    /// revision's (default 1.2, past a 25 ms slack).
    #[arg(long)]
    pub max_p95_ratio: Option<f64>,
    /// Judge steps by Cloud Monitoring's request counts and latencies of the
    /// candidate revision too.
    #[arg(long)]
    pub monitoring_analysis: bool,
    /// Requests Monitoring must have counted for a verdict (default 50).
    #[arg(long, requires = "monitoring_analysis")]
    pub monitoring_min_requests: Option<u32>,
    /// How long Monitoring takes to show a request (default 180s).
    #[arg(long, value_parser = parse_duration, requires = "monitoring_analysis")]
    pub monitoring_delay: Option<Duration>,
    /// Prometheus HTTP API to run --promql queries against.
    #[arg(long, requires = "promql")]
    pub prometheus: Option<String>,
    /// NAME=QUERY OP THRESHOLD, e.g. 'errors=sum(rate(http_errors_total[$window])) < 0.5'
    /// ($revision, $service and $window are filled in). Repeatable.
    #[arg(long, requires = "prometheus", value_parser = parse_promql)]
    pub promql: Vec<proto::PromQuery>,
    /// NAME=QUERY >= MIN: counts what query NAME measured; below MIN the
    /// verdict is inconclusive.
    #[arg(long, requires = "promql", value_parser = parse_promql)]
    pub promql_samples: Vec<proto::PromQuery>,
    /// What a step without enough samples does.
    #[arg(long, value_enum)]
    pub on_inconclusive: Option<InconclusiveArg>,
    /// How much longer, in all, an inconclusive step may bake (default: its
    /// own bake).
    #[arg(long, value_parser = parse_duration)]
    pub max_extension: Option<Duration>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InconclusiveArg {
    Extend,
    Pass,
    Abort,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Steps(pub Vec<proto::CanaryStep>);

/// `90`, `30s`, `500ms`, `2m`, `1h`, `30d`, `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 2m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "w" => n * 7.0 * 86_400.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h, d or w")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn parse_steps(s: &str) -> Result<Steps, String> {
    s.split(',')
        .map(|step| {
            let (percent, bake) = match step.split_once(':') {
                Some((p, b)) => (p, Some(parse_duration(b)?)),
                None => (step, None),
            };
            let percent: u32 = percent
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("{step:?} is not PERCENT[:BAKE]"))?;
            Ok(proto::CanaryStep {
                percent,
                bake: bake.map(proto_duration),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Steps)
}

/// `NAME=QUERY OP THRESHOLD`; the condition is the last comparison in the
/// text followed by a number.
pub fn parse_promql(s: &str) -> Result<proto::PromQuery, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=QUERY OP THRESHOLD"))?;
    for (op, comparison) in [
        ("<=", proto::Comparison::LessOrEqual),
        (">=", proto::Comparison::GreaterOrEqual),
        ("<", proto::Comparison::Less),
        (">", proto::Comparison::Greater),
    ] {
        if let Some(i) = rest.rfind(op) {
            let threshold = rest[i + op.len()..].trim();
            // "<" inside "<=" was tried first; a later "<" would be found by
            // rfind for "<" too, so the number check keeps them apart.
            if let Ok(t) = threshold.parse::<f64>() {
                return Ok(proto::PromQuery {
                    name: name.trim().to_string(),
                    query: rest[..i].trim().to_string(),
                    comparison: comparison.into(),
                    threshold: t,
                    ..Default::default()
                });
            }
        }
    }
    Err(format!(
        "{s:?} has no condition: end the query with <, <=, > or >= and a number"
    ))
}

impl CanaryArgs {
    /// The request's steps and analysis; `None` for a deploy without steps.
    pub fn request(
        &self,
    ) -> anyhow::Result<Option<(Vec<proto::CanaryStep>, Option<proto::CanaryAnalysis>)>> {
        let Some(Steps(steps)) = &self.canary_steps else {
            let asked = self.no_probe_analysis
                || self.monitoring_analysis
                || self.prometheus.is_some()
                || self.probe_interval.is_some()
                || self.min_samples.is_some()
                || self.on_inconclusive.is_some();
            if asked {
                bail!("the analysis flags judge canary steps: give --canary-steps too");
            }
            return Ok(None);
        };
        let mut queries = self.promql.clone();
        for s in &self.promql_samples {
            let q = queries
                .iter_mut()
                .find(|q| q.name == s.name)
                .with_context(|| {
                    format!("--promql-samples {}: no --promql query is named so", s.name)
                })?;
            if s.comparison != i32::from(proto::Comparison::GreaterOrEqual) {
                bail!(
                    "--promql-samples {}: write the minimum as QUERY >= MIN",
                    s.name
                );
            }
            q.samples_query = s.query.clone();
            q.min_samples = s.threshold as u32;
        }
        let analysis = proto::CanaryAnalysis {
            probes: Some(proto::ProbeAnalysis {
                disabled: self.no_probe_analysis,
                interval_ms: self
                    .probe_interval
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                min_samples: self.min_samples.unwrap_or(0),
                max_error_ratio: self.max_error_ratio.unwrap_or(0.0),
                max_p95_ms: self.max_p95_ms.unwrap_or(0.0),
                max_p95_ratio: self.max_p95_ratio.unwrap_or(0.0),
                latency_slack_ms: 0.0,
            }),
            monitoring: self.monitoring_analysis.then(|| proto::MonitoringAnalysis {
                enabled: true,
                min_requests: self.monitoring_min_requests.unwrap_or(0),
                max_error_ratio: 0.0,
                max_p95_ms: 0.0,
                ingestion_delay: self.monitoring_delay.map(proto_duration),
            }),
            prometheus: self
                .prometheus
                .as_ref()
                .map(|url| proto::PrometheusAnalysis {
                    url: url.clone(),
                    queries,
                }),
            on_inconclusive: match self.on_inconclusive {
                None => proto::InconclusivePolicy::Unspecified,
                Some(InconclusiveArg::Extend) => proto::InconclusivePolicy::Extend,
                Some(InconclusiveArg::Pass) => proto::InconclusivePolicy::Pass,
                Some(InconclusiveArg::Abort) => proto::InconclusivePolicy::Abort,
            }
            .into(),
            max_extension: self.max_extension.map(proto_duration),
        };
        Ok(Some((steps.clone(), Some(analysis))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_as_the_issue_writes_them() {
        let Steps(s) = parse_steps("5:2m,25:5m,50:5m,100").expect("steps");
        let got: Vec<(u32, i64)> = s
            .iter()
            .map(|s| (s.percent, s.bake.as_ref().map_or(0, |d| d.seconds)))
            .collect();
        assert_eq!(got, [(5, 120), (25, 300), (50, 300), (100, 0)]);
        assert!(parse_steps("5:2x").is_err());
        assert!(parse_steps("five:2m").is_err());
    }

    #[test]
    fn promql_conditions_split_at_the_last_comparison() {
        let q = parse_promql("errors=sum(rate(e[$window])) / sum(rate(r[$window])) <= 0.05")
            .expect("query");
        assert_eq!(q.name, "errors");
        assert_eq!(q.query, "sum(rate(e[$window])) / sum(rate(r[$window]))");
        assert_eq!(q.comparison, i32::from(proto::Comparison::LessOrEqual));
        assert_eq!(q.threshold, 0.05);
        let q = parse_promql("up=min(up{job=\"app\"} > 0) > 0.5").expect("query");
        assert_eq!(q.query, "min(up{job=\"app\"} > 0)");
        assert_eq!(q.comparison, i32::from(proto::Comparison::Greater));
        assert!(parse_promql("x=sum(y)").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("2 weeks").is_err());
    }
}
