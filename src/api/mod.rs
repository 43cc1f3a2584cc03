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

use crate::pipeline::event::Reporter;
use crate::pipeline::locks::{Busy, DeployLocks};
use crate::pipeline::model::InvalidRequest;
use crate::pipeline::rules::truncate;
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
    /// One deploy at a time per service.
    locks: Arc<DeployLocks>,
    runs: TaskTracker,
    shutdown: CancellationToken,
    /// First verify backoff when the request leaves it unset.
    health_base_delay: Duration,
}

impl DeployerService {
    pub fn new(
        pipeline: Arc<Pipeline>,
        runs: TaskTracker,
        shutdown: CancellationToken,
        health_base_delay: Duration,
    ) -> Self {
        Self {
            pipeline,
            locks: Arc::default(),
            runs,
            shutdown,
            health_base_delay,
        }
    }

    pub fn into_server(self) -> DeployerServer<Self> {
        DeployerServer::new(self)
    }

    /// Starts a run detached from the request: it finishes (or is cancelled
    /// cleanly when the client goes away or the daemon stops) and logs and
    /// counts its outcome either way.
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

/// Another deploy of the same service is running: try again after it.
fn busy(method: &'static str, e: Busy) -> Status {
    metrics::grpc_request(method, "ABORTED");
    Status::aborted(e.to_string())
}

fn deployment_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

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
        let req = convert::deploy_request(request.into_inner(), self.health_base_delay)
            .map_err(|e| invalid(M, e))?;
        req.validate().map_err(|e| invalid(M, e))?;
        let id = deployment_id();
        // Taken before the Deploy is accepted, released when its run ends.
        let lock = self
            .locks
            .try_acquire(&req.target, &id)
            .map_err(|e| busy(M, e))?;
        Ok(Response::new(self.start(
            M,
            parent,
            id,
            move |p, r, c| async move {
                p.deploy(req, r, c).await;
                drop(lock);
            },
        )))
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
