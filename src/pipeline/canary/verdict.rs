//! Judging a step from samples: measurements, each with its own minimum
//! sample count, and one verdict over them.
//!
//! Low traffic is the normal case for a canary at 5%, so a verdict never
//! rests on a handful of requests either way: below a measurement's
//! minimum it is inconclusive (never a pass), and an error ratio above its
//! limit fails the step only when the limit lies below the ratio's 95%
//! Wilson interval. One error in 30 requests against a 1% limit is
//! inconclusive (the step bakes longer); six in 30 is a failure at once.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// All must pass: one failure fails, else one inconclusive makes it so.
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut out = Verdict::Pass;
        for v in verdicts {
            match v {
                Verdict::Fail => return Verdict::Fail,
                Verdict::Inconclusive => out = Verdict::Inconclusive,
                Verdict::Pass => {}
            }
        }
        out
    }
}

/// One number measured over a step, the limit it was held to, and what
/// that says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// "probes", "monitoring" or "prometheus".
    pub source: String,
    pub name: String,
    pub value: f64,
    pub threshold: f64,
    pub comparison: String,
    pub samples: u64,
    pub min_samples: u64,
    pub verdict: Verdict,
    /// The stable revision's value, where the limit is relative to it.
    pub baseline: Option<f64>,
    pub detail: String,
}

impl Measurement {
    /// A measurement that could not be made (no data, a failed query).
    pub fn unavailable(source: &str, name: &str, detail: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            name: name.into(),
            value: f64::NAN,
            threshold: f64::NAN,
            comparison: String::new(),
            samples: 0,
            min_samples: 0,
            verdict: Verdict::Inconclusive,
            baseline: None,
            detail: detail.into(),
        }
    }

    /// One line for events and failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.source, self.name);
        if self.value.is_finite() {
            s.push_str(&format!(
                " {} ({} {})",
                fmt(self.value),
                self.comparison,
                fmt(self.threshold)
            ));
        }
        if let Some(b) = self.baseline {
            s.push_str(&format!(", stable {}", fmt(b)));
        }
        s.push_str(&format!(
            " over {} samples: {}",
            self.samples,
            self.verdict.as_str()
        ));
        if !self.detail.is_empty() {
            s.push_str(&format!(" ({})", self.detail));
        }
        s
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The 95% Wilson score interval of `failures` in `n`.
pub fn wilson(failures: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96_f64;
    let n_f = n as f64;
    let p = failures as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = p + z * z / (2.0 * n_f);
    let margin = z * ((p * (1.0 - p) + z * z / (4.0 * n_f)) / n_f).sqrt();
    (
        ((centre - margin) / denom).max(0.0),
        ((centre + margin) / denom).min(1.0),
    )
}

/// The share of failed answers, held to `max`.
pub fn error_ratio(source: &str, failures: u64, n: u64, min: u64, max: f64) -> Measurement {
    let value = if n == 0 {
        f64::NAN
    } else {
        failures as f64 / n as f64
    };
    let (lo, hi) = wilson(failures, n);
    let (verdict, detail) = if n < min.max(1) {
        (
            Verdict::Inconclusive,
            format!("{n} of the {} samples needed", min.max(1)),
        )
    } else if value <= max {
        (Verdict::Pass, format!("{failures} failed of {n}"))
    } else if lo > max {
        (
            Verdict::Fail,
            format!(
                "{failures} failed of {n}; 95% interval {:.2}%-{:.2}% lies above the limit",
                lo * 100.0,
                hi * 100.0
            ),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "{failures} failed of {n}: above the limit, but the 95% interval {:.2}%-{:.2}% includes it; more samples decide",
                lo * 100.0,
                hi * 100.0
            ),
        )
    };
    Measurement {
        source: source.into(),
        name: "error_ratio".into(),
        value,
        threshold: max,
        comparison: "<=".into(),
        samples: n,
        min_samples: min.max(1),
        verdict,
        baseline: None,
        detail,
    }
}

/// A latency percentile held to an absolute limit.
pub fn latency_limit(
    source: &str,
    p95_ms: Option<f64>,
    n: u64,
    min: u64,
    max_ms: f64,
) -> Measurement {
    let (verdict, detail) = match p95_ms {
        _ if n < min.max(1) => (
            Verdict::Inconclusive,
            format!("{n} of the {} samples needed", min.max(1)),
        ),
        None => (Verdict::Inconclusive, "no latency recorded".to_string()),
        Some(v) if v <= max_ms => (Verdict::Pass, String::new()),
        Some(_) => (Verdict::Fail, "slower than the limit".to_string()),
    };
    Measurement {
        source: source.into(),
        name: "p95_ms".into(),
        value: p95_ms.unwrap_or(f64::NAN),
        threshold: max_ms,
        comparison: "<=".into(),
        samples: n,
        min_samples: min.max(1),
        verdict,
        baseline: None,
        detail,
    }
}

/// The candidate's p95 against the stable revision's: at most `ratio`
/// times it, unless the two are within `slack_ms` of each other.
pub fn latency_vs_stable(
    candidate: (Option<f64>, u64),
    stable: (Option<f64>, u64),
    min: u64,
    ratio: f64,
    slack_ms: f64,
) -> Measurement {
    let min = min.max(1);
    let threshold = stable.0.map(|s| (s * ratio).max(s + slack_ms));
    let (verdict, detail) = match (candidate.0, threshold) {
        _ if candidate.1 < min || stable.1 < min => (
            Verdict::Inconclusive,
            format!(
                "{} candidate and {} stable samples of the {min} needed",
                candidate.1, stable.1
            ),
        ),
        (Some(c), Some(t)) if c <= t => (Verdict::Pass, String::new()),
        (Some(_), Some(_)) => (
            Verdict::Fail,
            format!("more than {ratio}x the stable revision's p95 and over {slack_ms} ms slower"),
        ),
        _ => (Verdict::Inconclusive, "no latency recorded".to_string()),
    };
    Measurement {
        source: "probes".into(),
        name: "p95_vs_stable".into(),
        value: candidate.0.unwrap_or(f64::NAN),
        threshold: threshold.unwrap_or(f64::NAN),
        comparison: "<=".into(),
        samples: candidate.1,
        min_samples: min,
        verdict,
        baseline: stable.0,
        detail,
    }
}

/// The `q` quantile (0-1) of a histogram: `bounds[i]` is the upper bound
/// of bucket `i` and the lower of bucket `i + 1`; bucket 0 starts at 0 and
/// the one after the last bound has no upper end. Linear within a bucket,
/// as Prometheus's `histogram_quantile`.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                bounds.get(i - 1).copied()?
            };
            let Some(upper) = bounds.get(i).copied() else {
                // The overflow bucket: its lower bound is all that is known.
                return Some(lower);
            };
            let within = (rank - seen as f64) / *c as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        seen += c;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_errors_among_few_samples_are_inconclusive_many_fail() {
        use Verdict::*;
        // (failures, samples, verdict) against a 1% limit, 10 samples needed.
        for (failures, n, want) in [
            (0, 5, Inconclusive),
            (0, 10, Pass),
            (1, 30, Inconclusive),
            (6, 30, Fail),
            // A 20% failure rate is found within 25 samples.
            (5, 25, Fail),
            (1, 1000, Pass),
        ] {
            let m = error_ratio("probes", failures, n, 10, 0.01);
            assert_eq!(m.verdict, want, "{failures} of {n}: {m:?}");
        }
    }

    #[test]
    fn wilson_matches_the_textbook() {
        // 10 of 100: 6.0%-17.4%.
        let (lo, hi) = wilson(10, 100);
        assert!((lo - 0.0552).abs() < 0.001, "{lo}");
        assert!((hi - 0.1744).abs() < 0.001, "{hi}");
    }

    #[test]
    fn latency_against_stable_allows_slack() {
        let m = latency_vs_stable((Some(3.0), 20), (Some(1.0), 20), 10, 1.2, 25.0);
        assert_eq!(m.verdict, Verdict::Pass, "{m:?}");
        let m = latency_vs_stable((Some(300.0), 20), (Some(100.0), 20), 10, 1.2, 25.0);
        assert_eq!(m.verdict, Verdict::Fail, "{m:?}");
        let m = latency_vs_stable((Some(300.0), 20), (Some(100.0), 3), 10, 1.2, 25.0);
        assert_eq!(m.verdict, Verdict::Inconclusive, "{m:?}");
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        // 100 samples: 50 in [0,10), 45 in [10,20), 5 in [20,40).
        let q = quantile(&[10.0, 20.0, 40.0], &[50, 45, 5], 0.95).unwrap();
        assert!((q - 20.0).abs() < 1e-9, "{q}");
        let q = quantile(&[10.0, 20.0, 40.0], &[50, 45, 5], 0.5).unwrap();
        assert!((q - 10.0).abs() < 1e-9, "{q}");
        assert_eq!(quantile(&[10.0], &[0, 3], 0.95), Some(10.0));
        assert_eq!(quantile(&[10.0], &[0, 0], 0.95), None);
    }

    #[test]
    fn one_failure_fails_the_lot() {
        use Verdict::*;
        assert_eq!(Verdict::combine([Pass, Inconclusive, Fail]), Fail);
        assert_eq!(Verdict::combine([Pass, Inconclusive]), Inconclusive);
        assert_eq!(Verdict::combine([Pass, Pass]), Pass);
        assert_eq!(Verdict::combine([]), Pass);
    }
}
