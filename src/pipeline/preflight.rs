//! Preflight: everything that would make a deploy fail, checked before
//! anything is built. Checks run concurrently once the project is known to
//! be reachable; each reports as it completes. Transient errors are retried
//! with the build policy and then reported as inconclusive, never as passed.

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::cloud::{Project, ProjectState};
use super::error::{CloudError, Code};
use super::event::{CheckResult, EventKind, Reporter, Stage};
use super::model::{BuildOptions, Ingress, PreflightRequest};
use super::retry::{classify_cloud, retry, GaveUp, RetryPolicy};
use super::{naming, shell, Pipeline};

pub const REQUIRED_APIS: &[&str] = &[
    "cloudbuild.googleapis.com",
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "secretmanager.googleapis.com",
];

/// The APIs only a build uses; an image deploy does not need them.
const BUILD_APIS: &[&str] = &[
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
];

/// The checks only a build needs.
const BUILD_CHECKS: &[&str] = &["artifact_registry", "build_bucket", "cloud_build"];

/// Whether a permission serves only the build (its upload, repository and
/// Cloud Build itself).
fn build_only(permission: &str) -> bool {
    ["cloudbuild.", "artifactregistry.", "storage."]
        .iter()
        .any(|p| permission.starts_with(p))
}

/// What a request's preflight needs, of `all`: everything for a source
/// deploy, less `build_only` for an image deploy.
fn needed<T: Copy>(req: &PreflightRequest, all: &[T], build_only: impl Fn(T) -> bool) -> Vec<T> {
    all.iter()
        .copied()
        .filter(|x| !req.prebuilt_image || !build_only(*x))
        .collect()
}

/// Each permission a deploy needs, with the predefined role that grants it.
pub const REQUIRED_PERMISSIONS: &[(&str, &str)] = &[
    ("run.services.get", "roles/run.admin"),
    ("run.services.create", "roles/run.admin"),
    ("run.services.update", "roles/run.admin"),
    ("run.services.setIamPolicy", "roles/run.admin"),
    ("run.revisions.get", "roles/run.admin"),
    ("run.operations.get", "roles/run.admin"),
    ("cloudbuild.builds.create", "roles/cloudbuild.builds.editor"),
    ("cloudbuild.builds.get", "roles/cloudbuild.builds.editor"),
    ("cloudbuild.builds.update", "roles/cloudbuild.builds.editor"),
    (
        "artifactregistry.repositories.get",
        "roles/artifactregistry.admin",
    ),
    (
        "artifactregistry.repositories.create",
        "roles/artifactregistry.admin",
    ),
    ("storage.buckets.get", "roles/storage.admin"),
    ("storage.buckets.create", "roles/storage.admin"),
    ("storage.objects.create", "roles/storage.admin"),
    ("storage.objects.get", "roles/storage.admin"),
    ("iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser"),
];

/// The order a person should fix things in: access first, then APIs, then
/// roles, then resources and policies.
pub const CHECK_ORDER: &[&str] = &[
    "project_access",
    "required_apis",
    "permissions",
    "service_account",
    "artifact_registry",
    "build_bucket",
    "cloud_build",
    "network_policies",
    // A deploy's own (deploy_checks.rs); PROJECT_CHECKS ends before them.
    "revision_spec",
    "probe_identity",
    "monitoring_access",
    "prometheus",
];

/// The checks `run_checks` makes, project_access first: CHECK_ORDER up to
/// a deploy's own.
const PROJECT_CHECKS: &[&str] = CHECK_ORDER.split_at(8).0;

/// How far the project could be looked at.
enum Reach {
    Reachable(Project),
    /// The Resource Manager API is disabled: the project number is unknown.
    ApiDisabled,
    /// The lookup failed without a verdict: the number is unknown.
    Unreachable,
    /// The project does not exist, is not the caller's to see, or is not
    /// active: no other check can say anything useful about it.
    Inaccessible,
}

/// A check call that failed for good (or not at all conclusively).
pub(super) enum CallError {
    Failed(CloudError),
    Inconclusive(String),
}

impl Pipeline {
    /// Runs every check at once; reports and returns them in
    /// [`CHECK_ORDER`].
    pub(crate) async fn run_checks(
        &self,
        req: &PreflightRequest,
        events: &Reporter,
        cancel: &CancellationToken,
    ) -> Vec<CheckResult> {
        type Check<'a> = std::pin::Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;
        // Checks that need the project number start once the project is
        // known; the others start at once, so the critical path is two round
        // trips (project, then the service account), not one per check.
        let known: OnceLock<Option<Project>> = OnceLock::new();
        let mut pending: FuturesUnordered<Check<'_>> = FuturesUnordered::new();
        // The checks this request gets, in the order they are reported.
        let planned = needed(req, PROJECT_CHECKS, |n| BUILD_CHECKS.contains(&n));
        let build = !req.prebuilt_image;
        pending.push(Box::pin(self.check_apis(req, cancel)));
        pending.push(Box::pin(self.check_permissions(req, cancel)));
        if build {
            pending.push(Box::pin(self.check_repository(req, cancel)));
            pending.push(Box::pin(self.check_cloud_build(req, cancel)));
        }
        pending.push(Box::pin(self.check_network_policies(req, cancel)));
        let mut project_check = Box::pin(self.check_project(req, cancel));
        let mut project_done = false;
        let mut inaccessible = false;
        let mut results: Vec<CheckResult> = Vec::with_capacity(CHECK_ORDER.len());
        let mut reported = 0;
        loop {
            let r = tokio::select! {
                (r, reach) = &mut project_check, if !project_done => {
                    project_done = true;
                    let project = match reach {
                        Reach::Reachable(p) => Some(p),
                        // Resource Manager is off: the number is unknown.
                        Reach::ApiDisabled => None,
                        Reach::Inaccessible => {
                            // Said once, by project_access: the others are
                            // stopped and reported skipped.
                            inaccessible = true;
                            pending.clear();
                            let skip = |name: Cow<'static, str>| {
                                CheckResult::skipped(
                                    name,
                                    format!("skipped: project {} is not accessible (project_access)", req.target.project),
                                )
                            };
                            for c in results.iter_mut() {
                                *c = skip(c.name.clone());
                            }
                            for name in planned.iter().skip(1) {
                                if results.iter().all(|c: &CheckResult| c.name != *name) {
                                    results.push(skip(Cow::Borrowed(name)));
                                }
                            }
                            None
                        }
                        Reach::Unreachable => {
                            for name in ["service_account", "build_bucket"].into_iter().filter(|n| planned.contains(n)) {
                                let skipped = CheckResult::fail(
                                    name,
                                    format!("not checked: project {} is not reachable", req.target.project),
                                    vec![format!(
                                        "Fix access to project {} first (project_access); this check runs once it is reachable.",
                                        req.target.project
                                    )],
                                );
                                results.push(skipped);
                            }
                            None
                        }
                    };
                    if !inaccessible && results.iter().all(|c: &CheckResult| c.name != "service_account") {
                        let project = known.get_or_init(|| project).as_ref();
                        pending.push(Box::pin(self.check_service_account(req, project, cancel)));
                        if build {
                            pending.push(Box::pin(self.check_bucket(req, project, cancel)));
                        }
                    }
                    r
                }
                Some(r) = pending.next() => r,
                else => break,
            };
            results.push(r);
            // Reported in CHECK_ORDER, each as soon as those before it are
            // done: every run reads the same, and nothing waits on a check
            // behind it.
            while let Some(c) = planned
                .get(reported)
                .and_then(|name| results.iter().find(|c| c.name == *name))
            {
                self.report_check(c, events).await;
                reported += 1;
            }
        }
        results.sort_by_key(|c| CHECK_ORDER.iter().position(|n| *n == c.name));
        // Any not in CHECK_ORDER (none today) still reach the caller.
        for c in results
            .iter()
            .filter(|c| !CHECK_ORDER.iter().any(|n| *n == c.name))
        {
            self.report_check(c, events).await;
        }
        results
    }

    pub(super) async fn report_check(&self, c: &CheckResult, events: &Reporter) {
        crate::telemetry::metrics::preflight_check(&c.name, c.result_label());
        events
            .emit(Some(Stage::Preflight), EventKind::Check(c.clone()))
            .await;
    }

    /// One check call with a deadline, retried on transient errors.
    pub(super) async fn call<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let policy = RetryPolicy::api(self.config.retry_base_delay);
        let deadline = self.config.check_timeout;
        let result = retry(
            &policy,
            cancel,
            |_| {
                let fut = op();
                async move {
                    match tokio::time::timeout(deadline, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(CloudError::new(
                            "preflight",
                            Code::DeadlineExceeded,
                            format!("no answer within {deadline:?}"),
                        )),
                    }
                }
            },
            classify_cloud,
            |_, _, _| async {},
        )
        .await;
        match result {
            Ok((v, _)) => Ok(v),
            Err(GaveUp::Cancelled { .. }) => Err(CallError::Inconclusive("cancelled".into())),
            Err(GaveUp::Failed { error, attempts }) => {
                if classify_cloud(&error).is_retriable() {
                    Err(CallError::Inconclusive(format!(
                        "{} {} after {attempts} attempts: {}",
                        error.call,
                        error.code.name(),
                        error.message
                    )))
                } else {
                    Err(CallError::Failed(error))
                }
            }
        }
    }

    async fn check_project(
        &self,
        req: &PreflightRequest,
        cancel: &CancellationToken,
    ) -> (CheckResult, Reach) {
        const NAME: &str = "project_access";
        let p = &req.target.project;
        let q_p = shell::quote(p);
        match self.call(cancel, || self.cloud.project(p)).await {
            Ok(project) => match &project.state {
                ProjectState::Active => (
                    CheckResult::pass(
                        NAME,
                        format!("project {p} (number {}) is active", project.number),
                    ),
                    Reach::Reachable(project),
                ),
                ProjectState::DeleteRequested => (
                    CheckResult::fail(
                        NAME,
                        format!("project {p} is scheduled for deletion"),
                        vec![format!("gcloud projects undelete {q_p}")],
                    ),
                    Reach::Inaccessible,
                ),
                ProjectState::Other(s) => (
                    CheckResult::fail(
                        NAME,
                        format!("project {p} is in state {s}, not ACTIVE"),
                        vec![
                            format!("gcloud projects describe {q_p}"),
                            format!("https://console.cloud.google.com/home/dashboard?project={p}"),
                        ],
                    ),
                    Reach::Inaccessible,
                ),
            },
            Err(CallError::Failed(e)) if e.reason.as_deref() == Some("SERVICE_DISABLED") => (
                call_error_check(
                    NAME,
                    &format!("looking up project {p}"),
                    CallError::Failed(e),
                    p,
                ),
                Reach::ApiDisabled,
            ),
            Err(CallError::Failed(e)) if e.is(Code::NotFound) || e.is(Code::PermissionDenied) => (
                CheckResult::fail(
                    NAME,
                    format!(
                        "project {p} does not exist, or the caller has no access to it ({})",
                        e.code.name()
                    ),
                    vec![
                        format!("Check the project id: gcloud projects describe {q_p}"),
                        format!("https://console.cloud.google.com/home/dashboard?project={p}"),
                    ],
                ),
                Reach::Inaccessible,
            ),
            Err(e) => (
                call_error_check(NAME, &format!("looking up project {p}"), e, p),
                Reach::Unreachable,
            ),
        }
    }

    async fn check_apis(&self, req: &PreflightRequest, cancel: &CancellationToken) -> CheckResult {
        const NAME: &str = "required_apis";
        let p = &req.target.project;
        let apis = needed(req, REQUIRED_APIS, |a| BUILD_APIS.contains(&a));
        let q_p = shell::quote(p);
        match self
            .call(cancel, || self.cloud.services_enabled(p, &apis))
            .await
        {
            Ok(states) => {
                let disabled: Vec<String> = states
                    .into_iter()
                    .filter(|(_, on)| !on)
                    .map(|(name, _)| name)
                    .collect();
                if disabled.is_empty() {
                    CheckResult::pass(
                        NAME,
                        format!("all {} required APIs are enabled in {p}", apis.len()),
                    )
                } else {
                    CheckResult::fail(
                        NAME,
                        format!("disabled in project {p}: {}", disabled.join(", ")),
                        vec![
                            format!(
                                "gcloud services enable {} --project={q_p}",
                                disabled
                                    .iter()
                                    .map(|s| shell::quote(s))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                            format!("https://console.cloud.google.com/apis/library?project={p}"),
                        ],
                    )
                }
            }
            Err(e) => call_error_check(NAME, "reading API states", e, p),
        }
    }

    async fn check_permissions(
        &self,
        req: &PreflightRequest,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "permissions";
        let p = &req.target.project;
        let q_p = shell::quote(p);
        let required = needed(req, REQUIRED_PERMISSIONS, |(perm, _)| build_only(perm));
        let wanted: Vec<&str> = required.iter().map(|(perm, _)| *perm).collect();
        match self
            .call(cancel, || self.cloud.test_project_permissions(p, &wanted))
            .await
        {
            Ok(held) => {
                let missing: Vec<&(&str, &str)> = required
                    .iter()
                    .filter(|(perm, _)| !held.iter().any(|h| h == perm))
                    .collect();
                if missing.is_empty() {
                    return CheckResult::pass(
                        NAME,
                        format!("the caller holds all {} permissions on {p}", wanted.len()),
                    );
                }
                let mut roles: Vec<&str> = missing.iter().map(|(_, role)| *role).collect();
                roles.dedup();
                let member = &self.config.caller_member;
                let q_member = shell::quote(member);
                let remediation = roles
                    .iter()
                    .map(|role| format!("gcloud projects add-iam-policy-binding {q_p} --member={q_member} --role={role}"))
                    .collect();
                CheckResult::fail(
                    NAME,
                    format!(
                        "missing on project {p}: {} (granted by {})",
                        missing
                            .iter()
                            .map(|(perm, _)| *perm)
                            .collect::<Vec<_>>()
                            .join(", "),
                        roles.join(", ")
                    ),
                    remediation,
                )
            }
            Err(e) => call_error_check(NAME, "testing IAM permissions", e, p),
        }
    }

    async fn check_service_account(
        &self,
        req: &PreflightRequest,
        project: Option<&Project>,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "service_account";
        let p = &req.target.project;
        let q_p = shell::quote(p);
        let email = match (&req.service_account, project) {
            (Some(email), _) => email.clone(),
            (None, Some(project)) => format!("{}-compute@developer.gserviceaccount.com", project.number),
            (None, None) => {
                return CheckResult::fail(
                    NAME,
                    "not checked: the default runtime service account is named after the project number, which Resource Manager did not give",
                    vec![
                        format!("gcloud services enable cloudresourcemanager.googleapis.com --project={q_p}"),
                        "Or name the runtime service account (runtime.service_account).".into(),
                    ],
                )
            }
        };
        // Existence and actAs are independent questions: ask both at once.
        let (sa, act_as) = tokio::join!(
            self.call(cancel, || self.cloud.service_account(p, &email)),
            self.call(cancel, || self.cloud.can_act_as(p, &email)),
        );
        let missing = vec![format!(
            "gcloud iam service-accounts create {} --project={q_p}",
            shell::quote(email.split('@').next().unwrap_or(&email))
        )];
        let doing = format!("looking up {email}");
        let q_email = shell::quote(&email);
        if let Some(unusable) = account_unusable(NAME, sa, "runtime", &email, p, &doing, missing) {
            return unusable;
        }
        match act_as {
                Ok(true) => CheckResult::pass(NAME, format!("the caller may act as {email}")),
                Ok(false) => CheckResult::fail(
                    NAME,
                    format!("the caller lacks iam.serviceAccounts.actAs on {email}"),
                    vec![format!(
                        "gcloud iam service-accounts add-iam-policy-binding {q_email} --project={q_p} --member={} --role=roles/iam.serviceAccountUser",
                        shell::quote(&self.config.caller_member)
                    )],
                ),
                Err(e) => call_error_check(NAME, &format!("testing actAs on {email}"), e, p),
        }
    }

    async fn check_repository(
        &self,
        req: &PreflightRequest,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "artifact_registry";
        let (p, region, repo) = (
            &req.target.project,
            &req.target.region,
            &req.build.repository,
        );
        let (q_p, q_region, q_repo) = (shell::quote(p), shell::quote(region), shell::quote(repo));
        let existing = match self
            .call(cancel, || self.cloud.repository(p, region, repo))
            .await
        {
            Ok(r) => r,
            Err(e) => return call_error_check(NAME, &format!("reading repository {repo}"), e, p),
        };
        match existing {
            Some(r) if r.format == "DOCKER" => {
                CheckResult::pass(NAME, format!("Docker repository {repo} exists in {region}"))
            }
            Some(r) => CheckResult::fail(
                NAME,
                format!("repository {repo} in {region} has format {}, not DOCKER", r.format),
                vec![
                    "Choose another repository name (build.repository), or:".into(),
                    format!("gcloud artifacts repositories create {q_repo}-docker --repository-format=docker --location={q_region} --project={q_p}"),
                ],
            ),
            None => match self.call(cancel, || self.cloud.create_repository(p, region, repo)).await {
                Ok(()) => CheckResult::pass(NAME, format!("created Docker repository {repo} in {region}")),
                // Someone created it between our read and our create: fine.
                Err(CallError::Failed(e)) if e.is(Code::AlreadyExists) => {
                    CheckResult::pass(NAME, format!("Docker repository {repo} exists in {region}"))
                }
                Err(e) => call_error_check(NAME, &format!("creating repository {repo}"), e, p),
            },
        }
    }

    async fn check_bucket(
        &self,
        req: &PreflightRequest,
        project: Option<&Project>,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "build_bucket";
        let p = &req.target.project;
        let bucket = naming::source_bucket(p, &req.target.region);
        // Without the project number ownership cannot be proven; the
        // project_access check already fails in that case.
        let owned = |b: &super::cloud::Bucket| project.is_none_or(|p| b.project_number == p.number);
        let existing = match self.call(cancel, || self.cloud.bucket(&bucket)).await {
            Ok(b) => b,
            Err(e) => return call_error_check(NAME, &format!("reading bucket {bucket}"), e, p),
        };
        let created = match existing {
            Some(b) if owned(&b) => {
                return CheckResult::pass(NAME, format!("bucket gs://{bucket} exists"))
            }
            Some(_) => return squatted(&bucket, p),
            None => {
                self.call(cancel, || {
                    self.cloud.create_bucket(p, &req.target.region, &bucket)
                })
                .await
            }
        };
        match created {
            Ok(()) => CheckResult::pass(NAME, format!("created bucket gs://{bucket}")),
            // Bucket names are global: a 409 may be a concurrent deployd or a stranger.
            Err(CallError::Failed(e)) if e.is(Code::AlreadyExists) || e.is(Code::Aborted) => {
                match self.call(cancel, || self.cloud.bucket(&bucket)).await {
                    Ok(Some(b)) if owned(&b) => {
                        CheckResult::pass(NAME, format!("bucket gs://{bucket} exists"))
                    }
                    Ok(_) => squatted(&bucket, p),
                    Err(e) => call_error_check(NAME, &format!("reading bucket {bucket}"), e, p),
                }
            }
            Err(e) => call_error_check(NAME, &format!("creating bucket {bucket}"), e, p),
        }
    }

    async fn check_network_policies(
        &self,
        req: &PreflightRequest,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "network_policies";
        let p = &req.target.project;
        let q_p = shell::quote(p);
        let ingress = req.ingress.unwrap_or(Ingress::All);
        let mut wanted = vec![("run.allowedIngress", ingress.policy_value())];
        if let Some(egress) = req.vpc_egress {
            wanted.push(("run.allowedVPCEgress", egress.policy_value()));
        }
        let mut violations = Vec::new();
        for (constraint, value) in &wanted {
            match self
                .call(cancel, || self.cloud.effective_list_policy(p, constraint))
                .await
            {
                Ok(policy) if policy.allows(value) => {}
                Ok(policy) => violations.push(format!(
                    "constraints/{constraint} does not allow {value:?} (effective policy: {})",
                    describe_policy(&policy)
                )),
                Err(e) => {
                    return call_error_check(
                        NAME,
                        &format!("reading constraints/{constraint}"),
                        e,
                        p,
                    )
                }
            }
        }
        if violations.is_empty() {
            let what: Vec<String> = wanted.iter().map(|(c, v)| format!("{c}={v}")).collect();
            CheckResult::pass(NAME, format!("org policies allow {}", what.join(", ")))
        } else {
            let mut remediation = vec!["Choose settings the policy allows (runtime.ingress / runtime.vpc_egress), or ask your organization policy administrator for an exception:".into()];
            for (constraint, _) in &wanted {
                let q_constraint = shell::quote(constraint);
                remediation.push(format!(
                    "gcloud org-policies describe {q_constraint} --effective --project={q_p}"
                ));
            }
            CheckResult::fail(
                NAME,
                format!("project {p}: {}", violations.join("; ")),
                remediation,
            )
        }
    }
}

fn describe_policy(p: &super::cloud::ListPolicy) -> String {
    use super::cloud::ListPolicy::*;
    match p {
        AllowAll => "allow all".into(),
        DenyAll => "deny all".into(),
        Allowed(v) => format!("allowed values {}", v.join(", ")),
        Denied(v) => format!("denied values {}", v.join(", ")),
    }
}

fn squatted(bucket: &str, project: &str) -> CheckResult {
    CheckResult::fail(
        "build_bucket",
        format!("bucket gs://{bucket} exists but belongs to another project"),
        vec![format!(
            "Bucket names are global; delete or rename the other bucket, or deploy from a project whose bucket name is free (deployd uses {}).",
            naming::source_bucket(project, "REGION")
        )],
    )
}

impl Pipeline {
    /// The build configuration deployd would submit, checked against Cloud
    /// Build's limits, and the service account the build will run as: the
    /// requested one (which needs actAs), or the project's default.
    async fn check_cloud_build(
        &self,
        req: &PreflightRequest,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "cloud_build";
        let config = check_build_config(req);
        if !config.ok {
            return config;
        }
        let p = &req.target.project;
        let q_p = shell::quote(p);
        let Some(email) = req.build.service_account.as_deref() else {
            return self.check_default_builder(config, p, cancel).await;
        };
        let (sa, act_as) = tokio::join!(
            self.call(cancel, || self.cloud.service_account(p, email)),
            self.call(cancel, || self.cloud.can_act_as(p, email)),
        );
        let doing = format!("looking up build service account {email}");
        let q_email = shell::quote(email);
        let missing = vec![format!(
            "gcloud iam service-accounts create {} --project={q_p}",
            shell::quote(email.split('@').next().unwrap_or(email))
        )];
        if let Some(unusable) = account_unusable(NAME, sa, "build", email, p, &doing, missing) {
            return unusable;
        }
        match act_as {
            Ok(true) => CheckResult::pass(NAME, format!("{}; builds run as {email}", config.detail)),
            Ok(false) => CheckResult::fail(
                NAME,
                format!("the caller lacks iam.serviceAccounts.actAs on the build service account {email}"),
                vec![format!(
                    "gcloud iam service-accounts add-iam-policy-binding {q_email} --project={q_p} --member={} --role=roles/iam.serviceAccountUser",
                    shell::quote(&self.config.caller_member)
                )],
            ),
            Err(e) => call_error_check(NAME, &doing, e, p),
        }
    }

    /// A build that names no service account runs as the project's default
    /// Cloud Build account, which must exist and be enabled (a disabled
    /// compute default account is a common reason builds fail to start).
    async fn check_default_builder(
        &self,
        config: CheckResult,
        p: &str,
        cancel: &CancellationToken,
    ) -> CheckResult {
        const NAME: &str = "cloud_build";
        let choose = |why: &str| {
            vec![
                format!("Set build.service_account (--build-service-account) to an account with roles/cloudbuild.builds.builder {why}"),
                format!("https://console.cloud.google.com/cloud-build/settings/service-account?project={p}"),
            ]
        };
        let email = match self
            .call(cancel, || self.cloud.default_build_service_account(p))
            .await
        {
            Ok(Some(email)) => email,
            Ok(None) => {
                return CheckResult::fail(
                    NAME,
                    format!("project {p} has no default Cloud Build service account and build.service_account is not set"),
                    choose("(the project has no default)"),
                )
            }
            Err(e) => {
                return call_error_check(NAME, "reading Cloud Build's default service account", e, p)
            }
        };
        // The legacy account is Google-managed: not an IAM resource of the
        // project, so there is nothing more to look up.
        if email.ends_with("@cloudbuild.gserviceaccount.com") {
            return CheckResult::pass(
                NAME,
                format!(
                    "{}; builds run as the legacy Cloud Build account {email}",
                    config.detail
                ),
            );
        }
        let sa = self
            .call(cancel, || self.cloud.service_account(p, &email))
            .await;
        let doing = format!("looking up Cloud Build's default service account {email}");
        let missing = choose("(the default was deleted)");
        account_unusable(
            NAME,
            sa,
            "Cloud Build's default",
            &email,
            p,
            &doing,
            missing,
        )
        .unwrap_or_else(|| {
            CheckResult::pass(
                NAME,
                format!("{}; builds run as the default {email}", config.detail),
            )
        })
    }
}

/// Why a service account cannot be used, if it cannot: it could not be
/// looked up, does not exist, or is disabled.
fn account_unusable(
    name: &'static str,
    looked_up: Result<Option<super::cloud::ServiceAccount>, CallError>,
    role: &str,
    email: &str,
    p: &str,
    doing: &str,
    missing_remediation: Vec<String>,
) -> Option<CheckResult> {
    let (q_email, q_p) = (shell::quote(email), shell::quote(p));
    match looked_up {
        Ok(Some(sa)) if !sa.disabled => None,
        Ok(Some(_)) => Some(CheckResult::fail(
            name,
            format!("{role} service account {email} is disabled"),
            vec![format!(
                "gcloud iam service-accounts enable {q_email} --project={q_p}"
            )],
        )),
        Ok(None) => Some(CheckResult::fail(
            name,
            format!("{role} service account {email} does not exist in project {p}"),
            missing_remediation,
        )),
        Err(e) => Some(call_error_check(name, doing, e, p)),
    }
}

/// The request deployd is about to make, checked against Cloud Build's
/// limits; no API call.
fn check_build_config(req: &PreflightRequest) -> CheckResult {
    const NAME: &str = "cloud_build";
    let b: &BuildOptions = &req.build;
    if let Err(e) = b.validate() {
        return CheckResult::fail(NAME, e.to_string(), vec![format!("Fix {}.", e.field)]);
    }
    let image = naming::image(&req.target, &b.repository);
    let repo_prefix = format!(
        "{}-docker.pkg.dev/{}/{}/",
        req.target.region,
        naming::project_path(&req.target.project),
        b.repository
    );
    if !image.starts_with(&repo_prefix) {
        return CheckResult::fail(
            NAME,
            format!("image {image} is outside repository {repo_prefix}"),
            vec!["Name the repository with lowercase letters, digits and hyphens only (build.repository).".into()],
        );
    }
    CheckResult::pass(
        NAME,
        format!(
            "machine {}, build timeout {}s, step timeout {}s, image {image}, {}",
            b.machine_type,
            b.timeout.as_secs(),
            b.step_timeout.as_secs(),
            match &b.service_account {
                Some(_) => "own build service account",
                None => "Cloud Build's default service account",
            }
        ),
    )
}

/// A check whose API call failed: names what was being done and why.
pub(super) fn call_error_check(
    name: &'static str,
    doing: &str,
    e: CallError,
    project: &str,
) -> CheckResult {
    match e {
        CallError::Inconclusive(why) => CheckResult::inconclusive(name, format!("{doing}: {why}")),
        CallError::Failed(e) => {
            let remediation = super::error::cloud_remediation(&e, project);
            CheckResult::fail(
                name,
                format!(
                    "{doing} in project {project} failed: {} {}",
                    e.code.name(),
                    e.message
                ),
                remediation,
            )
        }
    }
}

/// Remediation of failed checks, deduplicated, in [`CHECK_ORDER`].
pub fn gather_remediation(checks: &[CheckResult]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok && !c.skipped) {
        for r in &c.remediation {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}

/// Preflight's share of the deploy defaults, so a Deploy and a Preflight of
/// the same target check the same things.
pub fn request_for_deploy(d: &super::model::DeployRequest) -> PreflightRequest {
    PreflightRequest {
        target: d.target.clone(),
        service_account: d.runtime.service_account.clone(),
        ingress: d.runtime.ingress,
        vpc_egress: d.runtime.vpc_egress,
        build: d.build.clone(),
        prebuilt_image: d.source.image().is_some(),
    }
}

#[cfg(test)]
mod project_checks_tests {
    #[test]
    fn project_checks_end_before_a_deploys_own() {
        assert_eq!(super::PROJECT_CHECKS.first(), Some(&"project_access"));
        assert_eq!(super::PROJECT_CHECKS.last(), Some(&"network_policies"));
    }
}
