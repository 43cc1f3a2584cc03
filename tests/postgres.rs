//! Several daemons on one PostgreSQL (Debian's, started on loopback by
//! `.ci/postgres`, which exports DEPLOYD_TEST_DATABASE_URL): they share
//! the work, take over a dead daemon's deployments, refuse a second
//! deployment of a busy service across daemons, and follow a deployment
//! running on another daemon. Each test gets a database of its own.
//!
//! The store's lease rules are also checked directly, on PostgreSQL and on
//! SQLite alike.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use deployd::api::proto::{self, deployer_client::DeployerClient, event::Kind};
use deployd::deployments::{Created, NewDeployment, Store, StoreError};
use deployd::sandbox::{Sandbox, SandboxConfig};
use deployd::store::SqlStore;
use rustix::process::Signal;
use tonic::transport::Channel;

/// A database of this test's own, or `None` (skipped) outside CI when no
/// PostgreSQL was started.
async fn fresh_database() -> Option<String> {
    let Ok(base) = std::env::var("DEPLOYD_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must start PostgreSQL: eval \"$(.ci/postgres start)\" (see .ci/run)"
        );
        eprintln!("SKIPPED: no PostgreSQL; run eval \"$(.ci/postgres start)\" first");
        return None;
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    let (server, _) = base.rsplit_once('/').expect("a database in the URL");
    Some(format!("{server}/{name}"))
}

struct Node {
    guard: ChildGuard,
    port: u16,
    metrics: u16,
    log: std::path::PathBuf,
}

impl Node {
    fn start(sandbox: &Sandbox, database_url: &str, logs: &std::path::Path) -> Node {
        let (port, metrics) = (free_port(), free_port());
        let log = logs.join(format!("daemon-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_deployd"))
            .env_remove("RUST_LOG")
            .args(["serve", "--gcp-endpoint", &sandbox.base_url()])
            .args(["--database-url", database_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--local-source-root", "/"])
            .args(["--retry-base-delay-ms", "20", "--poll-interval-ms", "20"])
            // Takeover within about two seconds.
            .args(["--lease-seconds", "2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("serve starts");
        let guard = ChildGuard::new(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Node {
            guard,
            port,
            metrics,
            log,
        }
    }

    async fn client(&self) -> DeployerClient<Channel> {
        DeployerClient::connect(format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("connect")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    }
}

async fn slow_build_rig() -> Sandbox {
    Sandbox::start(SandboxConfig {
        build_line_delay: Duration::from_millis(40),
        ..SandboxConfig::fast()
    })
    .await
    .expect("sandbox")
}

#[tokio::test]
async fn two_daemons_share_one_postgres() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let sandbox = slow_build_rig().await;
    let logs = tempfile::tempdir().expect("logs");
    let mut a = Node::start(&sandbox, &db, logs.path());
    let b = Node::start(&sandbox, &db, logs.path());

    // One service deployed through both daemons at once: one runs, the
    // other is refused by the store.
    let (ra, rb) = tokio::join!(
        async {
            a.client()
                .await
                .deploy(deploy_request("pg-both", &example_app()))
                .await
        },
        async {
            b.client()
                .await
                .deploy(deploy_request("pg-both", &example_app()))
                .await
        }
    );
    let (accepted, refused) = match (ra, rb) {
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
        (Ok(_), Ok(_)) => panic!("both daemons accepted a deploy of one service"),
        (Err(x), Err(y)) => panic!("both refused: {x:?} {y:?}"),
    };
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    let (events, o) = run_to_outcome(accepted.into_inner()).await;
    assert!(o.success, "{o:?}");
    let id = events[0].deployment_id.clone();

    // Either daemon shows the same history.
    for node in [&a, &b] {
        let watched = collect(
            node.client()
                .await
                .watch_deployment(proto::WatchDeploymentRequest {
                    id: id.clone(),
                    after_seq: 0,
                })
                .await
                .expect("watch")
                .into_inner(),
        )
        .await;
        assert_eq!(watched, events);
    }

    // A deployment running on A, followed live through B.
    let mut on_a = a
        .client()
        .await
        .deploy(deploy_request("pg-live", &example_app()))
        .await
        .expect("accepted")
        .into_inner();
    let first = on_a.message().await.expect("stream").expect("event");
    let live_on_b = b
        .client()
        .await
        .watch_deployment(proto::WatchDeploymentRequest {
            id: first.deployment_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch through the other daemon")
        .into_inner();
    let (from_a, oa) = run_to_outcome(on_a).await;
    let (from_b, ob) = run_to_outcome(live_on_b).await;
    assert!(oa.success);
    assert_eq!(oa, ob);
    assert_eq!(from_b.len(), from_a.len() + 1, "B saw the first event too");

    // A dies mid-build; B takes the deployment over within the lease and
    // finishes it with the same build.
    let mut stream = a
        .client()
        .await
        .deploy(deploy_request("pg-takeover", &example_app()))
        .await
        .expect("accepted")
        .into_inner();
    let id = loop {
        let e = stream.message().await.expect("stream").expect("event");
        if matches!(&e.kind, Some(Kind::Progress(p)) if p.message.contains("queued")) {
            break e.deployment_id;
        }
    };
    let builds_before = sandbox.count("cloudbuild.projects.locations.builds.create");
    signal(&a.guard.child, Signal::KILL, false).expect("SIGKILL");
    let _ = a.guard.child.wait();
    let killed = Instant::now();
    let watched = b
        .client()
        .await
        .watch_deployment(proto::WatchDeploymentRequest {
            id: id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch");
    let (events, o) = tokio::time::timeout(
        Duration::from_secs(60),
        run_to_outcome(watched.into_inner()),
    )
    .await
    .unwrap_or_else(|_| panic!("not taken over:\n{}", b.log()));
    assert!(o.success, "{o:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        sandbox.count("cloudbuild.projects.locations.builds.create"),
        builds_before,
        "no second build"
    );
    let d = b
        .client()
        .await
        .get_deployment(proto::GetDeploymentRequest { id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(d.resumed, 1);
    eprintln!(
        "taken over and finished {:?} after the kill",
        killed.elapsed()
    );
    let m = b.metrics().await;
    assert!(
        m.contains("deployd_deployments_resumed_total{how=\"taken_over\",result=\"success\"} 1"),
        "{m}"
    );
}

/// The lease rules, straight on the store: a claim only takes an expired
/// lease, and the daemon that lost one can no longer write.
async fn lease_rules(store: &dyn Store) {
    let req = deployd::api::convert::deploy_request(
        deploy_request("lease-rules", &example_app()),
        Duration::from_millis(20),
    )
    .expect("valid");
    let d = deployd::pipeline::Deployment::new(uuid::Uuid::new_v4().to_string(), req);
    let id = d.id.clone();
    let new = NewDeployment {
        request_id: None,
        request_digest: "digest".into(),
        caller: "test".into(),
        owner: "a".into(),
        lease_until: SystemTime::now() + Duration::from_millis(300),
        progress: d.clone(),
    };
    assert!(matches!(
        store.create(&new).await.expect("create"),
        Created::New
    ));
    // The same service again, while this one runs: busy.
    let mut other = new.clone();
    other.progress.id = uuid::Uuid::new_v4().to_string();
    match store.create(&other).await {
        Err(StoreError::Busy { holder }) => assert_eq!(holder, id),
        r => panic!("expected Busy, got {r:?}"),
    }
    // Not expired yet: nobody else can claim it.
    let until = SystemTime::now() + Duration::from_secs(30);
    assert!(store
        .claim("b", false, until, 10)
        .await
        .expect("claim")
        .is_empty());
    let ev = |seq| deployd::pipeline::event::Event {
        deployment_id: id.clone(),
        seq,
        stage: None,
        time: SystemTime::now(),
        kind: deployd::pipeline::event::EventKind::Progress("x".into()),
    };
    store
        .write("a", &[ev(1)], None)
        .await
        .expect("the owner writes");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired, but a takeover by its own daemon (which may be running it
    // on a lapsed lease) leaves it alone, and counts no resume.
    assert!(store
        .claim("a", false, until, 10)
        .await
        .expect("claim")
        .is_empty());
    let claimed = store.claim("b", false, until, 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].1.as_deref(), Some("a"));
    assert_eq!(claimed[0].0.resumed, 1);
    // The old owner is fenced off: its writes fail, its seq cannot be
    // written twice.
    assert!(matches!(
        store.write("a", &[ev(2)], None).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.write("a", &[], Some(&d)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.write("b", &[ev(1)], None).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // All or nothing: a batch whose second event repeats a seq keeps none.
    assert!(store.write("b", &[ev(2), ev(2)], None).await.is_err());
    assert_eq!(store.events(&id, 0, 10).await.expect("events").len(), 1);
    store
        .write("b", &[ev(2), ev(3)], Some(&d))
        .await
        .expect("the new owner writes");
    let held = store
        .renew("a", std::slice::from_ref(&id), until)
        .await
        .expect("renew");
    assert!(held.is_empty(), "a lost it");
    store.request_cancel(&id).await.expect("cancel");
    let held = store
        .renew("b", std::slice::from_ref(&id), until)
        .await
        .expect("renew");
    assert_eq!(
        held,
        vec![(id.clone(), true)],
        "b holds it, cancel requested"
    );
}

#[tokio::test]
async fn lease_rules_hold_on_postgres() {
    let Some(db) = fresh_database().await else {
        return;
    };
    lease_rules(&SqlStore::open(&db).await.expect("open")).await;
}

#[tokio::test]
async fn lease_rules_hold_in_memory() {
    lease_rules(&deployd::deployments::memory::MemoryStore::default()).await;
}

#[tokio::test]
async fn lease_rules_hold_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let url = deployd::store::sqlite_url_in(dir.path());
    lease_rules(&SqlStore::open(&url).await.expect("open")).await;
}

#[tokio::test]
async fn store_urls_are_checked() {
    for bad in [
        "sqlite://relative/path.db",
        "sqlite:///",
        "mysql://u@h/db",
        "/var/lib/deployd.db",
    ] {
        let e = SqlStore::open(bad).await.err().expect("refused");
        assert!(
            e.to_string().contains("sqlite:///ABSOLUTE/PATH"),
            "{bad}: {e}"
        );
    }
}
