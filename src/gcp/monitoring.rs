//! Cloud Monitoring v3: the request counts and latencies Cloud Run records
//! for each revision (`projects.timeSeries.list`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde::Deserialize;

use super::error::GcpError;
use super::http::{segment, Transport};
use crate::pipeline::cloud::RevisionRequests;
use crate::pipeline::model::Target;

pub const REQUEST_COUNT: &str = "run.googleapis.com/request_count";
pub const REQUEST_LATENCIES: &str = "run.googleapis.com/request_latencies";

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    #[serde(default)]
    time_series: Vec<TimeSeries>,
    #[serde(default)]
    next_page_token: String,
}

#[derive(Debug, Deserialize)]
struct TimeSeries {
    #[serde(default)]
    metric: Metric,
    #[serde(default)]
    points: Vec<Point>,
}

#[derive(Debug, Deserialize, Default)]
struct Metric {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Point {
    value: TypedValue,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedValue {
    /// int64 travels as a JSON string.
    int64_value: Option<String>,
    distribution_value: Option<Distribution>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Distribution {
    #[serde(default)]
    bucket_options: BucketOptions,
    #[serde(default)]
    bucket_counts: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BucketOptions {
    exponential_buckets: Option<Exponential>,
    linear_buckets: Option<Linear>,
    explicit_buckets: Option<Explicit>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Exponential {
    num_finite_buckets: u32,
    growth_factor: f64,
    scale: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Linear {
    num_finite_buckets: u32,
    width: f64,
    offset: f64,
}

#[derive(Debug, Deserialize)]
struct Explicit {
    #[serde(default)]
    bounds: Vec<f64>,
}

impl BucketOptions {
    /// Upper bounds of the buckets: Monitoring's bucket 0 is the underflow
    /// below the first bound, the last the overflow above the last one.
    fn bounds(&self) -> Vec<f64> {
        const MAX_BUCKETS: u32 = 10_000;
        if let Some(e) = &self.exponential_buckets {
            (0..=e.num_finite_buckets.min(MAX_BUCKETS))
                .map(|i| e.scale * e.growth_factor.powi(i as i32))
                .collect()
        } else if let Some(l) = &self.linear_buckets {
            (0..=l.num_finite_buckets.min(MAX_BUCKETS))
                .map(|i| l.offset + l.width * f64::from(i))
                .collect()
        } else if let Some(x) = &self.explicit_buckets {
            x.bounds.clone()
        } else {
            vec![]
        }
    }
}

/// The revision's filter: Cloud Run's monitored resource, by its labels.
pub fn revision_filter(metric: &str, target: &Target, revision: &str) -> String {
    // The values are validated names ([a-z0-9-]); quoted all the same.
    let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "metric.type = \"{metric}\" AND resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"{}\" AND resource.labels.revision_name = \"{}\" AND resource.labels.location = \"{}\"",
        q(&target.service),
        q(revision),
        q(&target.region)
    )
}

/// The window's start rounded up to the millisecond the API's times carry,
/// so nothing from before the window (the health gate's probes, a moment
/// earlier) falls into it.
fn rfc3339_ceil(t: SystemTime) -> String {
    let sub_ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1_000_000)
        .unwrap_or(0);
    let up = if sub_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(u64::from(1_000_000 - sub_ms))
    };
    rfc3339(t + up)
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One alignment period covering the whole window (Monitoring wants 60 s
/// at least), so each series comes back as one delta.
pub fn alignment_period(start: SystemTime, end: SystemTime) -> String {
    let secs = end
        .duration_since(start)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
        .ceil() as u64;
    format!("{}s", secs.max(60))
}

async fn list(
    t: &Transport,
    project: &str,
    params: &[(&str, String)],
) -> Result<Vec<TimeSeries>, GcpError> {
    let url = format!(
        "{}/v3/projects/{}/timeSeries",
        t.endpoints.monitoring,
        segment(project)
    );
    let mut out = vec![];
    let mut token = String::new();
    // A revision's series fit one page; the bound only stops a server
    // that keeps handing out tokens.
    for _ in 0..20 {
        let mut q: Vec<(&str, String)> = params.to_vec();
        if !token.is_empty() {
            q.push(("pageToken", token.clone()));
        }
        let r: ListResponse = t
            .json(
                "monitoring.projects.timeSeries.list",
                t.request(Method::GET, url.clone()).query(&q),
            )
            .await?;
        out.extend(r.time_series);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    Ok(out)
}

/// Request counts by response class and the latency histogram of
/// `revision` between `start` and `end`.
pub async fn revision_requests(
    t: &Transport,
    target: &Target,
    revision: &str,
    start: SystemTime,
    end: SystemTime,
) -> Result<RevisionRequests, GcpError> {
    let window = [
        ("interval.startTime", rfc3339_ceil(start)),
        ("interval.endTime", rfc3339(end)),
        ("aggregation.alignmentPeriod", alignment_period(start, end)),
        ("aggregation.perSeriesAligner", "ALIGN_DELTA".to_string()),
        ("aggregation.crossSeriesReducer", "REDUCE_SUM".to_string()),
    ];
    let mut counts = vec![("filter", revision_filter(REQUEST_COUNT, target, revision))];
    counts.extend(window.iter().cloned());
    counts.push((
        "aggregation.groupByFields",
        "metric.labels.response_code_class".to_string(),
    ));
    let mut out = RevisionRequests::default();
    for s in list(t, &target.project, &counts).await? {
        let class = s
            .metric
            .labels
            .get("response_code_class")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let n: u64 = s
            .points
            .iter()
            .filter_map(|p| p.value.int64_value.as_deref()?.parse::<u64>().ok())
            .sum();
        *out.by_class.entry(class).or_default() += n;
    }
    let mut latencies = vec![(
        "filter",
        revision_filter(REQUEST_LATENCIES, target, revision),
    )];
    latencies.extend(window.iter().cloned());
    for s in list(t, &target.project, &latencies).await? {
        for p in s.points {
            let Some(d) = p.value.distribution_value else {
                continue;
            };
            if out.latency_bounds_ms.is_empty() {
                out.latency_bounds_ms = d.bucket_options.bounds();
            }
            let counts: Vec<u64> = d
                .bucket_counts
                .iter()
                .map(|c| c.parse().unwrap_or(0))
                .collect();
            if out.latency_counts.len() < counts.len() {
                out.latency_counts.resize(counts.len(), 0);
            }
            for (i, c) in counts.into_iter().enumerate() {
                out.latency_counts[i] += c;
            }
        }
    }
    Ok(out)
}
