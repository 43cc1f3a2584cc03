//! Client-observed latency of short RPCs: a Preflight to its outcome, a
//! refused Deploy (INVALID_ARGUMENT) and a GetDeployment of an unknown id,
//! against the daemon as shipped (TCP_NODELAY on every accepted socket) and
//! the same daemon with Nagle's algorithm left on (the baseline: what the
//! daemon did before), measured in the same run, in interleaved rounds.
//!
//!     cargo bench --bench rpc_latency     (ROUNDS=5 CALLS=40)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use deployd::api::proto;

#[derive(Clone, Copy)]
enum Op {
    Preflight,
    RefusedDeploy,
    UnknownDeployment,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Preflight => "Preflight to its outcome",
            Op::RefusedDeploy => "refused Deploy",
            Op::UnknownDeployment => "GetDeployment, unknown id",
        }
    }
}

/// One call of `op`, timed from the request to its last answer.
async fn once(
    client: &mut proto::deployer_client::DeployerClient<tonic::transport::Channel>,
    op: Op,
) -> Duration {
    let start = Instant::now();
    match op {
        Op::Preflight => {
            let stream = client
                .preflight(proto::PreflightRequest {
                    target: Some(target("latency")),
                    ..Default::default()
                })
                .await
                .expect("preflight")
                .into_inner();
            let events = collect(stream).await;
            assert!(outcome(&events).success);
        }
        Op::RefusedDeploy => {
            let mut req = deploy_request("Not_A_Name", &example_app());
            req.target.as_mut().expect("target").service = "Not_A_Name".into();
            let e = client.deploy(req).await.expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        Op::UnknownDeployment => {
            let e = client
                .get_deployment(proto::GetDeploymentRequest {
                    id: "00000000-0000-4000-8000-000000000000".into(),
                })
                .await
                .expect_err("unknown");
            assert_eq!(e.code(), tonic::Code::NotFound);
        }
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let (rounds, calls) = (env_or("ROUNDS", 5), env_or("CALLS", 40));
    let shipped = Harness::start_quiet(|_| {}).await;
    let nagle = Harness::start_quiet(|c| c.tcp_nodelay = false).await;
    let ops = [Op::Preflight, Op::RefusedDeploy, Op::UnknownDeployment];
    // [op][daemon] -> per-call medians of each round
    let mut results = vec![[Vec::new(), Vec::new()]; ops.len()];
    let mut clients = [shipped.client().await, nagle.client().await];
    for c in clients.iter_mut() {
        // The repository and bucket exist before the clock runs.
        once(c, Op::Preflight).await;
    }
    for _ in 0..rounds {
        for (i, op) in ops.iter().enumerate() {
            for (d, client) in clients.iter_mut().enumerate() {
                let mut times = Vec::with_capacity(calls);
                for _ in 0..calls {
                    times.push(once(client, *op).await);
                }
                results[i][d].push(median(times));
            }
        }
    }
    println!("client-observed latency, median of {rounds} rounds of {calls} calls each:");
    for (i, op) in ops.iter().enumerate() {
        let on = median(results[i][0].clone());
        let off = median(results[i][1].clone());
        println!(
            "  {:<27} {:>8.2} ms with TCP_NODELAY, {:>8.2} ms with Nagle: {:.3}x",
            op.name(),
            on.as_secs_f64() * 1e3,
            off.as_secs_f64() * 1e3,
            on.as_secs_f64() / off.as_secs_f64()
        );
    }
}
