//! The gRPC edge: the tonic service for `deployd.v1.Deployer`, health and
//! reflection, proto <-> domain conversion, and the one place where domain
//! errors become `tonic::Status`. Handlers are thin: extract, convert, start
//! the pipeline, stream its events back.

pub mod auth;
pub mod canary;
pub mod convert;
pub mod observe;
pub mod refusal;

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

use crate::api::auth::policy::Action;
use crate::api::auth::{Auth, Call, Principal};
use crate::deployments::{CancelError, Cursor, Filter, Manager, StoreError, SubmitError, WatchEnd};
use crate::pipeline::event::Reporter;
use crate::pipeline::model::{InvalidRequest, SourceSpec};
use crate::pipeline::rules;
use crate::pipeline::verify::UrlRefused;
use crate::pipeline::Pipeline;
use refusal::{refuse, Reason};
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
use proto::deployer_server::{Deployer, DeployerServer};

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
    /// Authentication (done by its layer) and policy (asked here).
    auth: Arc<Auth>,
}

impl DeployerService {
    pub fn new(
        pipeline: Arc<Pipeline>,
        manager: Arc<Manager>,
        runs: TaskTracker,
        shutdown: CancellationToken,
        health_base_delay: Duration,
        auth: Arc<Auth>,
    ) -> Self {
        Self {
            pipeline,
            manager,
            runs,
            shutdown,
            health_base_delay,
            auth,
        }
    }

    fn call<T>(&self, rpc: &'static str, request: &Request<T>) -> Call {
        Call::begin(self.auth.clone(), rpc, request)
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
        principal: &Principal,
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
            rpc.system = "grpc", rpc.service = RPC_SERVICE, rpc.method = method, rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty, otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty, result = tracing::field::Empty,
            deployment_id = %id, enduser.id = %principal.name);
        let _ = span.set_parent(parent);
        let fut = run(self.pipeline.clone(), Reporter::new(id, tx), cancel.clone());
        self.runs.spawn(fut.instrument(span.clone()));
        // Dropping the response stream (client gone) cancels the run.
        let guard = cancel.drop_guard();
        ending_in(
            span,
            Box::pin(ReceiverStream::new(rx).map(move |e| {
                let _keep = &guard;
                Ok(convert::event(e))
            })),
        )
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

const RPC_SERVICE: &str = "deployd.v1.Deployer";

/// The run's result on its root span, read from the outcome event.
fn mark_result(span: &tracing::Span, o: &proto::Outcome) {
    let code = o.error.as_ref().map(|f| f.code.as_str());
    let result =
        crate::pipeline::event::result_of(o.success, code, o.canary_aborted, o.rolled_back);
    let failure = o
        .error
        .as_ref()
        .map(|f| (f.code.as_str(), f.message.as_str()));
    crate::telemetry::record_result(span, result, failure);
}

/// The stream, recording its final status on the call's server span when
/// it ends (0 after the last event, the error's code, 1 CANCELLED when the
/// client dropped it first); the span lives until then.
fn ending_in(span: tracing::Span, stream: EventStream) -> EventStream {
    struct Ending {
        span: tracing::Span,
        stream: EventStream,
        recorded: bool,
    }
    impl Stream for Ending {
        type Item = Result<proto::Event, Status>;
        fn poll_next(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            let polled = self.stream.as_mut().poll_next(cx);
            if let std::task::Poll::Ready(Some(Ok(proto::Event {
                kind: Some(proto::event::Kind::Outcome(o)),
                ..
            }))) = &polled
            {
                mark_result(&self.span, o);
            }
            let code = match &polled {
                std::task::Poll::Ready(None) => Some(0),
                std::task::Poll::Ready(Some(Err(s))) => Some(s.code() as i64),
                _ => None,
            };
            if let (Some(code), false) = (code, self.recorded) {
                self.recorded = true;
                self.span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    self.span.record("otel.status_code", "ERROR");
                }
            }
            polled
        }
    }
    impl Drop for Ending {
        fn drop(&mut self) {
            if !self.recorded {
                self.span
                    .record("rpc.grpc.status_code", tonic::Code::Cancelled as i64);
            }
        }
    }
    Box::pin(Ending {
        span,
        stream,
        recorded: false,
    })
}

/// The conversions from domain errors to gRPC status, each with its
/// `ErrorInfo` reason (`refusal`).
fn invalid(e: InvalidRequest) -> Status {
    refusal::invalid(vec![e])
}

/// Every rule a request breaks, or nothing.
fn valid(violations: Vec<InvalidRequest>) -> Result<(), Status> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(refusal::invalid(violations))
    }
}

/// Why a Deploy was not accepted.
fn not_submitted(e: SubmitError) -> Status {
    let reason = match &e {
        // Another deploy of the same service is running: try after it.
        SubmitError::Busy { .. } => Reason::ServiceBusy,
        SubmitError::RequestMismatch { .. } => Reason::RequestIdReused,
        SubmitError::Draining => Reason::Draining,
        SubmitError::Store(_) => Reason::StoreUnavailable,
    };
    refuse(reason, e.to_string())
}

/// A stream that ends without an outcome says why and where to go on.
fn watch_end(e: WatchEnd) -> Status {
    let reason = match &e {
        WatchEnd::Draining { .. } => Reason::Draining,
        WatchEnd::Store { .. } => Reason::StoreUnavailable,
    };
    refuse(reason, e.to_string())
}

fn store_failed(e: StoreError) -> Status {
    refuse(
        Reason::StoreUnavailable,
        format!("the deployment store failed: {e}"),
    )
}

fn not_found(id: &str) -> Status {
    refuse(Reason::DeploymentNotFound, format!("no deployment {id}"))
}

fn deployment_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn valid_id(id: &str) -> Result<(), Status> {
    rules::deployment_id(id).map_err(|r| invalid(InvalidRequest::new("id", r)))
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
fn refused(e: UrlRefused) -> Status {
    refuse(Reason::UrlRefused, e.to_string())
}

/// A listing reads at most this many pages of the store looking for
/// deployments the caller may see, then returns what it found with a token
/// to go on.
const MAX_LISTING_SCANS: usize = 10;

/// The host of a Verify URL, for the policy (the URL itself was
/// validated before).
fn url_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

impl DeployerService {
    async fn preflight_call(
        &self,
        call: &mut Call,
        request: Request<proto::PreflightRequest>,
    ) -> Result<EventStream, Status> {
        let parent = trace_parent(&request);
        let req = convert::preflight_request(request.into_inner()).map_err(invalid)?;
        valid(req.violations())?;
        call.permit(Action::Preflight, &req.target.project, &req.target.service)?;
        Ok(self.start(
            call.rpc,
            parent,
            &call.principal,
            deployment_id(),
            move |p, r, c| async move {
                p.preflight(req, r, c).await;
            },
        ))
    }

    async fn deploy_call(
        &self,
        call: &mut Call,
        request: Request<proto::DeployRequest>,
    ) -> Result<EventStream, Status> {
        let parent = trace_parent(&request);
        let inner = request.into_inner();
        let request_id = (!inner.request_id.is_empty()).then(|| inner.request_id.clone());
        if let Some(key) = &request_id {
            rules::request_id(key).map_err(|r| invalid(InvalidRequest::new("request_id", r)))?;
        }
        let req = convert::deploy_request(inner, self.health_base_delay).map_err(invalid)?;
        valid(req.violations())?;
        self.pipeline.admit(&req).map_err(invalid)?;
        call.permit(Action::Deploy, &req.target.project, &req.target.service)?;
        // The run's spans continue the caller's trace when it sent one.
        let span = tracing::info_span!(
            "rpc",
            otel.name = "deployd.v1.Deployer/Deploy",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = RPC_SERVICE,
            rpc.method = call.rpc,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
            result = tracing::field::Empty,
            enduser.id = %call.principal.name,
            deployment_id = tracing::field::Empty
        );
        let _ = span.set_parent(parent);
        let rpc_span = span.clone();
        // One running deployment per service, enforced by the store.
        let submitted = self
            .manager
            .submit(req, request_id, call.principal.name.clone(), span)
            .await
            .map_err(not_submitted)?;
        if submitted.attached {
            tracing::info!(deployment_id = %submitted.id, "request_id seen before: following that deployment");
        }
        call.names_deployment(&submitted.id);
        Ok(ending_in(rpc_span, self.follow(submitted.id, 0)))
    }

    /// The deployment `id`, if the call may do `action` to it.
    async fn permitted_deployment(
        &self,
        call: &mut Call,
        action: Action,
        id: &str,
    ) -> Result<crate::deployments::Record, Status> {
        valid_id(id)?;
        call.names_deployment(id);
        let rec = self
            .manager
            .get(id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| not_found(id))?;
        call.permit_deployment(action, id, &rec.target.project, &rec.target.service)?;
        Ok(rec)
    }

    async fn analyze_call(
        &self,
        call: &mut Call,
        r: proto::AnalyzeRequest,
    ) -> Result<proto::AnalyzeResponse, Status> {
        let req = convert::analyze_request(r).map_err(invalid)?;
        valid(req.violations())?;
        let shown = match &req.source {
            SourceSpec::LocalPath(p) => p.display().to_string(),
            SourceSpec::Git { url, .. } => url.clone(),
            SourceSpec::Image(image) => image.clone(),
        };
        call.permit_analyze(&shown)?;
        Ok(convert::analyze_response(self.pipeline.analyze(&req).await))
    }

    async fn delivery_call(
        &self,
        call: &mut Call,
        r: proto::GetDeliveryMetricsRequest,
    ) -> Result<proto::DeliveryMetrics, Status> {
        let (target, window) =
            convert::delivery_request(r, self.manager.retention()).map_err(invalid)?;
        // Reading a service's history is listing its deployments.
        call.permit(Action::ListDeployments, &target.project, &target.service)?;
        let end = std::time::SystemTime::now();
        let start = end.checked_sub(window).unwrap_or(std::time::UNIX_EPOCH);
        let m = self
            .manager
            .delivery_metrics(&target, start, end)
            .await
            .map_err(store_failed)?;
        Ok(convert::delivery_metrics(&target, &m))
    }

    async fn list_call(
        &self,
        call: &mut Call,
        r: proto::ListDeploymentsRequest,
    ) -> Result<proto::ListDeploymentsResponse, Status> {
        if r.page_size > MAX_PAGE_SIZE {
            return Err(invalid(InvalidRequest::new(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}"),
            )));
        }
        let mut after = match r.page_token.as_str() {
            "" => None,
            t => Some(parse_page_token(t).ok_or_else(|| {
                invalid(InvalidRequest::new(
                    "page_token",
                    "is not a token this API returned",
                ))
            })?),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter = Filter {
            project: nonempty(r.project),
            region: nonempty(r.region),
            service: nonempty(r.service),
            state: convert::state_filter(r.state).map_err(invalid)?,
        };
        crate::pipeline::model::validate_filters(
            filter.project.as_deref(),
            filter.region.as_deref(),
            filter.service.as_deref(),
        )
        .map_err(invalid)?;
        call.permit_listing(filter.project.as_deref())?;
        let limit = if r.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            r.page_size
        };
        // Deployments the caller may not see are skipped, so a page may
        // take several reads of the store; bounded, then a short page.
        let mut visible = Vec::new();
        let mut next = None;
        for _ in 0..MAX_LISTING_SCANS {
            let want = limit - visible.len() as u32;
            let (records, more) = self
                .manager
                .list(&filter, after.as_ref(), want)
                .await
                .map_err(store_failed)?;
            visible.extend(records.into_iter().filter(|rec| {
                call.sees(
                    Action::ListDeployments,
                    &rec.target.project,
                    &rec.target.service,
                )
            }));
            next = more;
            if visible.len() as u32 >= limit || next.is_none() {
                break;
            }
            after = next.clone();
        }
        Ok(proto::ListDeploymentsResponse {
            deployments: visible.into_iter().map(convert::deployment).collect(),
            next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
        })
    }

    async fn verify_call(
        &self,
        call: &mut Call,
        request: Request<proto::VerifyRequest>,
    ) -> Result<EventStream, Status> {
        let parent = trace_parent(&request);
        let req = convert::verify_request(request.into_inner(), self.health_base_delay)
            .map_err(invalid)?;
        valid(req.violations())?;
        call.permit_host(&url_host(&req.url))?;
        // Refused by name or address before anything is streamed; a name
        // that does not resolve yet is a failed attempt, not a refusal.
        self.pipeline
            .authorize_verify_url(&req.url)
            .await
            .map_err(refused)?;
        Ok(self.start(
            call.rpc,
            parent,
            &call.principal,
            deployment_id(),
            move |p, r, c| async move {
                p.verify(req, r, c).await;
            },
        ))
    }
}

/// Every handler: begin the call (principal from the auth layer), run it,
/// end it (audit line, request metric).
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
        let mut call = self.call("Preflight", &request);
        let r = self.preflight_call(&mut call, request).await;
        call.end(r.map(Response::new))
    }

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut call = self.call("Deploy", &request);
        let r = self.deploy_call(&mut call, request).await;
        call.end(r.map(Response::new))
    }

    async fn get_deployment(
        &self,
        request: Request<proto::GetDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let mut call = self.call("GetDeployment", &request);
        let id = request.into_inner().id;
        let r = self
            .permitted_deployment(&mut call, Action::GetDeployment, &id)
            .await;
        call.end(r.map(|rec| Response::new(convert::deployment(rec))))
    }

    async fn list_deployments(
        &self,
        request: Request<proto::ListDeploymentsRequest>,
    ) -> Result<Response<proto::ListDeploymentsResponse>, Status> {
        let mut call = self.call("ListDeployments", &request);
        let r = self.list_call(&mut call, request.into_inner()).await;
        call.end(r.map(Response::new))
    }

    async fn watch_deployment(
        &self,
        request: Request<proto::WatchDeploymentRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut call = self.call("WatchDeployment", &request);
        let r = request.into_inner();
        let found = self
            .permitted_deployment(&mut call, Action::WatchDeployment, &r.id)
            .await;
        call.end(found.map(|_| Response::new(self.follow(r.id, r.after_seq))))
    }

    async fn cancel_deployment(
        &self,
        request: Request<proto::CancelDeploymentRequest>,
    ) -> Result<Response<proto::Deployment>, Status> {
        let mut call = self.call("CancelDeployment", &request);
        let id = request.into_inner().id;
        let r = match self
            .permitted_deployment(&mut call, Action::CancelDeployment, &id)
            .await
        {
            Err(s) => Err(s),
            Ok(_) => match self.manager.cancel(&id).await {
                Ok(rec) => {
                    tracing::info!(deployment_id = %id, owner = ?rec.owner, "cancel requested");
                    Ok(Response::new(convert::deployment(rec)))
                }
                Err(CancelError::NotFound(_)) => Err(not_found(&id)),
                Err(e @ CancelError::Ended(_)) => {
                    Err(refuse(Reason::DeploymentEnded, e.to_string()))
                }
                Err(CancelError::Store(e)) => Err(store_failed(e)),
            },
        };
        call.end(r)
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut call = self.call("Verify", &request);
        let r = self.verify_call(&mut call, request).await;
        call.end(r.map(Response::new))
    }

    async fn analyze(
        &self,
        request: Request<proto::AnalyzeRequest>,
    ) -> Result<Response<proto::AnalyzeResponse>, Status> {
        let mut call = self.call("Analyze", &request);
        let r = self.analyze_call(&mut call, request.into_inner()).await;
        call.end(r.map(Response::new))
    }

    async fn get_delivery_metrics(
        &self,
        request: Request<proto::GetDeliveryMetricsRequest>,
    ) -> Result<Response<proto::DeliveryMetrics>, Status> {
        let mut call = self.call("GetDeliveryMetrics", &request);
        let r = self.delivery_call(&mut call, request.into_inner()).await;
        call.end(r.map(Response::new))
    }
}
