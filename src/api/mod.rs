//! The gRPC edge: the tonic service for `deployd.v1.Deployer`, health and
//! reflection, proto <-> domain conversion, and the one place where domain
//! errors become `tonic::Status`. Handlers are thin: extract, convert, start
//! the pipeline, stream its events back.

pub mod convert;

pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("deployd.v1");

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("deployd_descriptor");
}

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::deployments::{CancelError, Cursor, Filter, Manager, StoreError, SubmitError, WatchEnd};
use crate::pipeline::event::Reporter;
use crate::pipeline::model::InvalidRequest;
use crate::pipeline::rules::{self, truncate};
use crate::pipeline::verify::UrlRefused;
use crate::pipeline::Pipeline;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// W3C trace context (`traceparent`) from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn trace_parent<T>(request: &Request<T>) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&MetadataExtractor(request.metadata()))
    })
}
use crate::telemetry::metrics;
use proto::deployer_server::{Deployer, DeployerServer};

/// A status message longer than this is cut: it travels in a header.
const MAX_STATUS_MESSAGE: usize = 1024;

/// Buffered events per run; a slow client slows its run, not others.
const EVENT_BUFFER: usize = 256;

pub struct DeployerService {
    pipeline: Arc<Pipeline>,
    /// Deployments: recorded, run, resumed, followed.
    manager: Arc<Manager>,
    /// Preflight and Verify runs (not recorded).
    runs: TaskTracker,
    shutdown: CancellationToken,
    /// First verify backoff when the request leaves it unset.
    health_base_delay: Duration,
}

impl DeployerService {
    pub fn new(
        pipeline: Arc<Pipeline>,
        manager: Arc<Manager>,
        runs: TaskTracker,
        shutdown: CancellationToken,
        health_base_delay: Duration,
    ) -> Self {
        Self {
            pipeline,
            manager,
            runs,
            shutdown,
            health_base_delay,
        }
    }

    pub fn into_server(self) -> DeployerServer<Self> {
        DeployerServer::new(self)
    }

    /// A deployment's events from the store after `after_seq`, live until
    /// its outcome. Dropping the stream stops only the stream.
    fn follow(&self, id: String, after_seq: u64) -> EventStream {
        Box::pin(
            self.manager
                .watch(id, after_seq)
                .map(|r| r.map(convert::event).map_err(watch_end)),
        )
    }

    /// Starts a Preflight or Verify run detached from the request: it
    /// finishes (or is cancelled cleanly when the client goes away or the
    /// daemon stops) and logs and counts its outcome either way.
    fn start<F, Fut>(
        &self,
        method: &'static str,
        parent: opentelemetry::Context,
        id: String,
        run: F,
    ) -> EventStream
    where
        F: FnOnce(Arc<Pipeline>, Reporter, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let cancel = self.shutdown.child_token();
        // The run's spans continue the caller's trace when it sent one.
        let span = tracing::info_span!("rpc", otel.name = format!("deployd.v1.Deployer/{method}"), otel.kind = "server",
            rpc.system = "grpc", rpc.method = method, deployment_id = %id);
        let _ = span.set_parent(parent);
        let fut = run(self.pipeline.clone(), Reporter::new(id, tx), cancel.clone());
        self.runs.spawn(fut.instrument(span));
        metrics::grpc_request(method, "OK");
        // Dropping the response stream (client gone) cancels the run.
        let guard = cancel.drop_guard();
        Box::pin(ReceiverStream::new(rx).map(move |e| {
            let _keep = &guard;
            Ok(convert::event(e))
        }))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// The one conversion from domain errors to gRPC status.
fn invalid(method: &'static str, e: InvalidRequest) -> Status {
    metrics::grpc_request(method, "INVALID_ARGUMENT");
    // Reasons quote the value they refuse, bounded; this bounds the rest.
    let message = format!("{}: {}", e.field, e.reason);
    Status::invalid_argument(truncate(&message, MAX_STATUS_MESSAGE))
}

/// Why a Deploy was not accepted.
fn not_submitted(method: &'static str, e: SubmitError) -> Status {
    let (code, status) = match &e {
        // Another deploy of the same service is running: try after it.
        SubmitError::Busy { .. } => ("ABORTED", Status::aborted(e.to_string())),
        SubmitError::RequestMismatch { .. } => {
            ("ALREADY_EXISTS", Status::already_exists(e.to_string()))
        }
        SubmitError::Draining | SubmitError::Store(_) => {
            ("UNAVAILABLE", Status::unavailable(e.to_string()))
        }
    };
    metrics::grpc_request(method, code);
    status
}

/// A stream that ends without an outcome says why and where to go on.
fn watch_end(e: WatchEnd) -> Status {
    Status::unavailable(e.to_string())
}

fn store_failed(method: &'static str, e: StoreError) -> Status {
    metrics::grpc_request(method, "UNAVAILABLE");
    Status::unavailable(format!("the deployment store failed: {e}"))
}

fn not_found(method: &'static str, id: &str) -> Status {
    metrics::grpc_request(method, "NOT_FOUND");
    Status::not_found(format!("no deployment {id}"))
}

fn deployment_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Who called, as far as the transport says (the API has no
/// authentication yet).
fn caller<T>(request: &Request<T>) -> String {
    match request.remote_addr() {
        Some(a) => format!("unauthenticated@{}", a.ip()),
        None => "unauthenticated".into(),
    }
}

fn valid_id(method: &'static str, id: &str) -> Result<(), Status> {
    rules::deployment_id(id).map_err(|r| invalid(method, InvalidRequest::new("id", r)))
}

/// A listing page token: where the previous page ended.
fn page_token(c: &Cursor) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", c.created_ms, c.id))
}

fn parse_page_token(t: &str) -> Option<Cursor> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (ms, id) = raw.split_once(':')?;
    rules::deployment_id(id).ok()?;
    Some(Cursor {
        created_ms: ms.parse().ok()?,
        id: id.to_string(),
    })
}

/// Page size of ListDeployments when the request leaves it 0.
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

/// A URL outside the verify policy: the caller may not have it probed.
fn refused(method: &'static str, e: UrlRefused) -> Status {
    metrics::grpc_request(method, "PERMISSION_DENIED");
    Status::permission_denied(e.to_string())
}

#[tonic::async_trait]
impl Deployer for DeployerService {
    type PreflightStream = EventStream;
    type DeployStream = EventStream;
    type VerifyStream = EventStream;
    type WatchDeploymentStream = EventStream;

    async fn preflight(
        &self,
        request: Request<proto::PreflightRequest>,
    ) -> Result<Response<EventStream>, Status> {
        const M: &str = "Preflight";
        let parent = trace_parent(&request);
        let req = convert::preflight_request(request.into_inner()).map_err(|e| invalid(M, e))?;
        req.validate().map_err(|e| invalid(M, e))?;
        Ok(Response::new(self.start(
            M,
            parent,
            deployment_id(),
            move |p, r, c| async move {
                p.preflight(req, r, c).await;
            },
        )))
    }

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<EventStream>, Status> {
        const M: &str = "Deploy";
        let parent = trace_parent(&request);
        let caller = caller(&request);
        let inner = request.into_inner();
        let request_id = (!inner.request_id.is_empty()).then(|| inner.request_id.clone());
        if let Some(key) = &request_id {
            rules::request_id(key).map_err(|r| invalid(M, InvalidRequest::new("request_id", r)))?;
        }
        let req =
            convert::deploy_request(inner, self.health_base_delay).map_err(|e| invalid(M, e))?;
        req.validate().map_err(|e| invalid(M, e))?;
        // The run's spans continue the caller's trace when it sent one.
        let span = tracing::info_span!(
            "rpc",
            otel.name = "deployd.v1.Deployer/Deploy",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = M,
            deployment_id = tracing::field::Empty
        );
        let _ = span.set_parent(parent);
        // One running deployment per service, enforced by the store.
        let submitted = self
            .manager
            .submit(req, request_id, caller, span)
            .await
            .map_err(|e| not_submitted(M, e))?;
        if submitted.attached {
            tracing::info!(deployment_id = %submitted.id, "request_id seen before: following that deployment");
        }
        metrics::grpc_request(M, "OK");
        Ok(Response::new(self.follow(submitted.id, 0)))
    }

    async fn get_deployment(
        &self,
        request: Request<proto::GetDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        const M: &str = "GetDeployment";
        let id = request.into_inner().id;
        valid_id(M, &id)?;
        let rec = self
            .manager
            .get(&id)
            .await
            .map_err(|e| store_failed(M, e))?;
        let rec = rec.ok_or_else(|| not_found(M, &id))?;
        metrics::grpc_request(M, "OK");
        Ok(Response::new(convert::deployment(rec)))
    }

    async fn list_deployments(
        &self,
        request: Request<proto::ListDeploymentsRequest>,
    ) -> Result<Response<proto::ListDeploymentsResponse>, Status> {
        const M: &str = "ListDeployments";
        let r = request.into_inner();
        if r.page_size > MAX_PAGE_SIZE {
            return Err(invalid(
                M,
                InvalidRequest::new("page_size", format!("must be at most {MAX_PAGE_SIZE}")),
            ));
        }
        let after = match r.page_token.as_str() {
            "" => None,
            t => Some(parse_page_token(t).ok_or_else(|| {
                invalid(
                    M,
                    InvalidRequest::new("page_token", "is not a token this API returned"),
                )
            })?),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter = Filter {
            project: nonempty(r.project),
            region: nonempty(r.region),
            service: nonempty(r.service),
            state: convert::state_filter(r.state).map_err(|e| invalid(M, e))?,
        };
        let limit = if r.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            r.page_size
        };
        let (records, next) = self
            .manager
            .list(&filter, after.as_ref(), limit)
            .await
            .map_err(|e| store_failed(M, e))?;
        metrics::grpc_request(M, "OK");
        Ok(Response::new(proto::ListDeploymentsResponse {
            deployments: records.into_iter().map(convert::deployment).collect(),
            next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn watch_deployment(
        &self,
        request: Request<proto::WatchDeploymentRequest>,
    ) -> Result<Response<EventStream>, Status> {
        const M: &str = "WatchDeployment";
        let r = request.into_inner();
        valid_id(M, &r.id)?;
        if self
            .manager
            .get(&r.id)
            .await
            .map_err(|e| store_failed(M, e))?
            .is_none()
        {
            return Err(not_found(M, &r.id));
        }
        metrics::grpc_request(M, "OK");
        Ok(Response::new(self.follow(r.id, r.after_seq)))
    }

    async fn cancel_deployment(
        &self,
        request: Request<proto::CancelDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        const M: &str = "CancelDeployment";
        let id = request.into_inner().id;
        valid_id(M, &id)?;
        match self.manager.cancel(&id).await {
            Ok(rec) => {
                metrics::grpc_request(M, "OK");
                tracing::info!(deployment_id = %id, owner = ?rec.owner, "cancel requested");
                Ok(Response::new(convert::deployment(rec)))
            }
            Err(CancelError::NotFound(_)) => Err(not_found(M, &id)),
            Err(e @ CancelError::Ended(_)) => {
                metrics::grpc_request(M, "FAILED_PRECONDITION");
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(CancelError::Store(e)) => Err(store_failed(M, e)),
        }
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<EventStream>, Status> {
        const M: &str = "Verify";
        let parent = trace_parent(&request);
        let req = convert::verify_request(request.into_inner(), self.health_base_delay)
            .map_err(|e| invalid(M, e))?;
        req.validate().map_err(|e| invalid(M, e))?;
        // Refused by name or address before anything is streamed; a name
        // that does not resolve yet is a failed attempt, not a refusal.
        self.pipeline
            .authorize_verify_url(&req.url)
            .await
            .map_err(|e| refused(M, e))?;
        Ok(Response::new(self.start(
            M,
            parent,
            deployment_id(),
            move |p, r, c| async move {
                p.verify(req, r, c).await;
            },
        )))
    }
}
