//! Cloud Monitoring's `projects.timeSeries.list` for Cloud Run's request
//! metrics, computed from the requests the sandbox's services served:
//! `run.googleapis.com/request_count` (DELTA, INT64, by response code and
//! class) and `run.googleapis.com/request_latencies` (DELTA, DISTRIBUTION in
//! ms). The filter language is the part deployd and gcloud use: `key =
//! "value"` terms joined by AND. Data is visible at once (Google's lags up
//! to three minutes).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::response::Response;
use serde_json::{json, Value};

use super::routes::{error, ok};
use super::world::{Served, World};

const REQUEST_COUNT: &str = "run.googleapis.com/request_count";
const REQUEST_LATENCIES: &str = "run.googleapis.com/request_latencies";

/// The latency buckets: exponential, 1 ms growing by 1.4 (64 finite).
const SCALE_MS: f64 = 1.0;
const GROWTH: f64 = 1.4;
const FINITE_BUCKETS: usize = 64;

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn filter_terms(filter: &str) -> Result<BTreeMap<String, String>, String> {
    let mut terms = BTreeMap::new();
    for term in filter
        .split(" AND ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (k, v) = term
            .split_once('=')
            .ok_or_else(|| format!("unsupported filter term: {term}"))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("the value of {} must be quoted", k.trim()))?;
        let k = k.trim();
        let known = matches!(
            k,
            "metric.type"
                | "resource.type"
                | "resource.labels.project_id"
                | "resource.labels.service_name"
                | "resource.labels.revision_name"
                | "resource.labels.location"
                | "resource.labels.configuration_name"
                | "metric.labels.response_code_class"
                | "metric.labels.response_code"
        );
        if !known {
            return Err(format!("the sandbox does not filter on {k}"));
        }
        terms.insert(k.to_string(), v.to_string());
    }
    Ok(terms)
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<SystemTime>, String> {
    let Some(v) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(SystemTime::from(t)))
        .map_err(|_| format!("Field {field} had an invalid value of \"{v}\": not an RFC 3339 time"))
}

fn parse_seconds(v: &str) -> Option<Duration> {
    let n: f64 = v.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(n).ok()
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn class(status: u16) -> String {
    format!("{}xx", status / 100)
}

fn bucket(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1e3;
    if ms < SCALE_MS {
        return 0;
    }
    let i = ((ms / SCALE_MS).ln() / GROWTH.ln()).floor() as usize + 1;
    i.min(FINITE_BUCKETS + 1)
}

fn distribution(samples: &[&Served]) -> Value {
    let n = samples.len() as f64;
    let ms: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .collect();
    let mean = if samples.is_empty() {
        0.0
    } else {
        ms.iter().sum::<f64>() / n
    };
    let ssd: f64 = ms.iter().map(|v| (v - mean).powi(2)).sum();
    let mut counts = vec![0u64; FINITE_BUCKETS + 2];
    for s in samples {
        counts[bucket(s.latency)] += 1;
    }
    // The API leaves out trailing empty buckets.
    while counts.last() == Some(&0) {
        counts.pop();
    }
    json!({
        "count": samples.len().to_string(),
        "mean": mean,
        "sumOfSquaredDeviation": ssd,
        "bucketOptions": {"exponentialBuckets": {
            "numFiniteBuckets": FINITE_BUCKETS, "growthFactor": GROWTH, "scale": SCALE_MS}},
        "bucketCounts": counts.iter().map(u64::to_string).collect::<Vec<_>>(),
    })
}

/// `GET /v3/projects/{p}/timeSeries`.
pub fn time_series(w: &World, project: &str, q: &[(String, String)]) -> Response {
    match list(w, project, q) {
        Ok(v) => ok(v),
        Err(message) => error(400, "INVALID_ARGUMENT", &message),
    }
}

fn list(w: &World, project: &str, q: &[(String, String)]) -> Result<Value, String> {
    let filter = param(q, "filter")
        .filter(|f| !f.trim().is_empty())
        .ok_or("Field filter had an invalid value of \"\": a filter is required")?;
    let terms = filter_terms(filter)?;
    let metric = terms
        .get("metric.type")
        .ok_or("the filter must name a metric.type")?
        .clone();
    let end = parse_time("interval.endTime", param(q, "interval.endTime"))?
        .ok_or("Field interval.endTime had an invalid value of \"\": it is required")?;
    let start = parse_time("interval.startTime", param(q, "interval.startTime"))?.unwrap_or(end);
    if start > end {
        return Err("The start time must be before the end time.".into());
    }
    let aligner = param(q, "aggregation.perSeriesAligner").unwrap_or("ALIGN_NONE");
    let reducer = param(q, "aggregation.crossSeriesReducer").unwrap_or("REDUCE_NONE");
    let period = match param(q, "aggregation.alignmentPeriod") {
        Some(p) => Some(parse_seconds(p).ok_or_else(|| {
            format!("Field aggregation.alignmentPeriod had an invalid value of \"{p}\"")
        })?),
        None => None,
    };
    if aligner != "ALIGN_NONE" {
        match period {
            Some(p) if p >= Duration::from_secs(60) => {}
            _ => {
                return Err(
                    "The alignment period must be at least 60 seconds when a per-series aligner is set."
                        .into(),
                )
            }
        }
        if !matches!(aligner, "ALIGN_DELTA" | "ALIGN_SUM") {
            return Err(format!("the sandbox does not align with {aligner}"));
        }
    }
    if !matches!(reducer, "REDUCE_NONE" | "REDUCE_SUM") {
        return Err(format!("the sandbox does not reduce with {reducer}"));
    }
    if reducer != "REDUCE_NONE" && aligner == "ALIGN_NONE" {
        return Err("A cross-series reducer needs a per-series aligner.".into());
    }
    let group_by: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "aggregation.groupByFields")
        .map(|(_, v)| v.as_str())
        .collect();
    if metric != REQUEST_COUNT && metric != REQUEST_LATENCIES {
        return Ok(json!({}));
    }
    if terms
        .get("resource.type")
        .is_some_and(|t| t != "cloud_run_revision")
    {
        return Ok(json!({}));
    }
    let label = |s: &Served, key: &str| -> String {
        match key {
            "resource.labels.project_id" => s.project.clone(),
            "resource.labels.service_name" | "resource.labels.configuration_name" => {
                s.service.clone()
            }
            "resource.labels.revision_name" => s.revision.clone(),
            "resource.labels.location" => s.location.clone(),
            "metric.labels.response_code_class" => class(s.status),
            "metric.labels.response_code" => s.status.to_string(),
            _ => String::new(),
        }
    };
    let matching: Vec<&Served> = w
        .served
        .iter()
        .filter(|s| s.project == project && s.at > start && s.at <= end)
        .filter(|s| {
            terms
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("resource.labels.") || k.starts_with("metric.labels.")
                })
                .all(|(k, v)| &label(s, k) == v)
        })
        .collect();
    // Series: by every label without a reducer, by the grouped fields with.
    let keys: Vec<&str> = if reducer == "REDUCE_NONE" {
        vec![
            "resource.labels.service_name",
            "resource.labels.revision_name",
            "resource.labels.location",
            "metric.labels.response_code",
            "metric.labels.response_code_class",
        ]
    } else {
        group_by.clone()
    };
    let mut series: BTreeMap<Vec<String>, Vec<&Served>> = BTreeMap::new();
    for s in &matching {
        let k = keys.iter().map(|k| label(s, k)).collect();
        series.entry(k).or_default().push(s);
    }
    let period = period.unwrap_or_else(|| end.duration_since(start).unwrap_or_default());
    let out: Vec<Value> = series
        .into_iter()
        .map(|(values, samples)| {
            let mut metric_labels = serde_json::Map::new();
            let mut resource_labels = serde_json::Map::new();
            resource_labels.insert("project_id".into(), json!(project));
            for (k, v) in keys.iter().zip(&values) {
                if let Some(m) = k.strip_prefix("metric.labels.") {
                    metric_labels.insert(m.into(), json!(v));
                } else if let Some(r) = k.strip_prefix("resource.labels.") {
                    resource_labels.insert(r.into(), json!(v));
                }
            }
            // Points newest first, one per alignment period back from the end.
            let mut points = vec![];
            let mut hi = end;
            loop {
                let lo = hi
                    .checked_sub(period)
                    .filter(|l| *l > start)
                    .unwrap_or(start);
                let inside: Vec<&Served> = samples
                    .iter()
                    .copied()
                    .filter(|s| s.at > lo && s.at <= hi)
                    .collect();
                if !inside.is_empty() {
                    let value = if metric == REQUEST_COUNT {
                        json!({"int64Value": inside.len().to_string()})
                    } else {
                        json!({"distributionValue": distribution(&inside)})
                    };
                    points.push(json!({
                        "interval": {"startTime": rfc3339(lo), "endTime": rfc3339(hi)},
                        "value": value,
                    }));
                }
                if lo <= start || period.is_zero() {
                    break;
                }
                hi = lo;
            }
            let (value_type, unit) = if metric == REQUEST_COUNT {
                ("INT64", "1")
            } else {
                ("DISTRIBUTION", "ms")
            };
            json!({
                "metric": {"type": metric, "labels": metric_labels},
                "resource": {"type": "cloud_run_revision", "labels": resource_labels},
                "metricKind": "DELTA",
                "valueType": value_type,
                "points": points,
                "unit": unit,
            })
        })
        .collect();
    if out.is_empty() {
        // Proto3 JSON leaves out an empty list.
        return Ok(json!({"unit": if metric == REQUEST_COUNT { "1" } else { "ms" }}));
    }
    Ok(json!({"timeSeries": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_exponential_buckets() {
        assert_eq!(bucket(Duration::from_micros(500)), 0);
        assert_eq!(bucket(Duration::from_millis(1)), 1);
        // 1.4^2 = 1.96 ms <= 2 ms < 1.4^3 = 2.744 ms: bucket 3.
        assert_eq!(bucket(Duration::from_millis(2)), 3);
        assert_eq!(bucket(Duration::from_secs(10_000_000)), FINITE_BUCKETS + 1);
    }
}
