//! Delivery performance (the four DORA keys) of one service, computed from
//! its deployment history: first-party facts (the commit deployed, the
//! verified success, the rollback), not incidents joined to deploys by
//! guesswork. Pure functions over [`Delivery`] facts; the [`Manager`]
//! reads them from the store.
//!
//! [`Manager`]: super::Manager

use std::time::{Duration, SystemTime};

use super::store::{Record, State};
use crate::pipeline::model::RolloutMode;
use crate::pipeline::Deployment;

/// What one ended deployment means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Verified and serving all traffic.
    Success,
    /// Failed after it reached users (traffic moved to it, all or a
    /// canary's share), or was rolled back.
    ChangeFailure,
    /// Failed before any user saw it (preflight, build, a verify-first
    /// candidate that never got traffic): no change reached production.
    NotDelivered,
    /// Cancelled by its caller: neither a success nor a failure.
    Cancelled,
}

/// One ended deployment, as the four keys see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub ended: SystemTime,
    pub kind: Kind,
    /// Committer time of the commit deployed, when the source was a git
    /// repository or checkout.
    pub commit_time: Option<SystemTime>,
}

impl Delivery {
    /// `None` while the deployment runs, or when its progress cannot be
    /// read (nothing says whether it reached users).
    pub fn of(record: &Record) -> Option<Delivery> {
        let ended = record.ended?;
        let kind = kind(record.state, record.progress.as_ref())?;
        let commit_time = record
            .progress
            .as_ref()
            .and_then(|d| d.source_commit_time)
            .or_else(|| record.outcome.as_ref().and_then(|o| o.source_commit_time))
            .map(unix);
        Some(Delivery {
            id: record.id.clone(),
            ended,
            kind,
            commit_time,
        })
    }

    /// Commit to verified success; `None` for anything but a success with
    /// a known commit time (or a commit dated after its deploy: a skewed
    /// committer clock).
    pub fn lead_time(&self) -> Option<Duration> {
        match self.kind {
            Kind::Success => self.ended.duration_since(self.commit_time?).ok(),
            _ => None,
        }
    }
}

/// What a deployment that ended in `state` means for delivery; `None`
/// while it runs, or for a failure whose progress cannot be read.
pub fn kind(state: State, progress: Option<&Deployment>) -> Option<Kind> {
    Some(match state {
        State::Running => return None,
        State::Succeeded => Kind::Success,
        State::Cancelled => Kind::Cancelled,
        State::Failed => match progress {
            Some(d) if reached_users(d) => Kind::ChangeFailure,
            Some(_) => Kind::NotDelivered,
            None => return None,
        },
    })
}

pub fn unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64)
}

/// Whether users were sent to the new revision: the Cloud Run change was
/// sent in a mode that gives it traffic at once (direct, canary), or it
/// had to be rolled back. A verify-first candidate that failed had no
/// traffic.
pub fn reached_users(d: &Deployment) -> bool {
    let traffic_at_once = !matches!(d.effective_rollout, RolloutMode::VerifyBeforeTraffic);
    d.rolled_back || d.rollback_started || (d.rollout_sent && traffic_at_once)
}

/// The DORA performance bands (State of DevOps 2023), best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Band {
    Elite,
    High,
    Medium,
    Low,
}

impl Band {
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Elite => "elite",
            Band::High => "high",
            Band::Medium => "medium",
            Band::Low => "low",
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const MONTH: Duration = Duration::from_secs(30 * 86_400);

/// Elite: at least daily (on demand); high: at least weekly; medium: at
/// least monthly; low: less often.
pub fn frequency_band(per_day: f64) -> Band {
    match per_day {
        f if f >= 1.0 => Band::Elite,
        f if f >= 1.0 / 7.0 => Band::High,
        f if f >= 1.0 / 30.0 => Band::Medium,
        _ => Band::Low,
    }
}

/// Elite: under a day; high: under a week; medium: under a month.
pub fn lead_time_band(median: Duration) -> Band {
    match median {
        m if m < DAY => Band::Elite,
        m if m < WEEK => Band::High,
        m if m < MONTH => Band::Medium,
        _ => Band::Low,
    }
}

/// Elite: at most 5%; high: 10%; medium: 15%; low: more.
pub fn change_failure_band(rate: f64) -> Band {
    match rate {
        r if r <= 0.05 => Band::Elite,
        r if r <= 0.10 => Band::High,
        r if r <= 0.15 => Band::Medium,
        _ => Band::Low,
    }
}

/// Elite: under an hour; high: under a day; medium: under a week.
pub fn restore_band(median: Duration) -> Band {
    match median {
        m if m < HOUR => Band::Elite,
        m if m < DAY => Band::High,
        m if m < WEEK => Band::Medium,
        _ => Band::Low,
    }
}

/// The four keys of one service over `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryMetrics {
    pub start: SystemTime,
    pub end: SystemTime,
    /// Verified successes that ended in the window.
    pub successes: u32,
    /// Successes per day of the window.
    pub deployments_per_day: f64,
    pub frequency_band: Band,
    /// Lead times of the successes whose commit time is known.
    pub lead_time_samples: u32,
    pub lead_time_median: Option<Duration>,
    pub lead_time_band: Option<Band>,
    /// Deployments that reached users and failed or were rolled back.
    pub change_failures: u32,
    /// `change_failures / (successes + change_failures)`; `None` when
    /// nothing reached users.
    pub change_failure_rate: Option<f64>,
    pub change_failure_band: Option<Band>,
    /// Restores that ended in the window: from the first change failure
    /// after a success to the next verified success.
    pub restores: u32,
    pub time_to_restore_median: Option<Duration>,
    pub restore_band: Option<Band>,
    /// The service has been failing since then, with no success yet.
    pub failing_since: Option<SystemTime>,
}

/// The four keys from `history` (any order; deployments that ended before
/// `start` only tell whether the service was failing when it began).
pub fn compute(history: &[Delivery], start: SystemTime, end: SystemTime) -> DeliveryMetrics {
    let mut sorted: Vec<&Delivery> = history.iter().filter(|d| d.ended < end).collect();
    sorted.sort_by_key(|d| d.ended);
    let in_window = |d: &Delivery| d.ended >= start;

    let mut successes = 0u32;
    let mut change_failures = 0u32;
    let mut lead_times = vec![];
    let mut restores = vec![];
    let mut failing_since: Option<SystemTime> = None;
    for d in sorted {
        match d.kind {
            Kind::Success => {
                if let Some(since) = failing_since.take() {
                    if in_window(d) {
                        restores.push(d.ended.duration_since(since).unwrap_or_default());
                    }
                }
                if in_window(d) {
                    successes += 1;
                    lead_times.extend(d.lead_time());
                }
            }
            Kind::ChangeFailure => {
                failing_since.get_or_insert(d.ended);
                if in_window(d) {
                    change_failures += 1;
                }
            }
            Kind::NotDelivered | Kind::Cancelled => {}
        }
    }
    let days = end.duration_since(start).unwrap_or_default().as_secs_f64() / 86_400.0;
    let deployments_per_day = if days > 0.0 {
        f64::from(successes) / days
    } else {
        0.0
    };
    let delivered = successes + change_failures;
    let change_failure_rate =
        (delivered > 0).then(|| f64::from(change_failures) / f64::from(delivered));
    let lead_time_median = median(&mut lead_times);
    let time_to_restore_median = median(&mut restores);
    DeliveryMetrics {
        start,
        end,
        successes,
        deployments_per_day,
        frequency_band: frequency_band(deployments_per_day),
        lead_time_samples: lead_times.len() as u32,
        lead_time_median,
        lead_time_band: lead_time_median.map(lead_time_band),
        change_failures,
        change_failure_rate,
        change_failure_band: change_failure_rate.map(change_failure_band),
        restores: restores.len() as u32,
        time_to_restore_median,
        restore_band: time_to_restore_median.map(restore_band),
        failing_since,
    }
}

/// The median; of an even count, the mean of the middle two.
fn median(values: &mut [Duration]) -> Option<Duration> {
    values.sort();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// The time `success` restored its service: from the first change failure
/// since the success before it. `previous` holds the deployments before
/// `success`, newest first, as far back as the last success.
pub fn restored_by(success: &Delivery, previous: &[Delivery]) -> Option<Duration> {
    if success.kind != Kind::Success {
        return None;
    }
    let first_failure = previous
        .iter()
        .take_while(|d| d.kind != Kind::Success)
        .filter(|d| d.kind == Kind::ChangeFailure)
        .map(|d| d.ended)
        .min()?;
    success.ended.duration_since(first_failure).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(hours: f64) -> SystemTime {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        let d = Duration::from_secs_f64(hours.abs() * 3600.0);
        if hours < 0.0 {
            t0 - d
        } else {
            t0 + d
        }
    }

    fn d(id: &str, hours: f64, kind: Kind, commit_hours: Option<f64>) -> Delivery {
        Delivery {
            id: id.into(),
            ended: at(hours),
            kind,
            commit_time: commit_hours.map(at),
        }
    }

    /// A scripted month of one service: every key checked by hand.
    fn history() -> Vec<Delivery> {
        use Kind::*;
        vec![
            // Before the window: a failure left the service broken.
            d("old-ok", -50.0, Success, Some(-52.0)),
            d("old-bad", -10.0, ChangeFailure, Some(-11.0)),
            // In the window [0 h, 240 h).
            d("s1", 2.0, Success, Some(0.0)), // restores old-bad: 12 h; lead 2 h
            d("build-broke", 5.0, NotDelivered, Some(4.0)),
            d("s2", 20.0, Success, Some(14.0)), // lead 6 h
            d("rolled-back", 30.0, ChangeFailure, Some(29.0)),
            d("also-bad", 31.0, ChangeFailure, None),
            d("cancelled", 32.0, Cancelled, None),
            d("s3", 34.0, Success, None), // restores 30 h: 4 h; no commit time
            d("s4", 100.0, Success, Some(76.0)), // lead 24 h
            d("canary-aborted", 200.0, ChangeFailure, Some(199.0)),
            // After the window: not counted.
            d("later", 250.0, Success, Some(249.0)),
        ]
    }

    #[test]
    fn the_four_keys_of_a_scripted_history() {
        let m = compute(&history(), at(0.0), at(240.0));
        assert_eq!(m.successes, 4);
        assert!((m.deployments_per_day - 0.4).abs() < 1e-9, "{m:?}");
        assert_eq!(m.frequency_band, Band::High);
        // 2 h, 6 h, 24 h (s3 has no commit time).
        assert_eq!(m.lead_time_samples, 3);
        assert_eq!(m.lead_time_median, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(m.lead_time_band, Some(Band::Elite));
        // 3 change failures of 7 deploys that reached users; the build
        // failure and the cancellation count for neither side.
        assert_eq!(m.change_failures, 3);
        assert_eq!(m.change_failure_rate, Some(3.0 / 7.0));
        assert_eq!(m.change_failure_band, Some(Band::Low));
        // 12 h (from before the window) and 4 h (from the first of two).
        assert_eq!(m.restores, 2);
        assert_eq!(
            m.time_to_restore_median,
            Some(Duration::from_secs(8 * 3600))
        );
        assert_eq!(m.restore_band, Some(Band::High));
        assert_eq!(m.failing_since, Some(at(200.0)));
    }

    #[test]
    fn an_empty_history_has_no_rates_and_the_lowest_frequency() {
        let m = compute(&[], at(0.0), at(24.0));
        assert_eq!(m.successes, 0);
        assert_eq!(m.frequency_band, Band::Low);
        assert_eq!(m.change_failure_rate, None);
        assert_eq!(m.lead_time_median, None);
        assert_eq!(m.time_to_restore_median, None);
        assert_eq!(m.failing_since, None);
    }

    #[test]
    fn a_success_restores_from_the_first_failure_since_the_last_success() {
        let h = history();
        let newest_first = |upto: &str| -> Vec<Delivery> {
            let i = h.iter().position(|d| d.id == upto).expect("id");
            h[..i].iter().rev().cloned().collect()
        };
        let s3 = h.iter().find(|d| d.id == "s3").expect("s3");
        assert_eq!(
            restored_by(s3, &newest_first("s3")),
            Some(Duration::from_secs(4 * 3600))
        );
        let s2 = h.iter().find(|d| d.id == "s2").expect("s2");
        assert_eq!(
            restored_by(s2, &newest_first("s2")),
            None,
            "nothing was broken"
        );
        let s1 = h.iter().find(|d| d.id == "s1").expect("s1");
        assert_eq!(
            restored_by(s1, &newest_first("s1")),
            Some(Duration::from_secs(12 * 3600))
        );
    }

    #[test]
    fn bands_follow_the_dora_thresholds() {
        assert_eq!(frequency_band(3.0), Band::Elite);
        assert_eq!(frequency_band(1.0 / 7.0), Band::High);
        assert_eq!(frequency_band(0.05), Band::Medium);
        assert_eq!(frequency_band(0.01), Band::Low);
        assert_eq!(lead_time_band(Duration::from_secs(3600)), Band::Elite);
        assert_eq!(lead_time_band(DAY), Band::High);
        assert_eq!(lead_time_band(WEEK), Band::Medium);
        assert_eq!(lead_time_band(MONTH), Band::Low);
        assert_eq!(change_failure_band(0.05), Band::Elite);
        assert_eq!(change_failure_band(0.08), Band::High);
        assert_eq!(change_failure_band(0.15), Band::Medium);
        assert_eq!(change_failure_band(0.2), Band::Low);
        assert_eq!(restore_band(Duration::from_secs(59 * 60)), Band::Elite);
        assert_eq!(restore_band(HOUR), Band::High);
        assert_eq!(restore_band(DAY), Band::Medium);
        assert_eq!(restore_band(WEEK), Band::Low);
    }

    #[test]
    fn lead_time_needs_a_success_and_a_commit_not_from_the_future() {
        assert_eq!(
            d("x", 1.0, Kind::ChangeFailure, Some(0.0)).lead_time(),
            None
        );
        assert_eq!(d("x", 1.0, Kind::Success, Some(2.0)).lead_time(), None);
        assert_eq!(
            d("x", 1.0, Kind::Success, Some(0.5)).lead_time(),
            Some(Duration::from_secs(1800))
        );
    }
}
