//! The preflight catalogue: one test per common failure mode, each injected
//! into the sandbox. For each: the right checks fail (and only those), the
//! remediation carries the right command, and nothing was uploaded or built.

mod common;

use std::collections::BTreeMap;

use common::*;
use deployd::api::proto::{self, Stage};
use deployd::sandbox::faults::{Fault, FaultAction, InjectedError};
use deployd::sandbox::world::{ProjectState, Repository};
use deployd::sandbox::Sandbox;
use serde_json::json;

/// A Deploy that preflight must stop.
async fn stopped_by_preflight(
    setup: impl FnOnce(&Sandbox),
    tweak: impl FnOnce(&mut proto::DeployRequest),
    failing: &[&str],
    remediation: &[&str],
) -> proto::Outcome {
    let h = Harness::start().await;
    setup(&h.sandbox);
    let mut req = deploy_request("api", &example_app());
    tweak(&mut req);
    let (events, o) = deploy(&h, req).await;
    assert!(!o.success);
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight), "{:?}", o.error);
    let mut failed: Vec<&str> = o
        .checks
        .iter()
        .filter(|c| !c.ok && !c.skipped)
        .map(|c| c.name.as_str())
        .collect();
    failed.sort();
    let mut want = failing.to_vec();
    want.sort();
    assert_eq!(failed, want, "failing checks: {:#?}", o.checks);
    // Every check was streamed as it completed.
    assert_eq!(checks(&events).len(), 8);
    let err = o.error.clone().expect("failure");
    assert_eq!(err.code, "PREFLIGHT_FAILED");
    for r in remediation {
        assert!(
            err.remediation.iter().any(|x| x.contains(r)),
            "{r:?} in {:#?}",
            err.remediation
        );
    }
    // No message is just "permission denied": each names what it is about,
    // and says what to do.
    for c in o.checks.iter().filter(|c| !c.ok && !c.skipped) {
        assert!(c.detail.len() > 30, "{}: {}", c.name, c.detail);
        assert!(
            !c.remediation.is_empty(),
            "{} says what failed but not what to do: {}",
            c.name,
            c.detail
        );
    }
    // Fails closed: nothing was uploaded or built.
    assert_eq!(h.sandbox.count("storage.objects.insert"), 0);
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
    assert_eq!(h.sandbox.count("run.projects.locations.services.create"), 0);
    o
}

fn no_tweak(_: &mut proto::DeployRequest) {}

fn disable(api: &'static str) -> impl FnOnce(&Sandbox) {
    move |sb| {
        sb.with_project(PROJECT, |p| p.enabled_apis.remove(api));
    }
}

fn withhold(prefix: &'static str) -> impl FnOnce(&Sandbox) {
    move |sb| {
        sb.with_project(PROJECT, |p: &mut ProjectState| {
            p.permissions.retain(|perm| !perm.starts_with(prefix))
        });
    }
}

fn check<'a>(o: &'a proto::Outcome, name: &str) -> &'a proto::Check {
    o.checks
        .iter()
        .find(|c| c.name == name)
        .expect("check present")
}

#[tokio::test]
async fn cloudbuild_api_disabled() {
    let o = stopped_by_preflight(
        disable("cloudbuild.googleapis.com"),
        no_tweak,
        // The builder's account cannot be read through a disabled API.
        &["required_apis", "cloud_build"],
        &[
            "gcloud services enable cloudbuild.googleapis.com --project=demo-project",
            "https://console.cloud.google.com/apis/library?project=demo-project",
        ],
    )
    .await;
    assert!(check(&o, "required_apis")
        .detail
        .contains("cloudbuild.googleapis.com"));
}

#[tokio::test]
async fn run_api_disabled() {
    stopped_by_preflight(
        disable("run.googleapis.com"),
        no_tweak,
        &["required_apis"],
        &["gcloud services enable run.googleapis.com --project=demo-project"],
    )
    .await;
}

#[tokio::test]
async fn artifactregistry_api_disabled() {
    let o = stopped_by_preflight(
        disable("artifactregistry.googleapis.com"),
        no_tweak,
        &["required_apis", "artifact_registry"],
        &["gcloud services enable artifactregistry.googleapis.com --project=demo-project"],
    )
    .await;
    // The repository check says why it could not look: the API is off.
    assert!(check(&o, "artifact_registry")
        .detail
        .contains("PERMISSION_DENIED"));
}

#[tokio::test]
async fn cloudresourcemanager_api_disabled() {
    let o = stopped_by_preflight(
        disable("cloudresourcemanager.googleapis.com"),
        no_tweak,
        &[
            "project_access",
            "required_apis",
            "permissions",
            "service_account",
        ],
        &["gcloud services enable cloudresourcemanager.googleapis.com --project=demo-project"],
    )
    .await;
    // The other checks still ran.
    assert!(check(&o, "artifact_registry").ok);
    assert!(check(&o, "network_policies").ok);
}

#[tokio::test]
async fn secretmanager_api_disabled() {
    stopped_by_preflight(
        disable("secretmanager.googleapis.com"),
        no_tweak,
        &["required_apis"],
        &["gcloud services enable secretmanager.googleapis.com --project=demo-project"],
    )
    .await;
}

#[tokio::test]
async fn cloud_run_admin_role_missing() {
    let o = stopped_by_preflight(
        withhold("run."),
        no_tweak,
        &["permissions"],
        &["gcloud projects add-iam-policy-binding demo-project --member=user:dev@example.com --role=roles/run.admin"],
    )
    .await;
    assert!(check(&o, "permissions")
        .detail
        .contains("run.services.create"));
}

#[tokio::test]
async fn cloud_build_editor_role_missing() {
    stopped_by_preflight(
        withhold("cloudbuild."),
        no_tweak,
        // Reading the builder's default account needs cloudbuild.builds.get.
        &["permissions", "cloud_build"],
        &["gcloud projects add-iam-policy-binding demo-project --member=user:dev@example.com --role=roles/cloudbuild.builds.editor"],
    )
    .await;
}

#[tokio::test]
async fn artifact_registry_admin_role_missing() {
    stopped_by_preflight(
        withhold("artifactregistry."),
        no_tweak,
        &["permissions", "artifact_registry"],
        &["--role=roles/artifactregistry.admin"],
    )
    .await;
}

#[tokio::test]
async fn storage_admin_role_missing() {
    stopped_by_preflight(
        withhold("storage."),
        no_tweak,
        &["permissions", "build_bucket"],
        &["--role=roles/storage.admin"],
    )
    .await;
}

#[tokio::test]
async fn service_account_user_role_missing() {
    stopped_by_preflight(
        withhold("iam.serviceAccounts.actAs"),
        no_tweak,
        &["permissions", "service_account"],
        &["--role=roles/iam.serviceAccountUser"],
    )
    .await;
}

#[tokio::test]
async fn no_act_as_on_the_runtime_service_account() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| p.act_as_denied.insert("100000000001-compute@developer.gserviceaccount.com".into()));
        },
        no_tweak,
        &["service_account"],
        &["gcloud iam service-accounts add-iam-policy-binding 100000000001-compute@developer.gserviceaccount.com --project=demo-project --member=user:dev@example.com --role=roles/iam.serviceAccountUser"],
    )
    .await;
    assert!(check(&o, "service_account")
        .detail
        .contains("iam.serviceAccounts.actAs"));
}

#[tokio::test]
async fn runtime_service_account_missing() {
    stopped_by_preflight(
        |_| {},
        |r| {
            if let Some(rt) = r.runtime.as_mut() {
                rt.service_account = "ghost@demo-project.iam.gserviceaccount.com".into();
            }
        },
        &["service_account"],
        &["gcloud iam service-accounts create ghost --project=demo-project"],
    )
    .await;
}

#[tokio::test]
async fn repository_of_the_wrong_format() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| {
                p.repositories.insert(
                    ("us-central1".into(), "deployd".into()),
                    Repository {
                        format: "NPM".into(),
                        description: String::new(),
                        create_time: String::new(),
                        tags: BTreeMap::new(),
                        digests: Default::default(),
                    },
                )
            });
        },
        no_tweak,
        &["artifact_registry"],
        &["--repository-format=docker --location=us-central1 --project=demo-project"],
    )
    .await;
    assert!(check(&o, "artifact_registry").detail.contains("format NPM"));
}

#[tokio::test]
async fn project_not_found() {
    let o = stopped_by_preflight(
        |_| {},
        |r| {
            r.target = Some(proto::Target {
                project: "ghost-project".into(),
                ..target("api")
            })
        },
        &["project_access"],
        &["gcloud projects describe ghost-project"],
    )
    .await;
    assert!(check(&o, "project_access")
        .detail
        .contains("ghost-project does not exist"));
    said_once_with_the_rest_skipped(&o);
}

/// An inaccessible project is said once: every other check is skipped
/// (no remedy of its own, no placeholder member), and the failure's
/// remedies are project_access's alone.
fn said_once_with_the_rest_skipped(o: &proto::Outcome) {
    let skipped: Vec<&str> = o
        .checks
        .iter()
        .filter(|c| c.skipped)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(skipped.len(), 7, "{:#?}", o.checks);
    assert!(o
        .checks
        .iter()
        .filter(|c| c.skipped)
        .all(|c| !c.ok && c.remediation.is_empty() && c.detail.contains("project_access")));
    let err = o.error.clone().expect("failure");
    assert_eq!(err.remediation, check(o, "project_access").remediation);
    assert!(
        err.message
            .contains("1 of 8 preflight checks did not pass: project_access; 7 skipped"),
        "{}",
        err.message
    );
    assert!(!err.remediation.iter().any(|r| r.contains("YOUR_EMAIL")));
}

#[tokio::test]
async fn project_scheduled_for_deletion() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| p.lifecycle = "DELETE_REQUESTED".into());
        },
        no_tweak,
        &["project_access"],
        &["gcloud projects undelete demo-project"],
    )
    .await;
    said_once_with_the_rest_skipped(&o);
    // Resource Manager still answers for it; every other API refuses.
}

#[tokio::test]
async fn org_policy_forbids_the_requested_ingress() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| {
                p.policies.insert(
                    "run.allowedIngress".into(),
                    json!({"rules": [{"values": {"allowedValues": ["is:internal", "is:internal-and-cloud-load-balancing"]}}]}),
                )
            });
        },
        no_tweak,
        &["network_policies"],
        &["gcloud org-policies describe run.allowedIngress --effective --project=demo-project"],
    )
    .await;
    let detail = &check(&o, "network_policies").detail;
    assert!(
        detail.contains("constraints/run.allowedIngress"),
        "{detail}"
    );
    assert!(detail.contains("\"all\""), "{detail}");
    assert!(
        detail.contains("internal, internal-and-cloud-load-balancing"),
        "{detail}"
    );
}

#[tokio::test]
async fn org_policy_forbids_the_requested_vpc_egress() {
    stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| {
                p.policies.insert(
                    "run.allowedVPCEgress".into(),
                    json!({"rules": [{"values": {"allowedValues": ["private-ranges-only"]}}]}),
                )
            });
        },
        |r| {
            if let Some(rt) = r.runtime.as_mut() {
                rt.vpc_egress = proto::VpcEgress::AllTraffic.into();
                rt.vpc_connector = "c1".into();
            }
        },
        &["network_policies"],
        &["gcloud org-policies describe run.allowedVPCEgress --effective --project=demo-project"],
    )
    .await;
}

#[tokio::test]
async fn bucket_name_taken_by_another_project() {
    stopped_by_preflight(
        |sb| {
            sb.add_project("someone-else");
            sb.add_bucket("deployd-demo-project-us-central1", "someone-else");
        },
        no_tweak,
        &["build_bucket"],
        &["Bucket names are global"],
    )
    .await;
}

#[tokio::test]
async fn a_check_call_that_never_answers_is_inconclusive() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "orgpolicy.projects.policies.getEffectivePolicy".into(),
        remaining: 5,
        action: FaultAction::Hang,
    });
    let (events, o) = deploy(&h, deploy_request("api", &example_app())).await;
    assert!(!o.success);
    let c = check(&o, "network_policies");
    assert!(!c.ok && c.inconclusive, "{c:?}");
    assert!(c.detail.contains("after 5 attempts"), "{}", c.detail);
    // Only an inconclusive check failed: trying again may help.
    assert!(o.error.expect("failure").retriable);
    assert!(o
        .checks
        .iter()
        .filter(|c| c.name != "network_policies")
        .all(|c| c.ok));
    assert_eq!(checks(&events).len(), 8);
    assert_eq!(
        h.sandbox
            .count("orgpolicy.projects.policies.getEffectivePolicy"),
        5
    );
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
}

#[tokio::test]
async fn several_failures_at_once_in_the_order_to_fix_them() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| {
                p.enabled_apis.remove("run.googleapis.com");
                p.permissions
                    .retain(|perm| !perm.starts_with("cloudbuild."));
                p.policies.insert(
                    "run.allowedIngress".into(),
                    json!({"rules": [{"denyAll": true}]}),
                );
            });
        },
        no_tweak,
        &[
            "required_apis",
            "permissions",
            "cloud_build",
            "network_policies",
        ],
        &[],
    )
    .await;
    let r = o.error.expect("failure").remediation;
    let pos = |needle: &str| {
        r.iter()
            .position(|x| x.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {r:#?}"))
    };
    // APIs first, then roles, then policies.
    assert!(
        pos("gcloud services enable run.googleapis.com")
            < pos("--role=roles/cloudbuild.builds.editor")
    );
    assert!(pos("--role=roles/cloudbuild.builds.editor") < pos("gcloud org-policies describe"));
    // Deduplicated.
    let mut unique = r.clone();
    unique.dedup();
    assert_eq!(unique.len(), r.len());
}

#[tokio::test]
async fn missing_repository_is_created_and_the_check_passes() {
    let h = Harness::start().await;
    let o = preflight(&h).await;
    assert!(o.success);
    assert_eq!(
        check(&o, "artifact_registry").detail,
        "created Docker repository deployd in us-central1"
    );
    let create = h
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.method == "artifactregistry.projects.locations.repositories.create")
        .expect("create call");
    assert_eq!(create.query, "repositoryId=deployd");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&create.body).expect("json")["format"],
        "DOCKER"
    );
}

#[tokio::test]
async fn repository_created_concurrently_is_success() {
    let h = Harness::start().await;
    // Our read says missing, but someone else's create lands first.
    h.sandbox.inject(Fault {
        method: "artifactregistry.projects.locations.repositories.create".into(),
        remaining: 1,
        action: FaultAction::Error(InjectedError::new(
            409,
            "ALREADY_EXISTS",
            "the repository already exists",
        )),
    });
    let o = preflight(&h).await;
    assert!(o.success, "{:?}", o.checks);
    assert_eq!(
        check(&o, "artifact_registry").detail,
        "Docker repository deployd exists in us-central1"
    );
}

#[tokio::test]
async fn missing_bucket_is_created_and_the_check_passes() {
    let h = Harness::start().await;
    let o = preflight(&h).await;
    assert!(o.success);
    assert_eq!(
        check(&o, "build_bucket").detail,
        "created bucket gs://deployd-demo-project-us-central1"
    );
    let insert = h
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.method == "storage.buckets.insert")
        .expect("insert call");
    assert_eq!(insert.query, "project=demo-project");
    let body: serde_json::Value = serde_json::from_slice(&insert.body).expect("json");
    assert_eq!(body["location"], "us-central1");
    assert_eq!(
        body["iamConfiguration"]["publicAccessPrevention"],
        "enforced"
    );
}

#[tokio::test]
async fn resource_exhausted_then_success_is_retried() {
    let h = Harness::start().await;
    h.sandbox.inject(Fault {
        method: "serviceusage.services.batchGet".into(),
        remaining: 2,
        action: FaultAction::Error(InjectedError::rate_limited("serviceusage.googleapis.com")),
    });
    let o = preflight(&h).await;
    assert!(o.success, "{:?}", o.checks);
    let calls: Vec<u16> = h
        .sandbox
        .requests_of("serviceusage.services.batchGet")
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(calls, vec![429, 429, 200]);
}

#[tokio::test]
async fn preflight_failures_are_counted_by_check_and_result() {
    let h = Harness::start().await;
    h.sandbox
        .with_project(PROJECT, |p| p.enabled_apis.remove("run.googleapis.com"));
    let o = preflight(&h).await;
    assert!(!o.success);
    let m = h.metrics().await;
    assert!(
        counter(
            &m,
            "deployd_preflight_checks_total",
            "check=\"required_apis\",result=\"fail\""
        ) >= 1.0
    );
    assert!(
        counter(
            &m,
            "deployd_preflight_checks_total",
            "check=\"permissions\",result=\"pass\""
        ) >= 1.0
    );
}

#[tokio::test]
async fn build_service_account_missing() {
    let o = stopped_by_preflight(
        |_| {},
        |r| {
            r.build = Some(proto::BuildOptions {
                service_account: "builder@demo-project.iam.gserviceaccount.com".into(),
                ..Default::default()
            })
        },
        &["cloud_build"],
        &["gcloud iam service-accounts create builder --project=demo-project"],
    )
    .await;
    assert!(check(&o, "cloud_build")
        .detail
        .contains("build service account builder@"));
}

#[tokio::test]
async fn build_runs_as_the_requested_service_account() {
    let h = Harness::start().await;
    let email = "builder@demo-project.iam.gserviceaccount.com";
    h.sandbox
        .with_project(PROJECT, |p| p.service_accounts.insert(email.into(), false));
    let mut req = deploy_request("own-sa", &example_app());
    req.build = Some(proto::BuildOptions {
        service_account: email.into(),
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    assert!(check(&o, "cloud_build").detail.contains(email));
    let build = &h.sandbox.builds()[0];
    assert_eq!(
        build["serviceAccount"],
        format!("projects/demo-project/serviceAccounts/{email}")
    );
    // With a service account, Cloud Build requires our own logs bucket.
    assert_eq!(
        build["logsBucket"],
        "gs://deployd-demo-project-us-central1/logs"
    );
}

/// The default compute account of the sandbox's project (number 100000000001).
const COMPUTE_SA: &str = "100000000001-compute@developer.gserviceaccount.com";

/// Runs the service as another account, so that only the builder is at fault.
fn runtime_as_invoker(r: &mut proto::DeployRequest) {
    if let Some(rt) = r.runtime.as_mut() {
        rt.service_account = deployd::sandbox::invoker_service_account(PROJECT);
    }
}

#[tokio::test]
async fn default_build_service_account_disabled() {
    let enable = format!("gcloud iam service-accounts enable {COMPUTE_SA} --project=demo-project");
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| {
                p.service_accounts.insert(COMPUTE_SA.into(), true)
            });
        },
        runtime_as_invoker,
        &["cloud_build"],
        &[&enable],
    )
    .await;
    assert!(
        check(&o, "cloud_build").detail.contains(&format!(
            "Cloud Build's default service account {COMPUTE_SA} is disabled"
        )),
        "{}",
        check(&o, "cloud_build").detail
    );
}

#[tokio::test]
async fn default_build_service_account_deleted() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| p.service_accounts.remove(COMPUTE_SA));
        },
        runtime_as_invoker,
        &["cloud_build"],
        &[
            "Set build.service_account (--build-service-account)",
            "https://console.cloud.google.com/cloud-build/settings/service-account?project=demo-project",
        ],
    )
    .await;
    assert!(check(&o, "cloud_build").detail.contains("does not exist"));
}

#[tokio::test]
async fn project_without_a_default_build_service_account() {
    let o = stopped_by_preflight(
        |sb| {
            sb.with_project(PROJECT, |p| p.default_build_service_account = None);
        },
        no_tweak,
        &["cloud_build"],
        &["Set build.service_account (--build-service-account)"],
    )
    .await;
    assert!(check(&o, "cloud_build")
        .detail
        .contains("no default Cloud Build service account"));
}

#[tokio::test]
async fn legacy_default_build_service_account_needs_no_lookup() {
    // Projects from before 2024 build as a Google-managed account that is
    // not an IAM resource of the project.
    let legacy = "100000000001@cloudbuild.gserviceaccount.com";
    let h = Harness::start().await;
    h.sandbox.with_project(PROJECT, |p| {
        p.default_build_service_account = Some(legacy.into());
        p.service_accounts.remove(COMPUTE_SA);
    });
    let mut req = deploy_request("legacy-builder", &example_app());
    runtime_as_invoker(&mut req);
    let (_, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    assert!(check(&o, "cloud_build").detail.contains(legacy));
    let looked_up: Vec<String> = h
        .sandbox
        .requests_of("iam.projects.serviceAccounts.get")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert!(
        looked_up
            .iter()
            .all(|path| !path.contains("cloudbuild.gserviceaccount.com")),
        "{looked_up:?}"
    );
    // The build named no account: Cloud Build used the default.
    assert!(h.sandbox.builds()[0].get("serviceAccount").is_none());
}

/// A deploy whose preflight passes but for Cloud Run's verdict on the
/// revision: the project is fine, the settings are not.
async fn refused_revision(
    tweak: impl FnOnce(&mut proto::DeployRequest),
) -> (Harness, proto::Outcome) {
    let h = Harness::start().await;
    let mut req = deploy_request("api", &example_app());
    tweak(&mut req);
    let (_, o) = deploy(&h, req).await;
    assert_eq!(o.failed_stage, i32::from(Stage::Preflight), "{o:?}");
    let failed: Vec<&str> = o
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["revision_spec"], "{:#?}", o.checks);
    // Asked with validateOnly; nothing uploaded, built or created.
    let asked = h
        .sandbox
        .requests_of("run.projects.locations.services.create");
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].query.contains("validateOnly=true"),
        "{}",
        asked[0].query
    );
    assert_eq!(h.sandbox.count("storage.objects.insert"), 0);
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
    assert!(h.sandbox.service(PROJECT, &o_region(&o), "api").is_none());
    (h, o)
}

fn o_region(o: &proto::Outcome) -> String {
    o.checks
        .iter()
        .find(|c| c.name == "revision_spec")
        .map(|c| {
            if c.detail.contains("mars-north1") {
                "mars-north1".to_string()
            } else {
                REGION.to_string()
            }
        })
        .unwrap_or_else(|| REGION.to_string())
}

#[tokio::test]
async fn cloud_run_refuses_a_cpu_its_memory_does_not_allow_before_any_upload() {
    let (_, o) = refused_revision(|r| {
        let rt = r.runtime.get_or_insert_with(Default::default);
        // Each is valid alone; under one CPU Cloud Run allows 512Mi at most.
        rt.cpu = "0.5".into();
        rt.memory = "1Gi".into();
    })
    .await;
    let c = check(&o, "revision_spec");
    assert!(c.detail.contains("resources.limits.cpu"), "{c:?}");
    assert!(c.remediation[0].contains("runtime.cpu"), "{c:?}");
}

#[tokio::test]
async fn cloud_run_refuses_an_unknown_region_before_any_upload() {
    let (_, o) = refused_revision(|r| {
        r.target.as_mut().expect("target").region = "mars-north1".into();
    })
    .await;
    let c = check(&o, "revision_spec");
    assert!(c.detail.contains("not a Cloud Run region"), "{c:?}");
}

/// The sandbox refuses what Cloud Run refuses, whoever asks (gcloud too).
#[tokio::test]
async fn the_sandbox_validates_revisions_as_cloud_run_does() {
    let h = Harness::start().await;
    let client = reqwest::Client::new();
    let create = |cpu: &str, memory: &str, validate_only: bool| {
        let url = format!(
            "{}/v2/projects/{PROJECT}/locations/{REGION}/services?serviceId=direct{}",
            h.sandbox.base_url(),
            if validate_only {
                "&validateOnly=true"
            } else {
                ""
            }
        );
        client.post(url).json(&json!({"template": {"containers": [{
            "image": "us-docker.pkg.dev/cloudrun/container/hello",
            "resources": {"limits": {"cpu": cpu, "memory": memory}}}]}}))
    };
    for (cpu, memory) in [
        ("lots", "512Mi"),
        ("1", "1 gig"),
        ("4", "512Mi"),
        ("1", "8Gi"),
    ] {
        let r = create(cpu, memory, false).send().await.expect("send");
        assert_eq!(r.status(), 400, "{cpu} {memory}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{body}");
    }
    // validateOnly accepts a good spec and keeps nothing.
    let r = create("2", "8Gi", true).send().await.expect("send");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    assert!(h.sandbox.service(PROJECT, REGION, "direct").is_none());
}

/// A prebuilt image needs no build: its deploy's preflight neither requires
/// Cloud Build or Artifact Registry (both disabled here after a first
/// deploy built the image) nor checks or creates a repository or bucket,
/// and nothing reaches Cloud Build or Cloud Storage.
#[tokio::test]
async fn an_image_deploy_needs_nothing_a_build_needs() {
    let h = Harness::start().await;
    let (_, built) = deploy(&h, deploy_request("from-source", &example_app())).await;
    assert!(built.success, "{built:?}");
    h.sandbox.with_project(PROJECT, |p| {
        p.enabled_apis.remove("cloudbuild.googleapis.com");
        p.enabled_apis.remove("artifactregistry.googleapis.com");
    });
    let seen = h.sandbox.requests().len();
    let mut req = deploy_request("prebuilt", &example_app());
    req.source = Some(proto::Source {
        kind: Some(proto::source::Kind::Image(built.image.clone())),
        ..Default::default()
    });
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    let names: Vec<String> = checks(&events).into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "project_access",
            "required_apis",
            "permissions",
            "service_account",
            "network_policies",
            "revision_spec"
        ]
    );
    let after: Vec<String> = h.sandbox.requests()[seen..]
        .iter()
        .map(|r| r.method.clone())
        .filter(|m| {
            m.starts_with("cloudbuild.")
                || m.starts_with("storage.")
                || m.starts_with("artifactregistry.")
        })
        .collect();
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(o.image, built.image);
}
