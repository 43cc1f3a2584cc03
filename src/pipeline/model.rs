//! Requests, settings and results in domain terms. The gRPC edge converts its
//! messages into these; nothing here knows about prost or tonic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub field: &'static str,
    pub reason: String,
}

impl InvalidRequest {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl Target {
    /// Validates the project id, region and (when `with_service`) the Cloud
    /// Run service name against Google's naming rules.
    pub fn validate(&self, with_service: bool) -> Result<(), InvalidRequest> {
        validate_project(&self.project)?;
        validate_region(&self.region)?;
        if with_service {
            validate_service_name(&self.service)?;
        }
        Ok(())
    }
}

/// Project ids: 6-30 characters, lowercase letters, digits and hyphens,
/// starting with a letter and not ending with a hyphen. Domain-scoped ids
/// (`example.com:proj`) are accepted too.
fn validate_project(project: &str) -> Result<(), InvalidRequest> {
    const FIELD: &str = "target.project";
    if project.is_empty() {
        return Err(InvalidRequest::new(FIELD, "must not be empty"));
    }
    let id = project.rsplit(':').next().unwrap_or(project);
    let ok = (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidRequest::new(
            FIELD,
            format!("{project:?} is not a project id (6-30 lowercase letters, digits or hyphens, starting with a letter)"),
        ))
    }
}

/// Regions look like `us-central1`, `europe-west4`, `northamerica-northeast2`.
fn validate_region(region: &str) -> Result<(), InvalidRequest> {
    const FIELD: &str = "target.region";
    if region.is_empty() {
        return Err(InvalidRequest::new(FIELD, "must not be empty"));
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
            FIELD,
            format!("{region:?} is not a region name like \"us-central1\""),
        ))
    }
}

/// Cloud Run service ids: start with a letter, lowercase letters, digits and
/// hyphens, no trailing hyphen, fewer than 50 characters.
fn validate_service_name(service: &str) -> Result<(), InvalidRequest> {
    const FIELD: &str = "target.service";
    if service.is_empty() {
        return Err(InvalidRequest::new(FIELD, "must not be empty"));
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
            FIELD,
            format!("{service:?} breaks Cloud Run's naming rules (lowercase letters, digits and '-', starting with a letter, not ending with '-', at most 49 characters)"),
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
}

impl RuntimeSettings {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') {
                return Err(InvalidRequest::new(
                    "runtime.env",
                    format!("{name:?} is not an environment variable name"),
                ));
            }
            if name == "PORT" || name.starts_with("K_") {
                return Err(InvalidRequest::new(
                    "runtime.env",
                    format!("{name} is reserved by Cloud Run"),
                ));
            }
        }
        for s in &self.secrets {
            if s.env_name.is_empty() || s.secret.is_empty() {
                return Err(InvalidRequest::new(
                    "runtime.secrets",
                    "each secret needs env_name and secret",
                ));
            }
        }
        if let (Some(min), Some(max)) = (self.min_instances, self.max_instances) {
            if min > max {
                return Err(InvalidRequest::new(
                    "runtime.min_instances",
                    format!("min_instances {min} exceeds max_instances {max}"),
                ));
            }
        }
        if let Some(c) = self.concurrency {
            if c > 1000 {
                return Err(InvalidRequest::new(
                    "runtime.concurrency",
                    "Cloud Run allows at most 1000 concurrent requests per instance",
                ));
            }
        }
        if let Some(t) = self.request_timeout {
            if t > Duration::from_secs(3600) {
                return Err(InvalidRequest::new(
                    "runtime.request_timeout_seconds",
                    "Cloud Run allows at most 3600 seconds",
                ));
            }
        }
        if self.vpc_egress.is_some() && self.vpc_connector.is_none() {
            return Err(InvalidRequest::new(
                "runtime.vpc_connector",
                "vpc_egress needs a VPC connector",
            ));
        }
        Ok(())
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
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if !MACHINE_TYPES.contains(&self.machine_type.as_str()) {
            return Err(InvalidRequest::new(
                "build.machine_type",
                format!(
                    "{:?} is not a Cloud Build machine type ({})",
                    self.machine_type,
                    MACHINE_TYPES.join(", ")
                ),
            ));
        }
        // Cloud Build accepts build timeouts up to 24 h.
        if self.timeout > Duration::from_secs(24 * 3600) {
            return Err(InvalidRequest::new(
                "build.timeout_seconds",
                "Cloud Build allows at most 86400 seconds",
            ));
        }
        if self.step_timeout > self.timeout {
            return Err(InvalidRequest::new(
                "build.step_timeout_seconds",
                "a step timeout cannot exceed the build timeout",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(InvalidRequest::new(
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
            return Err(InvalidRequest::new(
                "build.repository",
                format!(
                    "{:?} is not an Artifact Registry repository id",
                    self.repository
                ),
            ));
        }
        Ok(())
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
}

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
        }
    }
}

impl HealthCheckSpec {
    pub fn validate(&self, field: &'static str) -> Result<(), InvalidRequest> {
        if !self.path.starts_with('/') {
            return Err(InvalidRequest::new(
                field,
                "the health path must start with '/'",
            ));
        }
        if !(1..=20).contains(&self.attempts) {
            return Err(InvalidRequest::new(
                field,
                "attempts must be between 1 and 20",
            ));
        }
        if self
            .accepted_statuses
            .iter()
            .any(|s| !(100..600).contains(s))
        {
            return Err(InvalidRequest::new(
                field,
                "accepted statuses must be HTTP status codes",
            ));
        }
        for (name, value) in &self.headers {
            let bad_name = name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if bad_name || value.contains(['\r', '\n']) || name.eq_ignore_ascii_case("host") {
                return Err(InvalidRequest::new(
                    field,
                    format!("{name:?} is not a header deployd can send"),
                ));
            }
        }
        Ok(())
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl DeployRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        self.target.validate(true)?;
        match &self.source {
            SourceSpec::LocalPath(p) if p.as_os_str().is_empty() => {
                return Err(InvalidRequest::new(
                    "source.local_path",
                    "must not be empty",
                ))
            }
            SourceSpec::Git { url, .. } if url.is_empty() => {
                return Err(InvalidRequest::new("source.git_url", "must not be empty"))
            }
            _ => {}
        }
        if let Some(sub) = &self.subdirectory {
            let p = std::path::Path::new(sub);
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(InvalidRequest::new(
                    "source.subdirectory",
                    format!("{sub:?} must be a relative path inside the source, without '..'"),
                ));
            }
        }
        self.runtime.validate()?;
        self.build.validate()?;
        if let RolloutMode::Canary { percent } = self.rollout {
            if !(1..=99).contains(&percent) {
                return Err(InvalidRequest::new(
                    "canary_percent",
                    "must be between 1 and 99",
                ));
            }
        }
        self.health.validate("health_check")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightRequest {
    pub target: Target,
    pub service_account: Option<String>,
    pub ingress: Option<Ingress>,
    pub vpc_egress: Option<VpcEgress>,
    pub build: BuildOptions,
}

impl PreflightRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        // The service name is optional here: preflight checks the project.
        self.target.validate(!self.target.service.is_empty())?;
        self.build.validate()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub url: String,
    pub health: HealthCheckSpec,
}

impl VerifyRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.url.is_empty() {
            return Err(InvalidRequest::new("url", "must not be empty"));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(InvalidRequest::new(
                "url",
                "must be an http:// or https:// URL",
            ));
        }
        self.health.validate("health_path")
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
            assert_eq!(got, want, "{t:?}");
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
