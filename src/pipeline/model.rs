//! Requests, settings and results in domain terms. The gRPC edge converts its
//! messages into these; nothing here knows about prost or tonic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::canary::spec as canary;
pub use super::canary::spec::{
    CanaryAnalysis, CanaryStep, Comparison, InconclusivePolicy, MonitoringAnalysis, ProbeAnalysis,
    PromQuery, PrometheusAnalysis,
};

use super::rules::{self, shown};

/// Where a deploy lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub project: String,
    pub region: String,
    pub service: String,
}

/// A request field that breaks a rule of its own, independent of any cloud
/// state. The gRPC edge turns it into INVALID_ARGUMENT naming `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidRequest {
    /// The field's path in the request, e.g. `runtime.env` or
    /// `health_check.timeout_ms`.
    pub field: String,
    pub reason: String,
}

/// Every rule a request breaks, in the order its fields are checked, so a
/// caller can fix them all at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<InvalidRequest>);

impl Violations {
    pub fn push(&mut self, v: InvalidRequest) {
        self.0.push(v);
    }

    /// Keeps the violation a check reports, if any.
    pub fn check(&mut self, r: Result<(), InvalidRequest>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    pub fn into_vec(self) -> Vec<InvalidRequest> {
        self.0
    }

    /// The first violation, for callers that stop at one.
    pub fn first(self) -> Result<(), InvalidRequest> {
        self.0.into_iter().next().map_or(Ok(()), Err)
    }
}

impl InvalidRequest {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Target {
    /// Validates the project id, region and (when `with_service`) the Cloud
    /// Run service name against Google's naming rules.
    pub fn validate(&self, with_service: bool) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(with_service, &mut v);
        v.first()
    }

    pub fn check(&self, with_service: bool, v: &mut Violations) {
        v.check(validate_project("target.project", &self.project));
        v.check(validate_region("target.region", &self.region));
        if with_service {
            v.check(validate_service_name("target.service", &self.service));
        }
    }
}

/// A listing's filters, each (when set) held to the rules of the target
/// field it matches, so only names a deployment could have reach the
/// store, the policy, messages and audit lines.
pub fn validate_filters(
    project: Option<&str>,
    region: Option<&str>,
    service: Option<&str>,
) -> Result<(), InvalidRequest> {
    if let Some(p) = project {
        validate_project("project", p)?;
    }
    if let Some(r) = region {
        validate_region("region", r)?;
    }
    if let Some(s) = service {
        validate_service_name("service", s)?;
    }
    Ok(())
}

/// Project ids (`rules::project`), domain-scoped ones included.
fn validate_project(field: &'static str, project: &str) -> Result<(), InvalidRequest> {
    if project.is_empty() {
        return Err(InvalidRequest::new(field, "must not be empty"));
    }
    if rules::project(project) {
        Ok(())
    } else {
        Err(InvalidRequest::new(
            field,
            format!("{} is not a project id (6-30 lowercase letters, digits or hyphens, starting with a letter; optionally DOMAIN: before it)", shown(project)),
        ))
    }
}

/// Regions look like `us-central1`, `europe-west4`, `northamerica-northeast2`.
fn validate_region(field: &'static str, region: &str) -> Result<(), InvalidRequest> {
    if region.is_empty() {
        return Err(InvalidRequest::new(field, "must not be empty"));
    }
    let mut parts = region.split('-');
    let area = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let ok = !area.is_empty()
        && area.chars().all(|c| c.is_ascii_lowercase())
        && rest.len() == 1
        && rest[0].len() >= 2
        && rest[0].starts_with(|c: char| c.is_ascii_lowercase())
        && rest[0].ends_with(|c: char| c.is_ascii_digit())
        && rest[0]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(InvalidRequest::new(
            field,
            format!(
                "{} is not a region name like \"us-central1\"",
                shown(region)
            ),
        ))
    }
}

/// Cloud Run service ids: start with a letter, lowercase letters, digits and
/// hyphens, no trailing hyphen, fewer than 50 characters.
fn validate_service_name(field: &'static str, service: &str) -> Result<(), InvalidRequest> {
    if service.is_empty() {
        return Err(InvalidRequest::new(field, "must not be empty"));
    }
    let ok = service.len() < 50
        && service.starts_with(|c: char| c.is_ascii_lowercase())
        && !service.ends_with('-')
        && service
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidRequest::new(
            field,
            format!("{} breaks Cloud Run's naming rules (lowercase letters, digits and '-', starting with a letter, not ending with '-', at most 49 characters)", shown(service)),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSpec {
    LocalPath(PathBuf),
    Git {
        url: String,
        git_ref: Option<String>,
    },
    /// A prebuilt image: nothing to fetch, analyze or build.
    Image(String),
}

impl SourceSpec {
    pub fn image(&self) -> Option<&str> {
        match self {
            SourceSpec::Image(i) => Some(i),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ingress {
    All,
    InternalOnly,
    InternalLoadBalancer,
}

impl Ingress {
    /// The value the `run.allowedIngress` org policy constraint uses.
    pub fn policy_value(self) -> &'static str {
        match self {
            Ingress::All => "all",
            Ingress::InternalOnly => "internal",
            Ingress::InternalLoadBalancer => "internal-and-cloud-load-balancing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VpcEgress {
    PrivateRangesOnly,
    AllTraffic,
}

impl VpcEgress {
    /// The value the `run.allowedVPCEgress` org policy constraint uses.
    pub fn policy_value(self) -> &'static str {
        match self {
            VpcEgress::PrivateRangesOnly => "private-ranges-only",
            VpcEgress::AllTraffic => "all-traffic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub env_name: String,
    pub secret: String,
    pub version: String,
}

/// Cloud Run settings; `None` and empty mean "Cloud Run's default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretEnv>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub concurrency: Option<u32>,
    pub request_timeout: Option<Duration>,
    pub service_account: Option<String>,
    pub ingress: Option<Ingress>,
    pub vpc_egress: Option<VpcEgress>,
    pub vpc_connector: Option<String>,
    pub allow_unauthenticated: bool,
    pub container_port: u16,
    /// An HTTP startup probe on the revision; `None` leaves Cloud Run's
    /// TCP default.
    pub startup_probe: Option<StartupProbe>,
}

/// Cloud Run's HTTP startup probe: the revision is not ready, and gets no
/// traffic, until `path` answers 2xx or 3xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupProbe {
    pub path: String,
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
}

/// Cloud Run's bounds on a startup probe, in seconds.
pub const STARTUP_PROBE_MAX_SECONDS: u32 = 240;
pub const DEFAULT_STARTUP_PERIOD_SECONDS: u32 = 2;
pub const DEFAULT_STARTUP_TIMEOUT_SECONDS: u32 = 1;

impl StartupProbe {
    /// Zero values are the defaults; the threshold fills the window.
    pub fn with_defaults(
        path: String,
        initial_delay_seconds: u32,
        period_seconds: u32,
        timeout_seconds: u32,
        failure_threshold: u32,
    ) -> Self {
        let period = nonzero_or(period_seconds, DEFAULT_STARTUP_PERIOD_SECONDS);
        Self {
            path,
            initial_delay_seconds,
            period_seconds: period,
            timeout_seconds: nonzero_or(
                timeout_seconds,
                DEFAULT_STARTUP_TIMEOUT_SECONDS.min(period),
            ),
            failure_threshold: nonzero_or(
                failure_threshold,
                (STARTUP_PROBE_MAX_SECONDS / period).max(1),
            ),
        }
    }

    /// Cloud Run's rules, so a revision it would refuse is refused before a
    /// build is spent on it.
    pub fn check(&self, prefix: &str, v: &mut Violations) {
        let field = |name: &str| format!("{prefix}{name}");
        let max = STARTUP_PROBE_MAX_SECONDS;
        v.check(rules::url_path(&self.path).map_err(|r| InvalidRequest::new(field("path"), r)));
        if self.initial_delay_seconds > max {
            v.push(InvalidRequest::new(
                field("initial_delay_seconds"),
                format!("at most {max}"),
            ));
        }
        if !(1..=max).contains(&self.period_seconds) {
            v.push(InvalidRequest::new(
                field("period_seconds"),
                format!("must be between 1 and {max}"),
            ));
        }
        if !(1..=self.period_seconds).contains(&self.timeout_seconds) {
            v.push(InvalidRequest::new(
                field("timeout_seconds"),
                "must be at least 1 and at most period_seconds",
            ));
        }
        if self.failure_threshold == 0
            || u64::from(self.failure_threshold) * u64::from(self.period_seconds) > u64::from(max)
        {
            v.push(InvalidRequest::new(
                field("failure_threshold"),
                format!(
                    "failure_threshold x period_seconds must be between 1 and {max} s (Cloud Run's startup window)"
                ),
            ));
        }
    }

    pub fn validate(&self, prefix: &str) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(prefix, &mut v);
        v.first()
    }
}

fn nonzero_or(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

/// Instance counts above this are refused: Cloud Run's per-service
/// ceiling without a quota increase, and far below the API's int32 range.
pub const MAX_INSTANCES: u32 = 1000;

impl RuntimeSettings {
    /// Cloud Run's own limits, checked before a build is spent on a
    /// revision Cloud Run would refuse.
    pub fn check(&self, v: &mut Violations) {
        if let Some(p) = &self.startup_probe {
            // Set through the request's health check.
            p.check("health_check.startup_probe.", v);
        }
        if self.env.len() + self.secrets.len() > rules::MAX_ENV_VARS {
            v.push(InvalidRequest::new(
                "runtime.env",
                format!(
                    "{} variables; Cloud Run allows {}",
                    self.env.len() + self.secrets.len(),
                    rules::MAX_ENV_VARS
                ),
            ));
        }
        for (name, value) in &self.env {
            v.check(rules::env_name(name).map_err(|r| InvalidRequest::new("runtime.env", r)));
            v.check(
                rules::env_value(name, value).map_err(|r| InvalidRequest::new("runtime.env", r)),
            );
        }
        let mut secret_names = std::collections::BTreeSet::new();
        for s in &self.secrets {
            if s.env_name.is_empty() || s.secret.is_empty() {
                v.push(InvalidRequest::new(
                    "runtime.secrets",
                    "each secret needs env_name and secret",
                ));
                continue;
            }
            v.check(
                rules::env_name(&s.env_name)
                    .map_err(|r| InvalidRequest::new("runtime.secrets.env_name", r)),
            );
            if self.env.contains_key(&s.env_name) || !secret_names.insert(&s.env_name) {
                v.push(InvalidRequest::new(
                    "runtime.secrets.env_name",
                    format!(
                        "{} is set twice (in env and secrets, or by two secrets)",
                        s.env_name
                    ),
                ));
            }
            v.check(
                rules::secret(&s.secret)
                    .map_err(|r| InvalidRequest::new("runtime.secrets.secret", r)),
            );
            v.check(
                rules::secret_version(&s.version)
                    .map_err(|r| InvalidRequest::new("runtime.secrets.version", r)),
            );
        }
        if let Some(cpu) = &self.cpu {
            v.check(rules::cpu(cpu).map_err(|r| InvalidRequest::new("runtime.cpu", r)));
        }
        if let Some(memory) = &self.memory {
            v.check(rules::memory(memory).map_err(|r| InvalidRequest::new("runtime.memory", r)));
        }
        for (field, n) in [
            ("runtime.min_instances", self.min_instances),
            ("runtime.max_instances", self.max_instances),
        ] {
            if let Some(n) = n.filter(|n| *n > MAX_INSTANCES) {
                v.push(InvalidRequest::new(
                    field,
                    format!(
                        "{n} is over {MAX_INSTANCES}, the most deployd lets one service ask for"
                    ),
                ));
            }
        }
        if let (Some(min), Some(max)) = (self.min_instances, self.max_instances) {
            if min > max {
                v.push(InvalidRequest::new(
                    "runtime.min_instances",
                    format!("min_instances {min} exceeds max_instances {max}"),
                ));
            }
        }
        if let Some(c) = self.concurrency {
            if c > 1000 {
                v.push(InvalidRequest::new(
                    "runtime.concurrency",
                    "Cloud Run allows at most 1000 concurrent requests per instance",
                ));
            }
        }
        if let Some(t) = self.request_timeout {
            if t > Duration::from_secs(3600) {
                v.push(InvalidRequest::new(
                    "runtime.request_timeout_seconds",
                    "Cloud Run allows at most 3600 seconds",
                ));
            }
        }
        if let Some(sa) = &self.service_account {
            v.check(
                rules::service_account_email(sa)
                    .map_err(|r| InvalidRequest::new("runtime.service_account", r)),
            );
        }
        if let Some(connector) = &self.vpc_connector {
            v.check(
                rules::vpc_connector(connector)
                    .map_err(|r| InvalidRequest::new("runtime.vpc_connector", r)),
            );
        }
        if self.vpc_egress.is_some() && self.vpc_connector.is_none() {
            v.push(InvalidRequest::new(
                "runtime.vpc_connector",
                "vpc_egress needs a VPC connector",
            ));
        }
    }

    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(&mut v);
        v.first()
    }
}

/// How the remote build runs. Defaults are the ones Cloud Run deploys need
/// most of the time; each is overridable per deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOptions {
    pub machine_type: String,
    pub timeout: Duration,
    pub step_timeout: Duration,
    pub max_attempts: u32,
    pub repository: String,
    /// The build's service account email; Cloud Build's default when `None`.
    pub service_account: Option<String>,
}

pub const DEFAULT_REPOSITORY: &str = "deployd";

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            machine_type: "E2_HIGHCPU_8".into(),
            timeout: Duration::from_secs(1200),
            step_timeout: Duration::from_secs(600),
            max_attempts: 3,
            repository: DEFAULT_REPOSITORY.into(),
            service_account: None,
        }
    }
}

/// Machine types Cloud Build accepts.
pub const MACHINE_TYPES: &[&str] = &[
    "UNSPECIFIED",
    "N1_HIGHCPU_8",
    "N1_HIGHCPU_32",
    "E2_HIGHCPU_8",
    "E2_HIGHCPU_32",
    "E2_MEDIUM",
];

impl BuildOptions {
    pub fn check(&self, v: &mut Violations) {
        if !MACHINE_TYPES.contains(&self.machine_type.as_str()) {
            v.push(InvalidRequest::new(
                "build.machine_type",
                format!(
                    "{} is not a Cloud Build machine type ({})",
                    shown(&self.machine_type),
                    MACHINE_TYPES.join(", ")
                ),
            ));
        }
        // Cloud Build accepts build timeouts up to 24 h.
        if self.timeout > Duration::from_secs(24 * 3600) {
            v.push(InvalidRequest::new(
                "build.timeout_seconds",
                "Cloud Build allows at most 86400 seconds",
            ));
        }
        if self.step_timeout > self.timeout {
            v.push(InvalidRequest::new(
                "build.step_timeout_seconds",
                "a step timeout cannot exceed the build timeout",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            v.push(InvalidRequest::new(
                "build.max_attempts",
                "must be between 1 and 10",
            ));
        }
        let repo_ok = !self.repository.is_empty()
            && self.repository.len() <= 63
            && self
                .repository
                .starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .repository
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !repo_ok {
            v.push(InvalidRequest::new(
                "build.repository",
                format!(
                    "{} is not an Artifact Registry repository id",
                    shown(&self.repository)
                ),
            ));
        }
        if let Some(sa) = &self.service_account {
            v.check(
                rules::service_account_email(sa)
                    .map_err(|r| InvalidRequest::new("build.service_account", r)),
            );
        }
    }

    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(&mut v);
        v.first()
    }
}

/// How a URL is judged healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    pub path: String,
    pub attempts: u32,
    pub timeout: Duration,
    pub accepted_statuses: Vec<u16>,
    /// The wait after the first failed attempt; it doubles after each.
    pub base_delay: Duration,
    /// Caps the doubling; `None` lets it double freely.
    pub max_delay: Option<Duration>,
    pub expect_body: Option<String>,
    /// Sent with every probe.
    pub headers: BTreeMap<String, String>,
    /// Healthy answers in a row that pass a candidate before it gets
    /// traffic (the verify-first rollouts); other verifications take one.
    #[serde(default = "one")]
    pub consecutive_successes: u32,
}

fn one() -> u32 {
    1
}

/// The health gate of a candidate, by default.
pub const DEFAULT_CONSECUTIVE_SUCCESSES: u32 = 3;
pub const MAX_CONSECUTIVE_SUCCESSES: u32 = 20;

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            path: "/".into(),
            attempts: 5,
            timeout: Duration::from_secs(30),
            accepted_statuses: vec![200, 204, 301, 302],
            base_delay: Duration::from_secs(2),
            max_delay: None,
            expect_body: None,
            headers: BTreeMap::new(),
            consecutive_successes: DEFAULT_CONSECUTIVE_SUCCESSES,
        }
    }
}

/// Bounds on health-check settings, so one request cannot hold a probe,
/// a socket or a run for hours.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_PROBE_BASE_DELAY: Duration = Duration::from_secs(60);
pub const MAX_PROBE_MAX_DELAY: Duration = Duration::from_secs(600);
const MAX_EXPECT_BODY_BYTES: usize = 64 * 1024;
const MAX_ACCEPTED_STATUSES: usize = 32;

impl HealthCheckSpec {
    /// `prefix` is where the settings sit in the request (`health_check.`
    /// in a Deploy, nothing in a Verify) and `path_field` the path's name.
    pub fn check(&self, prefix: &str, path_field: &str, v: &mut Violations) {
        let field = |name: &str| format!("{prefix}{name}");
        v.check(rules::url_path(&self.path).map_err(|r| InvalidRequest::new(path_field, r)));
        if !(1..=MAX_CONSECUTIVE_SUCCESSES).contains(&self.consecutive_successes) {
            v.push(InvalidRequest::new(
                field("consecutive_successes"),
                format!("must be between 1 and {MAX_CONSECUTIVE_SUCCESSES}"),
            ));
        }
        if !(1..=20).contains(&self.attempts) {
            v.push(InvalidRequest::new(
                field("attempts"),
                "must be between 1 and 20",
            ));
        }
        for (name, value, max) in [
            ("timeout_ms", Some(self.timeout), MAX_PROBE_TIMEOUT),
            ("base_delay_ms", Some(self.base_delay), MAX_PROBE_BASE_DELAY),
            ("max_delay_ms", self.max_delay, MAX_PROBE_MAX_DELAY),
        ] {
            if let Some(over) = value.filter(|d| *d > max) {
                v.push(InvalidRequest::new(
                    field(name),
                    format!(
                        "{} ms is over the {} ms limit",
                        over.as_millis(),
                        max.as_millis()
                    ),
                ));
            }
        }
        if self.accepted_statuses.len() > MAX_ACCEPTED_STATUSES
            || self
                .accepted_statuses
                .iter()
                .any(|s| !(100..600).contains(s))
        {
            v.push(InvalidRequest::new(
                field("accepted_statuses"),
                format!("at most {MAX_ACCEPTED_STATUSES} HTTP status codes (100-599)"),
            ));
        }
        if self
            .expect_body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_EXPECT_BODY_BYTES)
        {
            v.push(InvalidRequest::new(
                field("expect_body"),
                format!("at most {MAX_EXPECT_BODY_BYTES} bytes"),
            ));
        }
        if self.headers.len() > rules::MAX_HEADERS {
            v.push(InvalidRequest::new(
                field("headers"),
                format!("at most {} headers", rules::MAX_HEADERS),
            ));
        }
        for (name, value) in &self.headers {
            v.check(
                rules::header(name, value).map_err(|r| InvalidRequest::new(field("headers"), r)),
            );
        }
    }

    pub fn validate(&self, prefix: &str, path_field: &str) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(prefix, path_field, &mut v);
        v.first()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RollbackPolicy {
    /// Move traffic back to the previous revision and verify it.
    #[default]
    Automatic,
    /// Report should_rollback and the previous revision; change nothing.
    Recommend,
}

/// How a new revision receives traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RolloutMode {
    /// 100% at once, verified afterwards.
    #[default]
    Direct,
    /// No traffic and a tag; verified through the tag URL, then 100%.
    VerifyBeforeTraffic,
    /// `percent` of traffic and a tag; verified, then 100%.
    Canary { percent: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub target: Target,
    pub source: SourceSpec,
    /// The directory of the source to deploy (monorepos).
    pub subdirectory: Option<String>,
    pub runtime: RuntimeSettings,
    pub build: BuildOptions,
    pub health: HealthCheckSpec,
    pub rollback: RollbackPolicy,
    pub rollout: RolloutMode,
    /// The canary's steps when the caller gave them; empty for a one-step
    /// canary of `RolloutMode::Canary { percent }`, with no bake.
    #[serde(default)]
    pub canary_steps: Vec<CanaryStep>,
    /// How canary steps are judged; `None`: deployd's own probes.
    #[serde(default)]
    pub analysis: Option<CanaryAnalysis>,
}

impl DeployRequest {
    /// The first rule the request breaks.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let mut v = Violations::default();
        self.check(&mut v);
        v.first()
    }

    /// Every rule the request breaks, in field order.
    pub fn violations(&self) -> Vec<InvalidRequest> {
        let mut v = Violations::default();
        self.check(&mut v);
        v.into_vec()
    }

    fn check(&self, v: &mut Violations) {
        self.target.check(true, v);
        v.check(check_source(&self.source));
        v.check(check_subdirectory(self.subdirectory.as_deref()));
        if self.source.image().is_some() && self.subdirectory.is_some() {
            v.push(InvalidRequest::new(
                "source.subdirectory",
                "an image has no source directories",
            ));
        }
        // The health check first: the startup probe takes its path.
        self.health.check("health_check.", "health_check.path", v);
        self.runtime.check(v);
        self.build.check(v);
        v.check(self.check_rollout());
    }

    /// Canary steps and their analysis, with the rollout mode they need.
    fn check_rollout(&self) -> Result<(), InvalidRequest> {
        if let (RolloutMode::Canary { percent }, true) =
            (self.rollout, self.canary_steps.is_empty())
        {
            if !(1..=99).contains(&percent) {
                return Err(InvalidRequest::new(
                    "canary_percent",
                    "must be between 1 and 99",
                ));
            }
        }
        if !self.canary_steps.is_empty() {
            if !matches!(self.rollout, RolloutMode::Canary { .. }) {
                return Err(InvalidRequest::new(
                    "canary_steps",
                    "need rollout_mode ROLLOUT_MODE_CANARY",
                ));
            }
            canary::validate_steps(&self.canary_steps)?;
        }
        if let Some(a) = &self.analysis {
            if self.canary_steps.is_empty() {
                return Err(InvalidRequest::new(
                    "analysis",
                    "judges canary steps: give canary_steps (with ROLLOUT_MODE_CANARY)",
                ));
            }
            a.validate()?;
        }
        Ok(())
    }

    /// The canary's steps: the caller's, or one step of `canary_percent`
    /// with no bake. Empty outside the canary mode.
    pub fn steps(&self) -> Vec<CanaryStep> {
        match self.rollout {
            RolloutMode::Canary { percent } if self.canary_steps.is_empty() => vec![CanaryStep {
                percent,
                bake: Duration::ZERO,
            }],
            RolloutMode::Canary { .. } => self.canary_steps.clone(),
            _ => vec![],
        }
    }
}

/// Where the source comes from: an absolute local path, a git URL and ref
/// git may be given, or an image reference.
fn check_source(source: &SourceSpec) -> Result<(), InvalidRequest> {
    match source {
        SourceSpec::LocalPath(p) => {
            let shown_path = shown(&p.to_string_lossy());
            if p.as_os_str().is_empty() {
                return Err(InvalidRequest::new(
                    "source.local_path",
                    "must not be empty",
                ));
            }
            // A relative path would resolve against the daemon's cwd.
            if !p.is_absolute() {
                return Err(InvalidRequest::new(
                    "source.local_path",
                    format!("{shown_path} must be an absolute path"),
                ));
            }
            if p.as_os_str().len() > 4096 || p.to_string_lossy().chars().any(char::is_control) {
                return Err(InvalidRequest::new(
                    "source.local_path",
                    format!("{shown_path} is too long or contains control characters"),
                ));
            }
        }
        SourceSpec::Git { url, git_ref } => {
            if url.is_empty() {
                return Err(InvalidRequest::new("source.git_url", "must not be empty"));
            }
            super::source::GitUrl::parse(url)
                .map_err(|r| InvalidRequest::new("source.git_url", r))?;
            if let Some(r) = git_ref {
                rules::git_ref(r).map_err(|r| InvalidRequest::new("source.git_ref", r))?;
            }
        }
        SourceSpec::Image(image) => {
            rules::image_ref(image).map_err(|r| InvalidRequest::new("source.image", r))?;
        }
    }
    Ok(())
}

/// A directory inside the source, never out of it.
fn check_subdirectory(subdirectory: Option<&str>) -> Result<(), InvalidRequest> {
    if let Some(sub) = subdirectory {
        let p = std::path::Path::new(sub);
        if sub.len() > 1024
            || sub.chars().any(char::is_control)
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(InvalidRequest::new(
                "source.subdirectory",
                format!(
                    "{} must be a relative path inside the source, without '..'",
                    shown(sub)
                ),
            ));
        }
    }
    Ok(())
}

/// What a Deploy of `source` would build, asked without deploying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzeRequest {
    pub source: SourceSpec,
    pub subdirectory: Option<String>,
}

impl AnalyzeRequest {
    /// Every rule the request breaks: the same as a Deploy's source.
    pub fn violations(&self) -> Vec<InvalidRequest> {
        let mut v = Violations::default();
        if self.source.image().is_some() {
            v.push(InvalidRequest::new(
                "source.image",
                "Analyze reads source code: give local_path or git_url",
            ));
        } else {
            v.check(check_source(&self.source));
        }
        v.check(check_subdirectory(self.subdirectory.as_deref()));
        v.into_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightRequest {
    pub target: Target,
    pub service_account: Option<String>,
    pub ingress: Option<Ingress>,
    pub vpc_egress: Option<VpcEgress>,
    pub build: BuildOptions,
    /// A deploy of a prebuilt image: nothing is uploaded or built, so what
    /// only a build needs (its APIs, permissions, repository, bucket and
    /// Cloud Build settings) is neither required nor created.
    #[serde(default)]
    pub prebuilt_image: bool,
}

impl PreflightRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        Violations(self.violations()).first()
    }

    /// Every rule the request breaks, in field order.
    pub fn violations(&self) -> Vec<InvalidRequest> {
        let mut v = Violations::default();
        // The service name is optional here: preflight checks the project.
        self.target.check(!self.target.service.is_empty(), &mut v);
        if let Some(sa) = &self.service_account {
            v.check(
                rules::service_account_email(sa)
                    .map_err(|r| InvalidRequest::new("service_account", r)),
            );
        }
        self.build.check(&mut v);
        v.into_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub url: String,
    pub health: HealthCheckSpec,
}

impl VerifyRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        Violations(self.violations()).first()
    }

    /// Every rule the request breaks: the URL's first, then the health
    /// check's.
    pub fn violations(&self) -> Vec<InvalidRequest> {
        let mut v = Violations::default();
        v.check(self.check_url());
        self.health.check("", "health_path", &mut v);
        v.into_vec()
    }

    fn check_url(&self) -> Result<(), InvalidRequest> {
        if self.url.is_empty() {
            return Err(InvalidRequest::new("url", "must not be empty"));
        }
        let bad = |why: &str| InvalidRequest::new("url", format!("{} {why}", shown(&self.url)));
        if self.url.len() > 2048 {
            return Err(bad("is over 2048 bytes"));
        }
        let parsed = url::Url::parse(&self.url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("must be an http:// or https:// URL"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(project: &str, region: &str, service: &str) -> Target {
        Target {
            project: project.into(),
            region: region.into(),
            service: service.into(),
        }
    }

    #[test]
    fn target_validation_names_the_field() {
        let cases = [
            (target("", "us-central1", "api"), Some("target.project")),
            (target("Acme", "us-central1", "api"), Some("target.project")),
            (target("acme-prod", "", "api"), Some("target.region")),
            (
                target("acme-prod", "uscentral", "api"),
                Some("target.region"),
            ),
            (
                target("acme-prod", "us-central1", ""),
                Some("target.service"),
            ),
            (
                target("acme-prod", "us-central1", "1api"),
                Some("target.service"),
            ),
            (
                target("acme-prod", "us-central1", "api-"),
                Some("target.service"),
            ),
            (
                target("acme-prod", "us-central1", "API"),
                Some("target.service"),
            ),
            (
                target("acme-prod", "us-central1", &"a".repeat(50)),
                Some("target.service"),
            ),
            (target("acme-prod", "us-central1", "api"), None),
            (
                target("example.com:acme-prod", "northamerica-northeast2", "api-v2"),
                None,
            ),
        ];
        for (t, want) in cases {
            let got = t.validate(true).err().map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{t:?}");
        }
    }

    #[test]
    fn build_options_defaults_are_the_documented_ones() {
        let b = BuildOptions::default();
        assert_eq!(b.machine_type, "E2_HIGHCPU_8");
        assert_eq!(b.timeout, Duration::from_secs(1200));
        assert_eq!(b.step_timeout, Duration::from_secs(600));
        assert_eq!(b.max_attempts, 3);
        assert!(b.validate().is_ok());
        let bad = BuildOptions {
            machine_type: "HUGE".into(),
            ..BuildOptions::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "build.machine_type");
    }

    #[test]
    fn health_defaults_match_the_seed() {
        let h = HealthCheckSpec::default();
        assert_eq!(h.attempts, 5);
        assert_eq!(h.base_delay, Duration::from_secs(2));
        assert_eq!(h.accepted_statuses, vec![200, 204, 301, 302]);
    }
}
