//! Traces over OTLP to a real receiver: a tonic server from
//! opentelemetry-proto, fed by `deployd serve --sandbox` (the real binary,
//! with the standard OTEL_* variables). A caller's W3C trace context
//! continues into deployd; each run is one trace with one root span, stage
//! spans in order, Google API call spans, and the failing stage marked.

mod common;
use common::{free_port, ChildGuard};

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployd::api::proto::{self, deployer_client::DeployerClient};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            if let Some(r) = &rs.resource {
                let mut res = self.1.lock().expect("lock");
                for a in &r.attributes {
                    res.push(format!(
                        "{}={:?}",
                        a.key,
                        a.value.as_ref().and_then(|v| v.value.clone())
                    ));
                }
            }
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn deploy(
    client: &mut DeployerClient<tonic::transport::Channel>,
    dir: &str,
    service: &str,
    traceparent: Option<&str>,
) -> proto::Outcome {
    let mut req = tonic::Request::new(proto::DeployRequest {
        target: Some(proto::Target {
            project: "demo-project".into(),
            region: "us-central1".into(),
            service: service.into(),
        }),
        source: Some(proto::Source {
            kind: Some(proto::source::Kind::LocalPath(dir.into())),
            git_ref: String::new(),
            subdirectory: String::new(),
        }),
        runtime: Some(proto::RuntimeSettings {
            allow_unauthenticated: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        req.metadata_mut()
            .insert("traceparent", tp.parse().expect("ascii"));
    }
    let mut stream = client.deploy(req).await.expect("accepted").into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.expect("stream") {
        last = e.kind;
    }
    match last {
        Some(proto::event::Kind::Outcome(o)) => o,
        other => panic!("no outcome: {other:?}"),
    }
}

/// `deployd serve --sandbox` (JSON logs to `stderr`) with the OTEL
/// variables given, batches sent every 100 ms; and a client of it.
async fn serve_traced(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (ChildGuard, DeployerClient<tonic::transport::Channel>) {
    let grpc = free_port();
    let daemon = ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_deployd"))
            .args(["--log-format", "json", "serve", "--sandbox"])
            .args(["--local-source-root", "/"])
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(args)
            .envs(env.iter().copied())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("DEPLOYD_RETRY_BASE_DELAY_MS", "20")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("daemon starts"),
    );
    let client = loop {
        if let Ok(c) = DeployerClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (daemon, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_is_one_trace_with_stage_and_api_spans() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let server = receiver.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });

    let (_daemon, mut client) = serve_traced(
        &["--metrics-listen", &format!("127.0.0.1:{}", free_port())],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{otlp}")),
            ("OTEL_SERVICE_NAME", "deployd-staging"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=staging",
            ),
        ],
        Stdio::null(),
    )
    .await;

    // A caller's trace continues into deployd; this run fails in analyze.
    let no_dockerfile = tempfile::tempdir().expect("tempdir");
    std::fs::write(no_dockerfile.path().join("app.py"), "print()\n").expect("write");
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let o = deploy(
        &mut client,
        &no_dockerfile.path().display().to_string(),
        "traced-fail",
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await;
    assert!(!o.success);

    // A run without a caller's context is a trace of its own.
    let example = format!("{}/examples/hello", env!("CARGO_MANIFEST_DIR"));
    let o = deploy(&mut client, &example, "traced-ok", None).await;
    assert!(o.success, "{o:?}");

    // Batches go out every 100 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = receiver.0.lock().expect("lock").clone();
        let verify_seen = spans.iter().any(|s| s.name == "verify");
        if verify_seen
            && spans
                .iter()
                .any(|s| s.name == "analyze" && hex(&s.trace_id) == caller_trace)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break receiver.0.lock().expect("lock").clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not received: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The failed run: in the caller's trace, under the caller's span.
    let failed: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == caller_trace)
        .collect();
    let rpc = failed
        .iter()
        .find(|s| s.name == "deployd.v1.Deployer/Deploy")
        .expect("rpc span");
    assert_eq!(hex(&rpc.parent_span_id), caller_span);
    let analyze = failed
        .iter()
        .find(|s| s.name == "analyze")
        .expect("analyze span");
    assert_eq!(
        analyze.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    let attr = |s: &Span, k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
    };
    // The failing stage names its error; the root says the run failed.
    assert!(
        attr(analyze, "error.type")
            .is_some_and(|v| v.contains("ANALYSIS_FAILED") || v.contains('_')),
        "{:?}",
        analyze.attributes
    );
    assert!(analyze
        .status
        .as_ref()
        .is_some_and(|s| !s.message.is_empty()));
    assert!(
        attr(rpc, "deployd.result").is_some_and(|v| v.contains("failure")),
        "{:?}",
        rpc.attributes
    );
    assert_eq!(
        rpc.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert!(attr(rpc, "rpc.service").is_some_and(|v| v.contains("deployd.v1.Deployer")));
    assert!(
        attr(rpc, "rpc.grpc.status_code").is_some_and(|v| v.contains("IntValue(0)")),
        "{:?}",
        rpc.attributes
    );
    let source = failed
        .iter()
        .find(|s| s.name == "source")
        .expect("source span");
    assert_ne!(
        source.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert!(
        !failed.iter().any(|s| s.name == "build"),
        "no stage after the failure"
    );

    // The successful run: one trace, one root, stages in order, API calls.
    let ok_trace = spans
        .iter()
        .find(|s| s.name == "verify" && hex(&s.trace_id) != caller_trace)
        .map(|s| s.trace_id.clone())
        .expect("verify span");
    let run: Vec<&Span> = spans.iter().filter(|s| s.trace_id == ok_trace).collect();
    let roots: Vec<&&Span> = run.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(
        roots.len(),
        1,
        "{:?}",
        roots.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(roots[0].name, "deployd.v1.Deployer/Deploy");
    let deploy_span = run
        .iter()
        .find(|s| s.name == "deploy" && s.parent_span_id == roots[0].span_id)
        .expect("deploy span");
    for k in [
        "deployd.deployment_id",
        "cloud.account.id",
        "cloud.region",
        "deployd.service",
    ] {
        assert!(attr(deploy_span, k).is_some(), "deploy span lacks {k}");
    }
    // The caller is on the trace (no authentication here: the peer).
    let who = attr(roots[0], "enduser.id").expect("the rpc span names its caller");
    assert!(who.contains("unauthenticated@127.0.0.1"), "{who}");
    let mut stages: Vec<&&Span> = run
        .iter()
        .filter(|s| s.parent_span_id == deploy_span.span_id && attr(s, "deployd.stage").is_some())
        .collect();
    stages.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "source",
            "analyze",
            "preflight",
            "build",
            "deploy",
            "verify"
        ]
    );
    let api_calls: Vec<&str> = run
        .iter()
        .filter(|s| attr(s, "gcp.client.service").is_some())
        .map(|s| s.name.as_str())
        .collect();
    for m in [
        "cloudbuild.projects.locations.builds.create",
        "storage.objects.insert",
        "run.projects.locations.services.create",
    ] {
        assert!(api_calls.contains(&m), "{m} in {api_calls:?}");
    }
    // Google API client spans by the HTTP conventions.
    let create = run
        .iter()
        .find(|s| s.name == "cloudbuild.projects.locations.builds.create")
        .expect("create span");
    assert!(attr(create, "rpc.system").is_none(), "not a semconv value");
    assert!(attr(create, "http.request.method").is_some_and(|v| v.contains("POST")));
    assert!(attr(create, "url.full")
        .is_some_and(|v| v.contains("://127.0.0.1:") && v.contains("/v1/projects/demo-project/")));
    assert!(attr(create, "server.address").is_some_and(|v| v.contains("127.0.0.1")));
    assert!(
        attr(create, "http.response.status_code").is_some_and(|v| v.contains("IntValue(200)")),
        "{:?}",
        create.attributes
    );
    // No query string reaches a span (an upload's carries its session).
    for s in &run {
        if let Some(u) = attr(s, "url.full") {
            assert!(!u.contains('?'), "{}: {u}", s.name);
        }
    }
    assert!(run.iter().any(|s| s.name == "storage.objects.insert"));
    // Probes are spans too.
    assert!(run.iter().any(|s| s.name == "health_check"
        && attr(s, "url.full").is_some()
        && attr(s, "http.response.status_code").is_some()));
    assert!(attr(roots[0], "deployd.result").is_some_and(|v| v.contains("success")));
    // The resource honours the standard variables, and names the version.
    let resource = receiver.1.lock().expect("lock").clone();
    assert!(
        resource
            .iter()
            .any(|a| a == "service.name=Some(StringValue(\"deployd-staging\"))"),
        "{resource:?}"
    );
    assert!(
        resource
            .iter()
            .any(|a| a.starts_with("deployment.environment.name=")),
        "{resource:?}"
    );
    assert!(
        resource.iter().any(|a| a
            == &format!(
                "service.version=Some(StringValue(\"{}\"))",
                env!("CARGO_PKG_VERSION")
            )),
        "{resource:?}"
    );
}

/// An OTLP protocol deployd cannot speak is refused at start, by name.
#[test]
fn an_unknown_otlp_protocol_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"carrier-pigeon\"")
            && err.contains("http/protobuf"),
        "{err}"
    );
}

/// Serves `app` as the OTLP/HTTP receiver of a daemon exporting with
/// `protocol`, and deploys the example as `service` through it; returns
/// the daemon (which exports until dropped) and its log file.
async fn deploy_over_http(
    app: axum::Router,
    protocol: &str,
    service: &str,
) -> (impl Sized, tempfile::NamedTempFile) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let logs = tempfile::NamedTempFile::new().expect("log file");
    let (daemon, mut client) = serve_traced(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{otlp}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ],
        logs.reopen().expect("log file").into(),
    )
    .await;
    let example = format!("{}/examples/hello", env!("CARGO_MANIFEST_DIR"));
    let o = deploy(&mut client, &example, service, None).await;
    assert!(o.success, "{o:?}");
    (daemon, logs)
}

/// OTLP over HTTP (`http/protobuf`) to a receiver of the OTLP/HTTP shape
/// (POST /v1/traces, a protobuf ExportTraceServiceRequest), and JSON log
/// lines that name the trace they belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_and_json_logs_carry_the_trace() {
    use prost::Message;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/x-protobuf")
                    );
                    let req = ExportTraceServiceRequest::decode(body).expect("protobuf");
                    let mut s = sink.lock().expect("lock");
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            s.extend(ss.spans);
                        }
                    }
                    ExportTraceServiceResponse {
                        partial_success: None,
                    }
                    .encode_to_vec()
                }
            },
        ),
    );
    let (_daemon, logs) = deploy_over_http(app, "http/protobuf", "traced-http").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let trace = loop {
        let found = spans
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s.name == "verify")
            .map(|s| hex(&s.trace_id));
        if let Some(t) = found {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "no spans over HTTP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The run's log lines name that trace, and a span of it.
    let text = std::fs::read_to_string(logs.path()).expect("logs");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "deploy finished")
        .unwrap_or_else(|| panic!("no 'deploy finished' line in:\n{text}"));
    assert_eq!(finished["trace_id"], trace.as_str(), "{finished}");
    let span_id = finished["span_id"].as_str().expect("span_id");
    // The run's span ends last, so it may arrive in a later export batch
    // than the verify span: wait for it rather than read one snapshot.
    loop {
        let exported = spans
            .lock()
            .expect("lock")
            .iter()
            .any(|s| hex(&s.span_id) == span_id);
        if exported {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{span_id} is a span of the trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No ANSI colour codes on a file.
    assert!(!text.contains('\u{1b}'));
}

/// OTLP/HTTP with the JSON encoding (`http/json`): the receiver gets
/// `application/json` in OTLP's JSON mapping (camelCase fields, hex ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_export_reaches_a_json_receiver() {
    let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/json")
                    );
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                    sink.lock().expect("lock").push(v);
                    ([("content-type", "application/json")], "{}")
                }
            },
        ),
    );
    let _daemon = deploy_over_http(app, "http/json", "traced-json").await;

    let spans = |bodies: &[serde_json::Value]| -> Vec<serde_json::Value> {
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let deploy_span = loop {
        // The run's root span (the deploy stage's span shares its name).
        let found = spans(&bodies.lock().expect("lock")).into_iter().find(|s| {
            s["name"] == "deploy"
                && s["attributes"].as_array().is_some_and(|a| {
                    a.iter().any(|a| {
                        a["key"] == "deployd.result" && a["value"]["stringValue"] == "success"
                    })
                })
        });
        if let Some(s) = found {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deploy span over http/json: {:?}",
            bodies.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let trace = deploy_span["traceId"].as_str().expect("traceId");
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{deploy_span}"
    );
    // The same trace holds the stage spans.
    let stages = spans(&bodies.lock().expect("lock"))
        .into_iter()
        .filter(|s| s["traceId"] == trace && s["name"] == "verify")
        .count();
    assert!(stages >= 1, "{deploy_span}");
    let resource = &bodies.lock().expect("lock")[0]["resourceSpans"][0]["resource"];
    assert!(
        resource["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["key"] == "service.name"),
        "{resource}"
    );
}
