//! Hardening: bad input refused before anything runs, every Google call
//! retried, mutations safe to repeat, cancellation that leaves traffic on a
//! healthy revision, and a first deploy that is honest about what serves.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use deployd::api::proto;
use deployd::sandbox::faults::{AppResponse, Fault, FaultAction, InjectedError};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

type Edit = Box<dyn Fn(&mut proto::DeployRequest)>;

fn edit(f: impl Fn(&mut proto::DeployRequest) + 'static) -> Edit {
    Box::new(f)
}

fn runtime(f: impl Fn(&mut proto::RuntimeSettings) + 'static) -> Edit {
    edit(move |r| f(r.runtime.get_or_insert_with(Default::default)))
}

fn health(f: impl Fn(&mut proto::HealthCheck) + 'static) -> Edit {
    edit(move |r| f(r.health_check.get_or_insert_with(Default::default)))
}

fn git(url: &str, git_ref: &str) -> Edit {
    let (url, git_ref) = (url.to_string(), git_ref.to_string());
    edit(move |r| {
        r.source = Some(proto::Source {
            kind: Some(proto::source::Kind::GitUrl(url.clone())),
            git_ref: git_ref.clone(),
            subdirectory: String::new(),
        })
    })
}

fn image(image: &str, subdirectory: &str) -> Edit {
    let (image, subdirectory) = (image.to_string(), subdirectory.to_string());
    edit(move |r| {
        r.source = Some(proto::Source {
            kind: Some(proto::source::Kind::Image(image.clone())),
            git_ref: String::new(),
            subdirectory: subdirectory.clone(),
        })
    })
}

fn project(p: &str) -> Edit {
    let p = p.to_string();
    edit(move |r| r.target.as_mut().expect("target").project = p.clone())
}

fn env(name: &str, value: &str) -> Edit {
    let (n, v) = (name.to_string(), value.to_string());
    runtime(move |rt| {
        rt.env.insert(n.clone(), v.clone());
    })
}

fn secret(env_name: &str, secret: &str, version: &str) -> Edit {
    let (e, s, v) = (
        env_name.to_string(),
        secret.to_string(),
        version.to_string(),
    );
    runtime(move |rt| {
        rt.secrets.push(proto::SecretEnv {
            env_name: e.clone(),
            secret: s.clone(),
            version: v.clone(),
        })
    })
}

fn header(name: &str, value: &str) -> Edit {
    let (n, v) = (name.to_string(), value.to_string());
    health(move |h| {
        h.headers.insert(n.clone(), v.clone());
    })
}

fn deploy_cases() -> Vec<(&'static str, Edit)> {
    let mb = "x".repeat(1 << 20);
    let big = mb.clone();
    vec![
        ("target.project", project("")),
        ("target.project", project("x/../demo-project")),
        ("target.project", project("demo-project?x=1")),
        ("target.project", project("a/b:demo-project")),
        ("target.project", project("ex?ample.com:demo-project")),
        ("target.project", project("demo-project/..")),
        ("target.project", project("$(touch x)")),
        ("target.project", project("Demo-Project")),
        ("target.project", project("demo-project#frag")),
        ("target.project", project("demo project")),
        ("target.project", project(&"p".repeat(31))),
        (
            "target.region",
            edit(|r| r.target.as_mut().expect("t").region = "us-central1/..".into()),
        ),
        (
            "target.region",
            edit(|r| r.target.as_mut().expect("t").region = "".into()),
        ),
        (
            "target.region",
            edit(|r| r.target.as_mut().expect("t").region = "US-CENTRAL1".into()),
        ),
        (
            "target.service",
            edit(|r| r.target.as_mut().expect("t").service = "Bad_Name".into()),
        ),
        (
            "target.service",
            edit(move |r| r.target.as_mut().expect("t").service = big.clone()),
        ),
        (
            "target.service",
            edit(|r| r.target.as_mut().expect("t").service = "a/b".into()),
        ),
        ("target", edit(|r| r.target = None)),
        ("source", edit(|r| r.source = None)),
        (
            "source.local_path",
            edit(|r| {
                r.source.as_mut().expect("s").kind =
                    Some(proto::source::Kind::LocalPath("examples/hello".into()))
            }),
        ),
        (
            "source.local_path",
            edit(|r| {
                r.source.as_mut().expect("s").kind = Some(proto::source::Kind::LocalPath("".into()))
            }),
        ),
        (
            "source.local_path",
            edit(|r| {
                r.source.as_mut().expect("s").kind =
                    Some(proto::source::Kind::LocalPath("/tmp/a\nb".into()))
            }),
        ),
        (
            "source.subdirectory",
            edit(|r| r.source.as_mut().expect("s").subdirectory = "../etc".into()),
        ),
        (
            "source.subdirectory",
            edit(|r| r.source.as_mut().expect("s").subdirectory = "/etc".into()),
        ),
        (
            "source.subdirectory",
            edit(|r| r.source.as_mut().expect("s").subdirectory = "a/../../b".into()),
        ),
        ("source.image", image("-oops", "")),
        ("source.image", image("$(reboot)", "")),
        ("source.image", image("gcr.io/p/app:tag:again", "")),
        ("source.subdirectory", image("gcr.io/p/app:v1", "sub")),
        ("source.git_url", git("file:///etc", "")),
        ("source.git_url", git("/srv/repo.git", "")),
        ("source.git_url", git("ext::sh -c id", "")),
        ("source.git_url", git("git://example.com/x", "")),
        ("source.git_url", git("--upload-pack=id", "")),
        (
            "source.git_url",
            git("https://example.com/a\r\nINFO forged", ""),
        ),
        ("source.git_url", git("https://example.com", "")),
        ("source.git_url", git("", "")),
        (
            "source.git_ref",
            git("https://example.com/a.git", "--upload-pack=touch /tmp/x"),
        ),
        ("source.git_ref", git("https://example.com/a.git", "-c")),
        ("source.git_ref", git("https://example.com/a.git", "a..b")),
        ("source.git_ref", git("https://example.com/a.git", "a b")),
        ("source.git_ref", git("https://example.com/a.git", "a~1")),
        ("source.git_ref", git("https://example.com/a.git", "a:b")),
        ("source.git_ref", git("https://example.com/a.git", "a.lock")),
        ("source.git_ref", git("https://example.com/a.git", "@")),
        ("source.git_ref", git("https://example.com/a.git", "a@{1}")),
        ("source.git_ref", git("https://example.com/a.git", "/main")),
        ("runtime.env", env("1BAD", "x")),
        ("runtime.env", env("A B", "x")),
        ("runtime.env", env("A\0B", "x")),
        ("runtime.env", env("CAFÉ", "x")),
        ("runtime.env", env("PORT", "1")),
        ("runtime.env", env("K_SERVICE", "x")),
        ("runtime.env", env("X_GOOGLE_FOO", "x")),
        ("runtime.env", env("A=B", "x")),
        ("runtime.env", env("BIG", &mb)),
        ("runtime.env", env("NUL", "a\0b")),
        (
            "runtime.secrets.env_name",
            secret("PORT", "db-pass", "latest"),
        ),
        (
            "runtime.secrets.env_name",
            secret("K_REVISION", "db-pass", "1"),
        ),
        (
            "runtime.secrets.env_name",
            secret("K_CONFIGURATION", "db-pass", "1"),
        ),
        ("runtime.secrets.env_name", secret("1X", "db-pass", "1")),
        (
            "runtime.secrets.env_name",
            edit(|r| {
                let rt = r.runtime.get_or_insert_with(Default::default);
                rt.env.insert("DUP".into(), "x".into());
                rt.secrets.push(proto::SecretEnv {
                    env_name: "DUP".into(),
                    secret: "s".into(),
                    version: "1".into(),
                });
            }),
        ),
        ("runtime.secrets.secret", secret("DB", "bad/secret", "1")),
        ("runtime.secrets.secret", secret("DB", "projects/x/y", "1")),
        ("runtime.secrets.secret", secret("DB", "sec ret", "1")),
        ("runtime.secrets.version", secret("DB", "db-pass", "v1")),
        ("runtime.secrets.version", secret("DB", "db-pass", "-1")),
        ("runtime.secrets.version", secret("DB", "db-pass", "01")),
        ("runtime.secrets", secret("", "db-pass", "1")),
        ("runtime.cpu", runtime(|rt| rt.cpu = "abc".into())),
        ("runtime.cpu", runtime(|rt| rt.cpu = "1000".into())),
        ("runtime.cpu", runtime(|rt| rt.cpu = "3".into())),
        ("runtime.cpu", runtime(|rt| rt.cpu = "0.01".into())),
        ("runtime.memory", runtime(|rt| rt.memory = "lots".into())),
        ("runtime.memory", runtime(|rt| rt.memory = "1Ti".into())),
        ("runtime.memory", runtime(|rt| rt.memory = "64Mi".into())),
        (
            "runtime.min_instances",
            runtime(|rt| rt.min_instances = u32::MAX),
        ),
        (
            "runtime.max_instances",
            runtime(|rt| rt.max_instances = u32::MAX),
        ),
        (
            "runtime.max_instances",
            runtime(|rt| rt.max_instances = 1001),
        ),
        (
            "runtime.min_instances",
            runtime(|rt| {
                rt.min_instances = 5;
                rt.max_instances = 2
            }),
        ),
        ("runtime.concurrency", runtime(|rt| rt.concurrency = 1001)),
        (
            "runtime.request_timeout_seconds",
            runtime(|rt| rt.request_timeout_seconds = 3601),
        ),
        (
            "runtime.vpc_connector",
            runtime(|rt| rt.vpc_connector = "; rm -rf / #".into()),
        ),
        (
            "runtime.vpc_connector",
            runtime(|rt| rt.vpc_connector = "projects/x/../y".into()),
        ),
        (
            "runtime.vpc_connector",
            runtime(|rt| rt.vpc_egress = proto::VpcEgress::AllTraffic.into()),
        ),
        (
            "runtime.service_account",
            runtime(|rt| rt.service_account = "a/b@demo-project.iam.gserviceaccount.com".into()),
        ),
        (
            "runtime.service_account",
            runtime(|rt| rt.service_account = "runner@evil.example.com".into()),
        ),
        (
            "runtime.service_account",
            runtime(|rt| rt.service_account = "$(id)@x.iam.gserviceaccount.com".into()),
        ),
        (
            "runtime.container_port",
            runtime(|rt| rt.container_port = 70000),
        ),
        ("runtime.ingress", runtime(|rt| rt.ingress = 99)),
        (
            "health_check.consecutive_successes",
            health(|h| h.consecutive_successes = 50),
        ),
        (
            "health_check.startup_probe.timeout_seconds",
            health(|h| {
                h.startup_probe = Some(proto::StartupProbe {
                    period_seconds: 2,
                    timeout_seconds: 5,
                    ..Default::default()
                })
            }),
        ),
        (
            "health_check.startup_probe.failure_threshold",
            health(|h| {
                h.startup_probe = Some(proto::StartupProbe {
                    period_seconds: 10,
                    failure_threshold: 30,
                    ..Default::default()
                })
            }),
        ),
        (
            "health_check.startup_probe.period_seconds",
            health(|h| {
                h.startup_probe = Some(proto::StartupProbe {
                    period_seconds: 300,
                    ..Default::default()
                })
            }),
        ),
        (
            "health_check.startup_probe.path",
            health(|h| {
                h.startup_probe = Some(proto::StartupProbe {
                    path: "healthz?x=\n".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "build.service_account",
            edit(|r| {
                r.build = Some(proto::BuildOptions {
                    service_account: "b/../c@x.iam.gserviceaccount.com".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "build.machine_type",
            edit(|r| {
                r.build = Some(proto::BuildOptions {
                    machine_type: "HUGE".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "build.repository",
            edit(|r| {
                r.build = Some(proto::BuildOptions {
                    repository: "../x".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "build.max_attempts",
            edit(|r| {
                r.build = Some(proto::BuildOptions {
                    max_attempts: 11,
                    ..Default::default()
                })
            }),
        ),
        (
            "build.timeout_seconds",
            edit(|r| {
                r.build = Some(proto::BuildOptions {
                    timeout_seconds: 90000,
                    ..Default::default()
                })
            }),
        ),
        ("health_check.path", health(|h| h.path = "healthz".into())),
        ("health_check.path", health(|h| h.path = "/a b".into())),
        (
            "health_check.path",
            health(|h| h.path = "/a\r\nHost: x".into()),
        ),
        ("health_check.attempts", health(|h| h.attempts = 21)),
        (
            "health_check.timeout_ms",
            health(|h| h.timeout_ms = u32::MAX),
        ),
        (
            "health_check.base_delay_ms",
            health(|h| h.base_delay_ms = u32::MAX),
        ),
        (
            "health_check.max_delay_ms",
            health(|h| h.max_delay_ms = u32::MAX),
        ),
        (
            "health_check.accepted_statuses",
            health(|h| h.accepted_statuses = vec![99]),
        ),
        (
            "health_check.accepted_statuses",
            health(|h| h.accepted_statuses = vec![200; 33]),
        ),
        (
            "health_check.expect_body",
            health(|h| h.expect_body = "x".repeat(65 * 1024)),
        ),
        ("health_check.headers", header("X-Nul", "a\0b")),
        ("health_check.headers", header("X-Crlf", "a\r\nb")),
        ("health_check.headers", header("Connection", "close")),
        (
            "health_check.headers",
            header("Transfer-Encoding", "chunked"),
        ),
        ("health_check.headers", header("Host", "evil")),
        (
            "health_check.headers",
            header("X-Big", &"v".repeat(1 << 20)),
        ),
        ("health_check.headers", header("Bad Name", "x")),
        ("rollout_mode", edit(|r| r.rollout_mode = 42)),
        (
            "canary_percent",
            edit(|r| {
                r.rollout_mode = proto::RolloutMode::Canary.into();
                r.canary_percent = 100
            }),
        ),
        ("rollback_policy", edit(|r| r.rollback_policy = 7)),
    ]
}

fn verify_cases() -> Vec<(&'static str, proto::VerifyRequest, tonic::Code)> {
    let ok = |url: &str| proto::VerifyRequest {
        url: url.into(),
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut proto::VerifyRequest)| {
        let mut r = ok("https://hello-abc-uc.a.run.app");
        f(&mut r);
        r
    };
    use tonic::Code::{InvalidArgument as Invalid, PermissionDenied as Denied};
    vec![
        ("url", ok(""), Invalid),
        ("url", ok("http://"), Invalid),
        ("url", ok("https://"), Invalid),
        ("url", ok("ftp://example.com/x"), Invalid),
        ("url", ok("not a url"), Invalid),
        ("url", ok("https://user:pw@hello.a.run.app"), Invalid),
        (
            "url",
            ok(&format!("https://a.run.app/{}", "x".repeat(4096))),
            Invalid,
        ),
        (
            "health_path",
            with(&|r| r.health_path = "x".into()),
            Invalid,
        ),
        (
            "health_path",
            with(&|r| r.health_path = "/a\nb".into()),
            Invalid,
        ),
        ("attempts", with(&|r| r.attempts = 100), Invalid),
        ("timeout_ms", with(&|r| r.timeout_ms = u32::MAX), Invalid),
        (
            "base_delay_ms",
            with(&|r| r.base_delay_ms = u32::MAX),
            Invalid,
        ),
        (
            "max_delay_ms",
            with(&|r| r.max_delay_ms = u32::MAX),
            Invalid,
        ),
        (
            "accepted_statuses",
            with(&|r| r.accepted_statuses = vec![700]),
            Invalid,
        ),
        (
            "headers",
            with(&|r| {
                r.headers.insert("Upgrade".into(), "h2c".into());
            }),
            Invalid,
        ),
        (
            "headers",
            with(&|r| {
                r.headers.insert("X-A".into(), "a\0".into());
            }),
            Invalid,
        ),
        (
            "expect_body",
            with(&|r| r.expect_body = "x".repeat(70_000)),
            Invalid,
        ),
        // Outside the URL policy: refused by it, not probed.
        ("", ok("http://169.254.169.254/computeMetadata/v1/"), Denied),
        ("", ok("https://example.com/"), Denied),
        ("", ok("http://10.0.0.1/"), Denied),
        ("", ok("http://localhost:9/"), Denied),
    ]
}

fn preflight_cases() -> Vec<(&'static str, proto::PreflightRequest)> {
    let base = || proto::PreflightRequest {
        target: Some(target("")),
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut proto::PreflightRequest)| {
        let mut r = base();
        f(&mut r);
        r
    };
    vec![
        ("target", with(&|r| r.target = None)),
        (
            "target.project",
            with(&|r| r.target.as_mut().expect("t").project = "x/../y-project".into()),
        ),
        (
            "target.project",
            with(&|r| r.target.as_mut().expect("t").project = "a?b:demo-project".into()),
        ),
        (
            "target.region",
            with(&|r| r.target.as_mut().expect("t").region = "../x".into()),
        ),
        (
            "target.service",
            with(&|r| r.target.as_mut().expect("t").service = "UPPER".into()),
        ),
        (
            "service_account",
            with(&|r| r.service_account = "x/y@p.iam.gserviceaccount.com".into()),
        ),
        (
            "build.service_account",
            with(&|r| r.build_service_account = "nope".into()),
        ),
        (
            "build.repository",
            with(&|r| r.repository = "Bad/Repo".into()),
        ),
        ("ingress", with(&|r| r.ingress = 99)),
    ]
}

async fn serving(h: &Harness) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.daemon.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "deployd.v1.Deployer".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

fn check_refusal(what: &str, got: tonic::Status, code: tonic::Code, field: &str) {
    use tonic_types::StatusExt;
    assert_eq!(got.code(), code, "{what}: {}", got.message());
    let details = got.get_error_details();
    let reason = details.error_info().map(|i| i.reason.as_str());
    if code == tonic::Code::InvalidArgument {
        assert!(
            got.message().starts_with(&format!("{field}: ")),
            "{what}: expected the message to name {field}: {}",
            got.message()
        );
        assert_eq!(reason, Some("INVALID_REQUEST"), "{what}");
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, field, "{what}: {violations:?}");
    } else {
        assert_eq!(reason, Some("URL_REFUSED"), "{what}");
    }
    assert!(
        got.message().len() <= 1024,
        "{what}: the message is bounded"
    );
}

/// A request that breaks several rules is refused once, with all of them:
/// each field in the BadRequest details and in the message.
#[tokio::test]
async fn every_rule_a_request_breaks_is_reported_at_once() {
    use tonic_types::StatusExt;
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut req = deploy_request("Not_A_Service", &example_app());
    for change in [
        project("x/../demo-project"),
        runtime(|rt| rt.memory = "lots".into()),
        runtime(|rt| rt.cpu = "9".into()),
        env("1BAD", "x"),
        health(|h| h.attempts = 99),
        edit(|r| r.build.get_or_insert_with(Default::default).machine_type = "HUGE".into()),
    ] {
        change(&mut req);
    }
    let got = client.deploy(req).await.expect_err("refused");
    assert_eq!(got.code(), tonic::Code::InvalidArgument);
    let details = got.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.domain.as_str()),
        Some("deployd.v1")
    );
    let fields: Vec<&str> = details
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "target.project",
            "target.service",
            "health_check.attempts",
            "runtime.env",
            "runtime.cpu",
            "runtime.memory",
            "build.machine_type"
        ],
        "{}",
        got.message()
    );
    for f in fields {
        assert!(
            got.message().contains(&format!("{f}: ")),
            "{}",
            got.message()
        );
    }
    assert!(h.sandbox.requests().is_empty());
}

/// At least 100 bad requests across the three RPCs: each is refused with
/// INVALID_ARGUMENT naming its field (or PERMISSION_DENIED by the URL
/// policy), none reaches a Google API, and the daemon stays healthy.
#[tokio::test]
async fn bad_requests_are_refused_before_anything_runs() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut n = 0;
    for (field, change) in deploy_cases() {
        let mut req = deploy_request("valid", &example_app());
        change(&mut req);
        let got = client.deploy(req).await.expect_err(field);
        check_refusal(
            &format!("Deploy case {n}"),
            got,
            tonic::Code::InvalidArgument,
            field,
        );
        assert_eq!(serving(&h).await, 1, "SERVING after case {n}");
        n += 1;
    }
    for (field, req, code) in verify_cases() {
        let got = client.verify(req.clone()).await.expect_err(field);
        check_refusal(
            &format!("Verify {:?}", rules_shown(&req.url)),
            got,
            code,
            field,
        );
        assert_eq!(serving(&h).await, 1);
        n += 1;
    }
    for (field, req) in preflight_cases() {
        let got = client.preflight(req).await.expect_err(field);
        check_refusal(
            &format!("Preflight {field}"),
            got,
            tonic::Code::InvalidArgument,
            field,
        );
        assert_eq!(serving(&h).await, 1);
        n += 1;
    }
    eprintln!("{n} bad requests refused");
    assert!(n >= 100, "{n} cases");
    // Nothing reached the emulated Google APIs.
    let reached: Vec<String> = h
        .sandbox
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(reached.is_empty(), "{reached:?}");
}

fn rules_shown(s: &str) -> String {
    deployd::pipeline::rules::shown(s)
}

fn transient(method: &str, action: FaultAction) -> Fault {
    Fault {
        method: method.into(),
        remaining: 1,
        action,
    }
}

/// One transient failure on each Google call a deploy makes (beyond
/// preflight and the build, retried before): the deploy succeeds, and each
/// call was made twice.
/// Calls preflight makes first of these methods, each once: the Run read
/// and validateOnly create of its revision check, and the identity token of
/// its probe check. A fault meant for the deploy stages skips them.
fn preflight_calls(method: &str) -> u32 {
    match method {
        "run.projects.locations.services.get"
        | "run.projects.locations.services.create"
        | "run.projects.locations.services.patch"
        | "iamcredentials.projects.serviceAccounts.generateIdToken" => 1,
        _ => 0,
    }
}

/// Arms `fault` for the first call after preflight's own.
fn after_preflight(h: &Harness, fault: Fault) {
    h.sandbox
        .inject_after(preflight_calls(&fault.method), fault);
}

#[tokio::test]
async fn every_google_call_of_a_deploy_is_retried() {
    let h = Harness::start().await;
    let calls = [
        (
            "storage.objects.get",
            FaultAction::Error(InjectedError::unavailable()),
        ),
        ("storage.objects.insert", FaultAction::Reset),
        (
            "run.projects.locations.services.get",
            FaultAction::Error(InjectedError::rate_limited("run.googleapis.com")),
        ),
        (
            "run.projects.locations.services.create",
            FaultAction::Error(InjectedError::new(
                500,
                "INTERNAL",
                "Internal error encountered.",
            )),
        ),
        (
            "run.projects.locations.services.getIamPolicy",
            FaultAction::Reset,
        ),
        (
            "iamcredentials.projects.serviceAccounts.generateIdToken",
            FaultAction::Error(InjectedError::unavailable()),
        ),
    ];
    for (method, action) in calls.clone() {
        after_preflight(&h, transient(method, action));
    }
    let mut req = deploy_request("retried", &example_app());
    req.runtime.as_mut().expect("runtime").allow_unauthenticated = false;
    let (events, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    for (method, _) in calls {
        // Build-log reads are storage.objects.get too (alt=media).
        let made = h
            .sandbox
            .requests_of(method)
            .iter()
            .filter(|r| !r.query.contains("alt=media"))
            .count();
        assert_eq!(made, 2 + preflight_calls(method) as usize, "{method}");
    }
    let retried: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(proto::event::Kind::Retry(r)) => Some(r.operation.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(retried.len(), 6, "{retried:?}");
    // The patch of a second deploy, too (its preflight validates a patch).
    after_preflight(
        &h,
        transient(
            "run.projects.locations.services.patch",
            FaultAction::Error(InjectedError::unavailable()),
        ),
    );
    let app = app_version("2");
    let mut req = deploy_request("retried", app.path());
    req.runtime.as_mut().expect("runtime").allow_unauthenticated = false;
    let (_, o) = deploy(&h, req).await;
    assert!(o.success, "{o:?}");
    assert_eq!(h.sandbox.count("run.projects.locations.services.patch"), 3);
    let metrics = h.metrics().await;
    assert!(
        counter(
            &metrics,
            "deployd_google_api_retries_total",
            "method=\"run.projects.locations.services.patch\""
        ) >= 1.0,
        "{metrics}"
    );
}

/// A create that took effect but whose answer was lost is not made twice:
/// the retry meets ALREADY_EXISTS and patches the same desired state, and
/// Cloud Run (here the sandbox) makes no second revision for it.
#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_repeated() {
    let h = Harness::start().await;
    after_preflight(
        &h,
        transient(
            "run.projects.locations.services.create",
            FaultAction::ResetAfterApply,
        ),
    );
    let (_, o) = deploy(&h, deploy_request("lost-create", &example_app())).await;
    assert!(o.success, "{o:?}");
    let creates = h
        .sandbox
        .requests_of("run.projects.locations.services.create");
    // Preflight's validateOnly, the lost create, and its retry.
    assert_eq!(creates.len(), 3);
    assert!(creates[0].query.contains("validateOnly=true"));
    assert_eq!(h.sandbox.count("run.projects.locations.services.patch"), 1);
    assert_eq!(
        h.sandbox.revisions(PROJECT, REGION, "lost-create").len(),
        1,
        "one revision"
    );
}

fn broken_next_revision(h: &Harness, service: &str) {
    h.sandbox.next_revision_answers(
        PROJECT,
        service,
        AppResponse {
            status: 500,
            delay: Duration::ZERO,
            body: "boom".into(),
        },
    );
}

fn serving_revision(h: &Harness, service: &str) -> String {
    let svc = h
        .sandbox
        .service(PROJECT, REGION, service)
        .expect("service");
    let full = svc["traffic"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["percent"] == 100))
        .cloned()
        .unwrap_or_default();
    match full["revision"].as_str() {
        Some(r) if !r.is_empty() => r.rsplit('/').next().unwrap_or(r).to_string(),
        _ => svc["latestReadyRevision"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// A deployment cancelled while a broken revision is being verified: the
/// run still moves traffic back to the healthy revision, then ends
/// CANCELLED (not UNHEALTHY).
#[tokio::test]
async fn cancelling_while_a_broken_revision_is_verified_rolls_back_first() {
    let h = Harness::start().await;
    let (_, first) = deploy(&h, deploy_request("cancel-rb", &example_app())).await;
    assert!(first.success);
    broken_next_revision(&h, "cancel-rb");
    let app = app_version("2");
    let mut req = deploy_request("cancel-rb", app.path());
    // Slow attempts, so the client leaves mid-verification.
    req.health_check = Some(proto::HealthCheck {
        startup_probe: no_startup_probe(),
        attempts: 10,
        base_delay_ms: 2000,
        timeout_ms: 2000,
        ..Default::default()
    });
    let mut stream = h
        .client()
        .await
        .deploy(req)
        .await
        .expect("accepted")
        .into_inner();
    let mut new_revision = String::new();
    let mut first_id = String::new();
    while let Some(e) = stream.message().await.expect("stream") {
        first_id = e.deployment_id.clone();
        if let Some(proto::event::Kind::Probe(p)) = &e.kind {
            assert!(!p.healthy);
            break;
        }
        if let Some(proto::event::Kind::Progress(p)) = &e.kind {
            if let Some(rest) = p.message.strip_prefix("revision ") {
                new_revision = rest.split(' ').next().unwrap_or_default().to_string();
            }
        }
    }
    assert_eq!(
        serving_revision(&h, "cancel-rb"),
        new_revision,
        "the broken one serves"
    );
    // Cancelled while it is verified (the client stays to see it end).
    let id = first_id;
    h.client()
        .await
        .cancel_deployment(proto::CancelDeploymentRequest { id })
        .await
        .expect("cancel");
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = h.metrics().await;
        if counter(&m, "deployd_deployments_total", "result=\"cancelled\"") == 1.0 {
            assert_eq!(
                counter(&m, "deployd_rollbacks_total", "result=\"success\""),
                1.0,
                "{m}"
            );
            // A cancellation is counted as one, never as a failure (the
            // metrics are process-wide: only this test cancels a deploy).
            assert_eq!(
                counter(&m, "deployd_deployment_failures_total", "CANCELLED"),
                0.0,
                "cancelled, not failed: {m}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not end: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serving_revision(&h, "cancel-rb"), first.revision);
}

/// A first deploy whose revision is unhealthy has nothing to roll back
/// to; the outcome says that this revision serves all traffic, unverified,
/// and how to delete it or take it off the internet. (Without a startup
/// probe: with one, such a revision never becomes ready, below.)
#[tokio::test]
async fn a_failed_first_deploy_says_its_revision_serves_unverified() {
    let h = Harness::start().await;
    broken_next_revision(&h, "first-broken");
    let mut req = deploy_request("first-broken", &example_app());
    req.health_check = Some(proto::HealthCheck {
        attempts: 2,
        timeout_ms: 2000,
        startup_probe: Some(proto::StartupProbe {
            disabled: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, o) = deploy(&h, req).await;
    let f = o.error.expect("failure");
    assert_eq!(f.code, "UNHEALTHY");
    assert!(!o.rolled_back && !o.should_rollback);
    assert!(
        f.message
            .contains("this was the first revision of first-broken"),
        "{}",
        f.message
    );
    assert!(
        f.message
            .contains(&format!("all of its traffic to {}, unverified", o.revision)),
        "{}",
        f.message
    );
    // The fix of the cause first, then what to do with what serves.
    assert!(
        f.remediation[0].contains("health check"),
        "{:?}",
        f.remediation
    );
    let n = f.remediation.len();
    assert_eq!(
        f.remediation[n - 2],
        format!("Until it is fixed, delete the unverified service: gcloud run services delete first-broken --region={REGION} --project={PROJECT}")
    );
    assert!(
        f.remediation[n - 1].contains("--ingress=internal"),
        "{:?}",
        f.remediation
    );
}

/// A Verify stream that is dropped closes its probe's connection at once,
/// not after the probe's own timeout.
#[tokio::test]
async fn a_cancelled_verify_closes_its_probe_connection() {
    use tokio::io::AsyncReadExt;
    let h = Harness::start().await;
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stream = h
        .client()
        .await
        .verify(proto::VerifyRequest {
            url: format!("http://127.0.0.1:{port}"),
            timeout_ms: 60_000,
            attempts: 1,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the probe connects")
        .expect("accept");
    drop(stream);
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the probe connection stayed open after the stream was dropped"
    );
}

/// The sandbox refuses what Cloud Run refuses, whoever sends it.
#[tokio::test]
async fn the_sandbox_enforces_cloud_runs_limits() {
    let h = Harness::start().await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/projects/{PROJECT}/locations/{REGION}/services?serviceId=limits",
        h.sandbox.base_url()
    );
    let mut bodies: HashMap<&str, serde_json::Value> = HashMap::new();
    let container = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"image": "us-docker.pkg.dev/x/y/z:1"});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        serde_json::json!({"template": {"containers": [c]}})
    };
    bodies.insert(
        "env name",
        container(serde_json::json!({"env": [{"name": "1BAD", "value": "x"}]})),
    );
    bodies.insert(
        "reserved",
        container(serde_json::json!({"env": [{"name": "PORT", "value": "1"}]})),
    );
    bodies.insert(
        "value size",
        container(serde_json::json!({"env": [{"name": "A", "value": "x".repeat(40_000)}]})),
    );
    bodies.insert(
        "cpu",
        container(serde_json::json!({"resources": {"limits": {"cpu": "1000"}}})),
    );
    bodies.insert(
        "memory",
        container(serde_json::json!({"resources": {"limits": {"memory": "lots"}}})),
    );
    for (what, body) in bodies {
        let resp = client.post(&url).json(&body).send().await.expect("answer");
        assert_eq!(resp.status(), 400, "{what}");
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{what}");
    }
}

/// With the default startup probe, a broken first revision never becomes
/// ready, so nothing serves it: the failure says so.
#[tokio::test]
async fn a_broken_first_revision_never_serves_behind_its_startup_probe() {
    let h = Harness::start().await;
    broken_next_revision(&h, "first-gated");
    let (_, o) = deploy(&h, deploy_request("first-gated", &example_app())).await;
    let f = o.error.expect("failure");
    assert_eq!(f.code, "REVISION_NOT_READY", "{f:?}");
    assert!(f.message.contains("startup probe"), "{}", f.message);
    let service = h
        .sandbox
        .service(PROJECT, REGION, "first-gated")
        .expect("service");
    assert!(service.get("latestReadyRevision").is_none(), "{service}");
}
