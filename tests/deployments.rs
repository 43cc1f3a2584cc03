//! Deployments as resources, over gRPC: Get, List (filters, paging),
//! Watch (replay from 0 and from a seq), Cancel, request_id idempotency,
//! one running deployment per service, and the rows the store keeps.

mod common;

use std::time::Duration;

use common::*;
use deployd::api::proto;
use tonic::Code;

fn state(s: proto::DeploymentState) -> i32 {
    i32::from(s)
}

#[tokio::test]
async fn get_list_and_watch_show_what_happened() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let (first_events, first) = deploy(&h, deploy_request("res-a", &example_app())).await;
    assert!(first.success);
    let id_a = first_events[0].deployment_id.clone();
    let (_, o) = deploy(&h, deploy_request("res-b", &example_app())).await;
    assert!(o.success);
    let app = app_version("2");
    let (b2_events, _) = deploy(&h, deploy_request("res-b", app.path())).await;
    let id_b2 = b2_events[0].deployment_id.clone();

    // Get: the resource, with the request as the daemon understood it.
    let d = client
        .get_deployment(proto::GetDeploymentRequest { id: id_a.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(d.id, id_a);
    assert_eq!(d.state, state(proto::DeploymentState::Succeeded));
    assert_eq!(d.target.as_ref().expect("target").service, "res-a");
    assert_eq!(
        d.outcome.as_ref().expect("outcome").revision,
        first.revision
    );
    assert_eq!(d.last_seq, first_events.len() as u64);
    assert!(
        d.caller.starts_with("unauthenticated@127.0.0.1"),
        "{}",
        d.caller
    );
    assert!(d.end_time.is_some() && d.owner.is_empty());
    let req = d.request.expect("request");
    assert_eq!(req.build.expect("build").machine_type, "E2_HIGHCPU_8");
    assert_eq!(req.health_check.expect("health").timeout_ms, 2000);

    // Events are numbered 1..n in the stream the client saw.
    let seqs: Vec<u64> = first_events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=first_events.len() as u64).collect::<Vec<_>>());

    // Watch replays the same events from 0, and the rest after a seq.
    let replay = collect(
        client
            .watch_deployment(proto::WatchDeploymentRequest {
                id: id_a.clone(),
                after_seq: 0,
            })
            .await
            .expect("watch")
            .into_inner(),
    )
    .await;
    assert_eq!(replay, first_events);
    let tail = collect(
        client
            .watch_deployment(proto::WatchDeploymentRequest {
                id: id_a.clone(),
                after_seq: 5,
            })
            .await
            .expect("watch")
            .into_inner(),
    )
    .await;
    assert_eq!(tail, first_events[5..].to_vec());

    // List: newest first, filtered, paged.
    let all = client
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = all.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], id_b2, "newest first");
    assert_eq!(ids[2], id_a);
    let b = client
        .list_deployments(proto::ListDeploymentsRequest {
            service: "res-b".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(b.deployments.len(), 2);
    let mut token = String::new();
    let mut paged = vec![];
    loop {
        let page = client
            .list_deployments(proto::ListDeploymentsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.deployments.len() <= 1);
        paged.extend(page.deployments.into_iter().map(|d| d.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, ids);
    let running = client
        .list_deployments(proto::ListDeploymentsRequest {
            state: state(proto::DeploymentState::Running),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(running.deployments.is_empty());

    // Bad input names its field; an unknown id is NOT_FOUND.
    let bad = [
        (
            client
                .list_deployments(proto::ListDeploymentsRequest {
                    page_size: 1001,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "page_size",
        ),
        (
            client
                .list_deployments(proto::ListDeploymentsRequest {
                    page_token: "not-a-token".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "page_token",
        ),
        // Filters reach the policy, messages and audit lines: only names a
        // deployment could have.
        (
            client
                .list_deployments(proto::ListDeploymentsRequest {
                    project: "demo\nresult=OK".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "project",
        ),
        (
            client
                .list_deployments(proto::ListDeploymentsRequest {
                    region: "mars".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "region",
        ),
        (
            client
                .list_deployments(proto::ListDeploymentsRequest {
                    service: "Web_App".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "service",
        ),
        (
            client
                .get_deployment(proto::GetDeploymentRequest {
                    id: "../etc/passwd".into(),
                })
                .await
                .map(|_| ()),
            "id",
        ),
    ];
    for (r, field) in bad {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with(field), "{}", s.message());
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let s = client
        .get_deployment(proto::GetDeploymentRequest {
            id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(s.code(), Code::NotFound);
    let s = client
        .watch_deployment(proto::WatchDeploymentRequest {
            id: unknown,
            after_seq: 0,
        })
        .await
        .expect_err("unknown");
    assert_eq!(s.code(), Code::NotFound);
}

#[tokio::test]
async fn cancel_stops_the_build_and_ends_cancelled() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let stream = deploy_with_a_running_build(&h, "res-cancel").await;
    let id = running_id(&h, "res-cancel").await;

    // The same service is busy, and the refusal names what to do.
    let busy = client
        .deploy(deploy_request("res-cancel", &example_app()))
        .await
        .expect_err("busy");
    assert_eq!(busy.code(), Code::Aborted);
    assert!(
        busy.message().contains(&format!("deployd watch {id}")),
        "{}",
        busy.message()
    );
    assert!(
        busy.message().contains(&format!("deployd cancel {id}")),
        "{}",
        busy.message()
    );

    let d = client
        .cancel_deployment(proto::CancelDeploymentRequest { id: id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert!(d.cancel_requested);
    let (_, o) = run_to_outcome(stream).await;
    assert_eq!(o.error.expect("failure").code, "CANCELLED");
    let d = ended(&h, &id, Duration::from_secs(20)).await;
    assert_eq!(d.state, state(proto::DeploymentState::Cancelled));
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.cancel"),
        1
    );
    assert_eq!(h.sandbox.builds()[0]["status"], "CANCELLED");
    // An ended deployment cannot be cancelled.
    let again = client
        .cancel_deployment(proto::CancelDeploymentRequest { id })
        .await
        .expect_err("ended");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    // And the service is free again.
    let (_, o) = deploy(&h, deploy_request("res-cancel", &example_app())).await;
    assert!(o.success, "{o:?}");
}

#[tokio::test]
async fn the_same_request_id_twice_at_once_is_one_deployment() {
    let h = Harness::start().await;
    let mut req = deploy_request("res-idem", &example_app());
    req.request_id = "2b0c6a1e-idem-key".into();
    let (c1, c2) = (h.client().await, h.client().await);
    let (r1, r2) = tokio::join!(async { c1.clone().deploy(req.clone()).await }, async {
        c2.clone().deploy(req.clone()).await
    });
    let (e1, o1) = run_to_outcome(r1.expect("first accepted").into_inner()).await;
    let (e2, o2) = run_to_outcome(r2.expect("second accepted").into_inner()).await;
    assert!(o1.success);
    assert_eq!(o1, o2, "both streams end with the same outcome");
    assert_eq!(e1, e2, "both follow the same events");
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );
    let listed = h
        .client()
        .await
        .list_deployments(proto::ListDeploymentsRequest {
            service: "res-idem".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.deployments.len(), 1);
    assert_eq!(listed.deployments[0].request_id, "2b0c6a1e-idem-key");

    // After it ended, the key still names it: a replay, nothing new.
    let (e3, o3) = deploy(&h, req.clone()).await;
    assert_eq!(o3, o1);
    assert_eq!(e3.len(), e1.len());
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        1
    );

    // The same key with another request is refused, and says so.
    let mut other = req.clone();
    other.runtime.as_mut().expect("runtime").memory = "1Gi".into();
    let s = h.client().await.deploy(other).await.expect_err("mismatch");
    assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
    assert!(s.message().contains("different request"), "{}", s.message());

    // A key that is not one is INVALID_ARGUMENT naming request_id.
    let mut bad = req;
    bad.request_id = "has spaces; and more".into();
    let s = h.client().await.deploy(bad).await.expect_err("invalid");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("request_id"), "{}", s.message());
}

/// What one deployment costs in the store, and that its rows hold what the
/// API shows.
#[tokio::test]
async fn the_store_keeps_the_deployment_and_its_events() {
    let h = Harness::start().await;
    let (events, o) = deploy(&h, deploy_request("res-rows", &example_app())).await;
    assert!(o.success);
    let id = &events[0].deployment_id;
    let store = deployd::store::SqlStore::open(&deployd::store::sqlite_url_in(h.state.path()))
        .await
        .expect("open the same file");
    let rec = deployd::deployments::Store::get(&store, id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(rec.state, deployd::deployments::State::Succeeded);
    assert_eq!(rec.last_seq, events.len() as u64);
    let progress = rec.progress.expect("progress");
    assert_eq!(progress.revision.as_deref(), Some(o.revision.as_str()));
    assert!(progress.rollout_sent);
    let kept = deployd::deployments::Store::events(&store, id, 0, 10_000)
        .await
        .expect("events");
    assert_eq!(kept.len(), events.len());
    assert!(matches!(
        kept.last().map(|e| &e.kind),
        Some(deployd::pipeline::event::EventKind::Outcome(_))
    ));
    let bytes = store.footprint(id).await.expect("size");
    assert!(bytes > 1000, "{bytes}");
    eprintln!("one deployment: {} events, {bytes} bytes", kept.len());
    // Pruning keeps what is younger than the cut.
    let pruned = deployd::deployments::Store::prune(
        &store,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    )
    .await
    .expect("prune");
    assert_eq!(pruned, 0);
    let pruned = deployd::deployments::Store::prune(
        &store,
        std::time::SystemTime::now() + Duration::from_secs(1),
    )
    .await
    .expect("prune");
    assert_eq!(pruned, 1);
    assert!(deployd::deployments::Store::get(&store, id)
        .await
        .expect("read")
        .is_none());
    assert!(deployd::deployments::Store::events(&store, id, 0, 10)
        .await
        .expect("events")
        .is_empty());
}

/// A deployment that keeps killing its daemons is given up after
/// MAX_RESUMES, and one whose progress cannot be read ends at once: both
/// FAILED with RESUME_IMPOSSIBLE and an outcome event, never RUNNING forever.
#[tokio::test]
async fn deployments_that_cannot_be_resumed_end_failed() {
    let h = Harness::start_config(|c| c.lease = Duration::from_secs(1)).await;
    let store = h.daemon.manager.store().clone();

    // Leased to a daemon that is gone, held (so this daemon waits) while
    // the test sets them up.
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    let poison = orphan_until(
        &h,
        deploy_request("res-poison", &example_app()),
        "ghost",
        later,
    )
    .await;
    let garbled = orphan_until(
        &h,
        deploy_request("res-garbled", &example_app()),
        "ghost",
        later,
    )
    .await;
    // Resumed over and over by the dying daemon.
    for _ in 0..deployd::deployments::MAX_RESUMES {
        let claimed = store.claim("ghost", true, later, 10).await.expect("claim");
        assert!(claimed.iter().any(|(r, _)| r.id == poison));
    }
    // Unreadable progress.
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&deployd::store::sqlite_url_in(h.state.path()))
        .await
        .expect("open");
    sqlx::query(
        "UPDATE deployments SET progress = '{\"from\": \"a newer deployd\"}' WHERE id = $1",
    )
    .bind(&garbled)
    .execute(&db)
    .await
    .expect("garble");
    // The ghost's leases end: this daemon takes both over.
    store
        .release("ghost", &[poison.clone(), garbled.clone()])
        .await
        .expect("release");

    for id in [&poison, &garbled] {
        let d = ended(&h, id, Duration::from_secs(20)).await;
        assert_eq!(d.state, state(proto::DeploymentState::Failed), "{d:?}");
        let err = d.outcome.expect("outcome").error.expect("failure");
        assert_eq!(err.code, "RESUME_IMPOSSIBLE");
        assert!(err.message.contains(id.as_str()), "{}", err.message);
        assert!(!err.remediation.is_empty());
    }
    // Nothing was built for either.
    assert_eq!(
        h.sandbox
            .count("cloudbuild.projects.locations.builds.create"),
        0
    );
}
