//! What the deployment store costs: deploys per second on the sandbox with
//! the SQLite store and with PostgreSQL, each against the in-memory store
//! (no durability: the baseline), measured in the same run, in interleaved
//! rounds so drift hits every store alike; and the bytes one deployment's
//! record takes.
//!
//!     cargo bench --bench store           (ROUNDS=3 DEPLOYS=40 CONCURRENCY=8)
//!
//! PostgreSQL is measured when DEPLOYD_TEST_DATABASE_URL names one
//! (`eval "$(.ci/postgres start)"`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use futures::StreamExt;

struct Store {
    name: &'static str,
    url: String,
    harness: Harness,
    rates: Vec<f64>,
}

#[tokio::main]
async fn main() {
    let (rounds, deploys, concurrency) = (
        env_or("ROUNDS", 3),
        env_or("DEPLOYS", 40),
        env_or("CONCURRENCY", 8),
    );
    let dir = tempfile::tempdir().expect("dir");
    let mut urls = vec![
        ("memory", deployd::store::MEMORY_URL.to_string()),
        ("sqlite", deployd::store::sqlite_url_in(dir.path())),
    ];
    match std::env::var("DEPLOYD_TEST_DATABASE_URL") {
        Ok(base) => urls.push(("postgres", fresh_postgres(&base).await)),
        Err(_) => println!("postgres: not measured (DEPLOYD_TEST_DATABASE_URL is unset)"),
    }
    let mut stores = vec![];
    for (name, url) in urls {
        let u = url.clone();
        let harness = Harness::start_quiet(move |c| c.database_url = Some(u)).await;
        // Creates the repository and bucket once, outside the measurement.
        let (_, o) = deploy(&harness, deploy_request("store-warmup", &example_app())).await;
        assert!(o.success, "{name}: {o:?}");
        stores.push(Store {
            name,
            url,
            harness,
            rates: vec![],
        });
    }
    for round in 0..rounds {
        for s in &mut stores {
            let t = Instant::now();
            let ok: usize = futures::stream::iter(0..deploys)
                .map(|i| {
                    let h = &s.harness;
                    async move {
                        let (_, o) =
                            deploy(h, deploy_request(&format!("r{round}-{i}"), &example_app()))
                                .await;
                        usize::from(o.success)
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .sum();
            assert_eq!(ok, deploys, "{}: every deploy succeeds", s.name);
            s.rates.push(deploys as f64 / t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&stores[0].rates);
    println!("{deploys} deploys x {rounds} rounds, {concurrency} at a time (median round):");
    for s in &stores {
        let rate = median(&s.rates);
        println!(
            "  {:<8} {:>6.1} deploys/s  ratio to no store {:.3} ({:+.1}%)",
            s.name,
            rate,
            rate / base,
            100.0 * (rate / base - 1.0)
        );
    }
    for s in stores.iter().filter(|s| s.name != "memory") {
        let store = deployd::store::SqlStore::open(&s.url).await.expect("open");
        let (rows, _) = deployd::deployments::Store::list(
            &store,
            &deployd::deployments::Filter::default(),
            None,
            1,
        )
        .await
        .expect("list");
        let id = &rows[0].id;
        let bytes = store.footprint(id).await.expect("size");
        let (append, save) = per_operation(&store).await;
        println!(
            "  {:<8} one event kept in {append:.0} us, one progress save in {save:.0} us",
            s.name
        );
        println!(
            "  {:<8} one deployment: {} events, {bytes} bytes of data (progress, outcome, events)",
            s.name, rows[0].last_seq
        );
    }
}

/// Microseconds per append and per progress save, one at a time.
async fn per_operation(store: &dyn deployd::deployments::Store) -> (f64, f64) {
    use deployd::deployments::NewDeployment;
    use deployd::pipeline::event::{Event, EventKind};
    let req = deployd::api::convert::deploy_request(
        deploy_request("store-ops", &example_app()),
        std::time::Duration::from_millis(20),
    )
    .expect("valid");
    let mut d = deployd::pipeline::Deployment::new(uuid::Uuid::new_v4().to_string(), req);
    d.request.target.service = format!("ops-{}", &d.id[..8]);
    let new = NewDeployment {
        request_id: None,
        request_digest: "bench".into(),
        caller: "bench".into(),
        owner: "bench".into(),
        lease_until: std::time::SystemTime::now() + std::time::Duration::from_secs(600),
        progress: d.clone(),
    };
    store.create(&new).await.expect("create");
    let n = 300;
    let t = Instant::now();
    for seq in 1..=n {
        let e = Event {
            deployment_id: d.id.clone(),
            seq,
            stage: None,
            time: std::time::SystemTime::now(),
            kind: EventKind::Log(format!("Step #1 - \"build\": line {seq}")),
        };
        store.write("bench", &[e], None).await.expect("append");
    }
    let append = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        store.write("bench", &[], Some(&d)).await.expect("save");
    }
    let save = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    (append, save)
}

async fn fresh_postgres(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(base).await.expect("PostgreSQL");
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    format!("{}/{name}", base.rsplit_once('/').expect("db").0)
}
