//! The event stream for people (stages, progress, checks, the outcome) and,
//! with `--json`, one JSON object per event for scripts: the proto's
//! canonical JSON mapping (what grpcurl prints, with default values
//! included), so a script reads deployd's and grpcurl's output alike.

use std::io::Write;

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::api::proto::{self, event::Kind};

/// The contract's descriptors, read once from the set build.rs embeds.
fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("build.rs embeds a valid descriptor set")
    })
}

/// A message of the contract in the proto's canonical JSON mapping
/// (lowerCamelCase names, enums by name, 64-bit integers as strings,
/// Timestamps and Durations as strings), with every field that has no
/// presence present even at its default, so scripts need no defaults of
/// their own. Unset messages and oneof members are left out, as the
/// mapping says.
pub fn canonical_json<M: prost::Message + prost::Name>(m: &M) -> String {
    let Some(desc) = descriptors().get_message_by_name(&M::full_name()) else {
        return "null".into();
    };
    let Ok(dynamic) = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()) else {
        return "null".into();
    };
    let options = SerializeOptions::new().skip_default_fields(false);
    // Written as it is serialized, so fields keep the proto's order.
    let mut out = Vec::new();
    let written =
        dynamic.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options);
    match (written, String::from_utf8(out)) {
        (Ok(()), Ok(text)) => text,
        _ => "null".into(),
    }
}

pub fn stage_name(s: i32) -> &'static str {
    match proto::Stage::try_from(s).unwrap_or(proto::Stage::Unspecified) {
        proto::Stage::Unspecified => "",
        proto::Stage::Source => "source",
        proto::Stage::Analyze => "analyze",
        proto::Stage::Preflight => "preflight",
        proto::Stage::Build => "build",
        proto::Stage::Deploy => "deploy",
        proto::Stage::Verify => "verify",
        proto::Stage::Rollback => "rollback",
    }
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn state_name(s: i32) -> &'static str {
    match proto::DeploymentState::try_from(s).unwrap_or(proto::DeploymentState::Unspecified) {
        proto::DeploymentState::Unspecified => "",
        proto::DeploymentState::Running => "running",
        proto::DeploymentState::Succeeded => "succeeded",
        proto::DeploymentState::Failed => "failed",
        proto::DeploymentState::Cancelled => "cancelled",
    }
}

/// One line per deployment, for `deployd list`.
pub fn deployment_row(out: &mut impl Write, d: &proto::Deployment) -> std::io::Result<()> {
    let t = d.target.clone().unwrap_or_default();
    let result = match &d.outcome {
        Some(o) if o.success => o.revision.clone(),
        Some(o) => o.error.as_ref().map(|f| f.code.clone()).unwrap_or_default(),
        None => String::new(),
    };
    writeln!(
        out,
        "{:<36}  {:<9}  {:<9}  {:<40}  {:<24}  {}",
        d.id,
        state_name(d.state),
        stage_name(d.stage),
        format!("{}/{}/{}", t.project, t.region, t.service),
        rfc3339(d.create_time.as_ref()),
        result
    )
}

/// A deployment in full, for `deployd status`.
pub fn deployment(out: &mut impl Write, d: &proto::Deployment) -> std::io::Result<()> {
    let t = d.target.clone().unwrap_or_default();
    writeln!(out, "deployment {}", d.id)?;
    writeln!(
        out,
        "  service   {} in {}/{}",
        t.service, t.project, t.region
    )?;
    writeln!(
        out,
        "  state     {} (stage {})",
        state_name(d.state),
        stage_name(d.stage)
    )?;
    writeln!(
        out,
        "  created   {} by {}",
        rfc3339(d.create_time.as_ref()),
        d.caller
    )?;
    writeln!(out, "  updated   {}", rfc3339(d.update_time.as_ref()))?;
    if d.end_time.is_some() {
        writeln!(out, "  ended     {}", rfc3339(d.end_time.as_ref()))?;
    }
    if !d.owner.is_empty() {
        writeln!(out, "  running on {}", d.owner)?;
    }
    if !d.request_id.is_empty() {
        writeln!(out, "  request   {}", d.request_id)?;
    }
    if d.resumed > 0 {
        writeln!(
            out,
            "  resumed   {} time(s) after its daemon stopped",
            d.resumed
        )?;
    }
    if d.cancel_requested {
        writeln!(out, "  cancel requested")?;
    }
    if let Some(o) = &d.outcome {
        human(
            out,
            &proto::Event {
                deployment_id: d.id.clone(),
                kind: Some(Kind::Outcome(o.clone())),
                ..Default::default()
            },
        )?;
    } else {
        writeln!(out, "  follow it: deployd watch {}", d.id)?;
    }
    Ok(())
}

fn verdict_name(v: i32) -> &'static str {
    match proto::Verdict::try_from(v) {
        Ok(proto::Verdict::Pass) => "pass",
        Ok(proto::Verdict::Fail) => "fail",
        Ok(proto::Verdict::Inconclusive) => "inconclusive",
        _ => "unspecified",
    }
}

fn canary_human(out: &mut impl Write, c: &proto::CanaryStepResult) -> std::io::Result<()> {
    let baked = c
        .baked
        .as_ref()
        .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or(0.0);
    writeln!(
        out,
        "    canary step {}/{} at {}%: {} after {:.1}s -> {}",
        c.step,
        c.steps,
        c.percent,
        verdict_name(c.verdict).to_uppercase(),
        baked,
        c.action
    )?;
    for m in &c.measurements {
        let mut line = format!(
            "      [{}] {} {}",
            verdict_name(m.verdict),
            m.source,
            m.name
        );
        if !m.comparison.is_empty() && m.samples > 0 {
            line.push_str(&format!(
                " {:.4} {} {:.4}",
                m.value, m.comparison, m.threshold
            ));
        }
        if m.baseline != 0.0 {
            line.push_str(&format!(" (stable {:.4})", m.baseline));
        }
        line.push_str(&format!(", {} samples", m.samples));
        if !m.detail.is_empty() {
            line.push_str(&format!(": {}", m.detail));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// How much of a run a person sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Without build log lines.
    Quiet,
    Normal,
    /// Every line with its event's time.
    Verbose,
}

/// Writes one event for a person, at `detail`.
pub fn human_at(out: &mut impl Write, e: &proto::Event, detail: Detail) -> std::io::Result<()> {
    match detail {
        Detail::Quiet if matches!(e.kind, Some(Kind::Log(_))) => Ok(()),
        Detail::Verbose => {
            let mut text = Vec::new();
            human(&mut text, e)?;
            let time = rfc3339(e.time.as_ref());
            for line in String::from_utf8_lossy(&text).lines() {
                if line.is_empty() {
                    writeln!(out)?;
                } else {
                    writeln!(out, "{time} {line}")?;
                }
            }
            Ok(())
        }
        _ => human(out, e),
    }
}

/// Writes one event for a person.
pub fn human(out: &mut impl Write, e: &proto::Event) -> std::io::Result<()> {
    let stage = stage_name(e.stage);
    match &e.kind {
        Some(Kind::StageStarted(_)) => writeln!(out, "==> {stage}"),
        Some(Kind::StageFinished(f)) => {
            let mark = if f.ok { "ok" } else { "FAILED" };
            writeln!(out, "    {stage} {mark} ({:.1}s)", f.duration_ms / 1000.0)
        }
        Some(Kind::Progress(p)) => writeln!(out, "    {}", p.message),
        Some(Kind::Log(l)) => writeln!(out, "    | {}", l.line),
        Some(Kind::Check(c)) => {
            let mark = match (c.ok, c.inconclusive) {
                _ if c.skipped => "skip",
                (true, _) => "pass",
                (false, true) => "????",
                (false, false) => "FAIL",
            };
            writeln!(out, "    [{mark}] {}: {}", c.name, c.detail)?;
            for r in &c.remediation {
                writeln!(out, "           -> {r}")?;
            }
            Ok(())
        }
        Some(Kind::Probe(p)) => {
            if p.healthy {
                writeln!(
                    out,
                    "    probe {}: {} in {:.1} ms",
                    p.attempt, p.status_code, p.response_time_ms
                )
            } else {
                writeln!(
                    out,
                    "    probe {}: unhealthy ({}) after {:.1} ms",
                    p.attempt, p.error, p.response_time_ms
                )
            }
        }
        Some(Kind::Retry(r)) => writeln!(
            out,
            "    retrying {} in {:.1}s (attempt {} failed: {})",
            r.operation,
            r.delay_ms / 1000.0,
            r.attempt,
            r.reason
        ),
        Some(Kind::Plan(p)) => plan(out, p),
        Some(Kind::CanaryStep(c)) => canary_human(out, c),
        Some(Kind::Outcome(o)) => outcome(out, o),
        None => Ok(()),
    }
}

fn outcome(out: &mut impl Write, o: &proto::Outcome) -> std::io::Result<()> {
    writeln!(out)?;
    if o.success {
        if o.url.is_empty() {
            writeln!(out, "SUCCESS")?;
        } else {
            writeln!(
                out,
                "SUCCESS: {} verified in {:.1} ms",
                o.url, o.response_time_ms
            )?;
        }
        if !o.revision.is_empty() {
            writeln!(out, "  revision: {}", o.revision)?;
        }
        if !o.image.is_empty() {
            writeln!(out, "  image:    {}", o.image)?;
        }
        if !o.revision.is_empty() {
            writeln!(out, "  traffic:  100% on {}", o.revision)?;
        }
        return Ok(());
    }
    let stage = stage_name(o.failed_stage);
    match &o.error {
        Some(f) => {
            writeln!(out, "FAILED in {stage}: [{}] {}", f.code, f.message)?;
            writeln!(
                out,
                "  retriable: {}",
                if f.retriable { "yes" } else { "no" }
            )?;
            if !f.remediation.is_empty() {
                writeln!(out, "  what to do:")?;
                for (i, r) in f.remediation.iter().enumerate() {
                    writeln!(out, "    {}. {r}", i + 1)?;
                }
            }
        }
        None => writeln!(out, "FAILED in {stage}")?,
    }
    // Where users are now; the runnable commands are in "what to do".
    if o.rolled_back {
        writeln!(
            out,
            "  traffic:  100% on {} again (rolled back, verified healthy); {} serves nothing",
            o.previous_revision, o.revision
        )?;
    } else if let Some(r) = &o.rollback_failure {
        let why = r.error.as_ref().map(|f| f.code.as_str()).unwrap_or("");
        if r.traffic_moved {
            writeln!(
                out,
                "  traffic:  100% on {} (moved back), which is not healthy either ({why}); {} serves nothing",
                r.serving_revision, o.revision
            )?;
        } else {
            writeln!(
                out,
                "  traffic:  still on {}, which is not healthy; moving it back to {} failed ({why})",
                r.serving_revision, o.previous_revision
            )?;
        }
    } else if o.should_rollback {
        writeln!(
            out,
            "  traffic:  still on {}, which is not healthy; {} served before",
            o.revision, o.previous_revision
        )?;
    }
    Ok(())
}

/// The build plan, with the evidence for each choice.
pub fn plan(out: &mut impl Write, p: &proto::BuildPlan) -> std::io::Result<()> {
    let mut what = p.language.clone();
    if !p.detected_language.is_empty() {
        what.push_str(&format!(" (a {} app)", p.detected_language));
    }
    if !p.version.is_empty() {
        what.push_str(&format!(" {}", p.version));
    }
    if !p.framework.is_empty() {
        what.push_str(&format!(" ({})", p.framework));
    }
    if !p.package_manager.is_empty() {
        what.push_str(&format!(", {}", p.package_manager));
    }
    writeln!(out, "    plan: {what}")?;
    for line in &p.install {
        writeln!(out, "      install: {line}")?;
    }
    for line in &p.build {
        writeln!(out, "      build:   {line}")?;
    }
    writeln!(out, "      start:   {}  (port {})", p.start, p.port)?;
    if !p.user.is_empty() {
        writeln!(out, "      user:    {}", p.user)?;
    }
    for e in &p.evidence {
        let at = if e.line > 0 {
            format!("{}:{}", e.file, e.line)
        } else {
            e.file.clone()
        };
        writeln!(out, "      because  {at}: {}", e.note)?;
    }
    for w in &p.warnings {
        let at = if w.line > 0 {
            format!("{}:{}", w.file, w.line)
        } else {
            w.file.clone()
        };
        writeln!(out, "      warning  {at}: {}", w.message)?;
        if !w.env.is_empty() {
            writeln!(out, "               set it with --env {}", w.env)?;
        }
    }
    if !p.dockerfile.is_empty() {
        writeln!(out, "      generated Dockerfile:")?;
        for l in p.dockerfile.lines() {
            writeln!(out, "        {l}")?;
        }
    }
    Ok(())
}

pub fn band_name(b: i32) -> &'static str {
    match proto::PerformanceBand::try_from(b).unwrap_or(proto::PerformanceBand::Unspecified) {
        proto::PerformanceBand::Unspecified => "",
        proto::PerformanceBand::Elite => "elite",
        proto::PerformanceBand::High => "high",
        proto::PerformanceBand::Medium => "medium",
        proto::PerformanceBand::Low => "low",
    }
}

fn seconds(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// `1d 4h`, `3h 12m`, `4m 10s`, `12s`: the two largest units.
fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `deployd dora`: the four keys, each with its band.
pub fn delivery(out: &mut impl Write, m: &proto::DeliveryMetrics) -> std::io::Result<()> {
    let t = m.target.clone().unwrap_or_default();
    let days = match (&m.start_time, &m.end_time) {
        (Some(a), Some(b)) => (b.seconds - a.seconds) as f64 / 86_400.0,
        _ => 0.0,
    };
    writeln!(
        out,
        "{} in {}/{}, {} to {} ({days:.1} days)",
        t.service,
        t.project,
        t.region,
        rfc3339(m.start_time.as_ref()),
        rfc3339(m.end_time.as_ref()),
    )?;
    let band = |b: i32| match band_name(b) {
        "" => "-".to_string(),
        b => b.to_string(),
    };
    let row = |out: &mut dyn Write, key: &str, value: String, b: i32| {
        writeln!(out, "  {key:<24}{value:<48}{}", band(b))
    };
    row(
        out,
        "deployment frequency",
        format!(
            "{} successful ({:.2} a day)",
            m.successful_deployments, m.deployments_per_day
        ),
        m.deployment_frequency_band,
    )?;
    row(
        out,
        "lead time for changes",
        match seconds(m.lead_time_median.as_ref()) {
            Some(s) => format!(
                "median {} over {} commits",
                human_duration(s),
                m.lead_time_samples
            ),
            None => "no commit times (sources that are not git)".into(),
        },
        m.lead_time_band,
    )?;
    let delivered = m.successful_deployments + m.change_failures;
    row(
        out,
        "change failure rate",
        match delivered {
            0 => "no deployment reached users".into(),
            n => format!(
                "{:.1}% ({} of {n} that reached users)",
                m.change_failure_rate * 100.0,
                m.change_failures
            ),
        },
        m.change_failure_band,
    )?;
    row(
        out,
        "time to restore",
        match seconds(m.time_to_restore_median.as_ref()) {
            Some(s) => format!("median {} over {} restores", human_duration(s), m.restores),
            None => "no restores".into(),
        },
        m.time_to_restore_band,
    )?;
    if let Some(since) = &m.failing_since {
        writeln!(
            out,
            "  failing since {}: no verified success after its last change failure",
            rfc3339(Some(since))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod delivery_tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(human_duration(12.0), "12s");
        assert_eq!(human_duration(250.0), "4m 10s");
        assert_eq!(human_duration(3.0 * 3600.0 + 720.0), "3h 12m");
        assert_eq!(human_duration(86_400.0 + 4.0 * 3600.0), "1d 4h");
    }
}
