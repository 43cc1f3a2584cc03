//! Exact per-instance health-check latency percentiles: HDR histograms over
//! a ring of one-minute intervals (HDR is cumulative, so a "current" p95
//! needs the ring), one ring per probe origin, rendered as a Prometheus
//! summary family appended to /metrics. It is the same measurement as
//! `deployd_health_check_duration_seconds`, whose buckets are fine enough
//! that the two agree within 10% (tests/prometheus.rs). Quantiles do not
//! aggregate across replicas; the fleet p95 comes from the buckets.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::metrics::ProbeOrigin;

/// Minutes the quantiles cover.
const WINDOW_MINUTES: u64 = 10;
pub const NAME: &str = "deployd_health_check_duration_hdr_seconds";

struct Ring {
    start: Instant,
    /// (minute index since start, histogram of that minute).
    slots: Vec<(u64, Histogram<u64>)>,
    sum: Duration,
    count: u64,
}

/// Deploy probes, then Verify RPC probes.
static RINGS: Mutex<[Option<Ring>; 2]> = Mutex::new([None, None]);

const ORIGINS: [ProbeOrigin; 2] = [ProbeOrigin::Deploy, ProbeOrigin::VerifyRpc];

fn new_histogram() -> Option<Histogram<u64>> {
    // Microseconds up to 60 s at 3 significant digits (~136 KiB).
    Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// Records one health-check latency in this instance's ring.
pub fn record(origin: ProbeOrigin, latency: Duration) {
    let mut guard = RINGS.lock().unwrap_or_else(|p| p.into_inner());
    let slot = &mut guard[ORIGINS.iter().position(|o| *o == origin).unwrap_or(0)];
    slot.get_or_insert_with(Ring::new).record(latency);
}

/// The summary family in Prometheus text format, a series set per origin
/// that has recorded; both origins at zero before any record.
pub fn render() -> String {
    let guard = RINGS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = format!(
        "# HELP {NAME} The same health-check latencies as exact percentiles of this instance over the last {WINDOW_MINUTES} minutes (HDR histogram), by origin.\n# TYPE {NAME} summary\n"
    );
    for (origin, ring) in ORIGINS.iter().zip(guard.iter()) {
        match ring {
            Some(r) => out.push_str(&r.render(origin.as_str())),
            None => out.push_str(&format!(
                "{NAME}_sum{{origin=\"{o}\"}} 0\n{NAME}_count{{origin=\"{o}\"}} 0\n",
                o = origin.as_str()
            )),
        }
    }
    out
}

impl Ring {
    fn new() -> Self {
        Ring {
            start: Instant::now(),
            slots: Vec::new(),
            sum: Duration::ZERO,
            count: 0,
        }
    }

    fn record(&mut self, latency: Duration) {
        let minute = self.start.elapsed().as_secs() / 60;
        self.slots.retain(|(m, _)| minute - m < WINDOW_MINUTES);
        if self.slots.last().is_none_or(|(m, _)| *m != minute) {
            let Some(h) = new_histogram() else { return };
            self.slots.push((minute, h));
        }
        if let Some((_, h)) = self.slots.last_mut() {
            h.saturating_record((latency.as_micros() as u64).max(1));
        }
        self.sum += latency;
        self.count += 1;
    }

    /// The series of one origin (no HELP or TYPE lines).
    fn render(&self, origin: &str) -> String {
        let Some(mut merged) = new_histogram() else {
            return String::new();
        };
        let minute = self.start.elapsed().as_secs() / 60;
        for (_, h) in self
            .slots
            .iter()
            .filter(|(m, _)| minute - m < WINDOW_MINUTES)
        {
            let _ = merged.add(h);
        }
        let mut out = String::new();
        if !merged.is_empty() {
            for q in [0.5, 0.95, 0.99] {
                let secs = merged.value_at_quantile(q) as f64 / 1e6;
                out.push_str(&format!(
                    "{NAME}{{origin=\"{origin}\",quantile=\"{q}\"}} {secs}\n"
                ));
            }
        }
        out.push_str(&format!(
            "{NAME}_sum{{origin=\"{origin}\"}} {}\n{NAME}_count{{origin=\"{origin}\"}} {}\n",
            self.sum.as_secs_f64(),
            self.count
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_summary_with_exact_quantiles() {
        // A ring of its own: the global one is shared with other tests.
        let mut ring = Ring::new();
        for ms in 1..=100 {
            ring.record(Duration::from_millis(ms));
        }
        let text = ring.render("deploy");
        let p95: f64 = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "deployd_health_check_duration_hdr_seconds{origin=\"deploy\",quantile=\"0.95\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("p95 line");
        assert!((p95 - 0.095).abs() < 0.0001, "{p95}");
        assert!(
            text.contains("deployd_health_check_duration_hdr_seconds_count{origin=\"deploy\"} 100")
        );
        assert!(render().contains("# TYPE deployd_health_check_duration_hdr_seconds summary"));
    }
}
