//! Assembles the daemon: the cloud backend, the pipeline, the gRPC server
//! (Deployer, health, reflection v1 and v1alpha) and the metrics endpoint.
//! `serve(listeners, config, shutdown)` lets tests bind 127.0.0.1:0 and main
//! pass ctrl-c.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::api::auth::{server_tls, Auth, AuthLayer};
use crate::api::{proto, DeployerService};
use crate::config::{Backend, DaemonConfig};
use crate::deployments::{Manager, ManagerConfig};
use crate::gcp::{GcpClient, GcpError, PollPolicy};
use crate::pipeline::cloud::Cloud;
use crate::pipeline::Pipeline;
use crate::probe::{HttpProber, ProberError};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the Google Cloud client")]
    Gcp(#[from] GcpError),
    #[error("setting up the health prober")]
    Prober(#[from] ProberError),
    #[error("setting up the Prometheus client of canary analysis")]
    PromQl(#[from] crate::promql::PromQlError),
    #[error("starting the sandbox")]
    Sandbox(#[source] std::io::Error),
    #[error("serving reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving gRPC")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("opening the deployment store")]
    Store(#[from] crate::store::OpenError),
    #[error(transparent)]
    Auth(#[from] crate::api::auth::AuthSetupError),
}

/// Where a started daemon listens.
pub struct Running {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// The embedded sandbox, when the backend is one.
    pub sandbox: Option<Sandbox>,
    /// The deployments this daemon records and runs.
    pub manager: Arc<Manager>,
    pub done: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

/// Raises the soft limit of open files to the hard one, as servers do: a
/// burst of deploys needs more descriptors than the common soft 1,024, and
/// the hard limit is what the administrator allowed. Logs both.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // Linux refuses an infinite soft limit for files; 1 Mi is its default cap.
    let target = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|soft| soft < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(soft = ?limit.current, hard = ?limit.maximum, error = %e, "could not raise the open-file limit");
            return;
        }
    }
    let now = getrlimit(Resource::Nofile);
    tracing::info!(soft_before = ?limit.current, soft = ?now.current, hard = ?now.maximum, "open-file limit");
}

/// Builds the Cloud implementation for the configured backend.
async fn cloud(
    config: &DaemonConfig,
    sandbox: Option<&Sandbox>,
) -> Result<Arc<dyn Cloud>, DaemonError> {
    let emulator_poll = PollPolicy {
        first: config.pipeline.poll_interval,
        multiplier: 1.0,
        max: config.pipeline.poll_interval,
        give_up_after: Duration::from_secs(30 * 60),
    };
    let (client, metadata_host) = match (&config.backend, sandbox) {
        (Backend::EmbeddedSandbox, Some(sb)) => (
            GcpClient::emulator(&sb.base_url(), emulator_poll)?,
            config.metadata_host.clone(),
        ),
        (Backend::Endpoint(base), _) => (
            GcpClient::emulator(base, emulator_poll)?,
            config.metadata_host.clone(),
        ),
        // On Google, the metadata server is there unless told otherwise.
        _ => (
            GcpClient::google(PollPolicy::default()).await?,
            Some(
                config
                    .metadata_host
                    .clone()
                    .unwrap_or_else(|| crate::config::DEFAULT_METADATA_HOST.to_string()),
            ),
        ),
    };
    Ok(Arc::new(
        client
            .with_upload_chunk(config.upload_chunk_bytes)
            .with_invoker(config.invoker_service_account.clone())
            .with_metadata_server(metadata_host),
    ))
}

/// Binds, starts everything in the background, and returns the addresses.
pub async fn start(
    config: DaemonConfig,
    sandbox_config: SandboxConfig,
    shutdown: CancellationToken,
) -> Result<Running, DaemonError> {
    raise_fd_limit();
    // Before anything listens: an open network port is refused here.
    let auth = Arc::new(Auth::load(&config.auth, config.listen).await?);
    let tls = server_tls(&config.auth)?;
    let grpc_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: config.listen,
                source,
            })?;
    let grpc = grpc_listener
        .local_addr()
        .map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Bind { addr, source })?,
        ),
        None => None,
    };
    let metrics = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let sandbox = match config.backend {
        Backend::EmbeddedSandbox => Some(
            Sandbox::start(SandboxConfig {
                // It takes whatever source the daemon may send it.
                max_body_bytes: usize::try_from(config.pipeline.max_source_bytes)
                    .unwrap_or(usize::MAX)
                    .max(sandbox_config.max_body_bytes),
                ..sandbox_config
            })
            .await
            .map_err(DaemonError::Sandbox)?,
        ),
        _ => None,
    };
    let cloud = cloud(&config, sandbox.as_ref()).await?;
    let mut config = config;
    if config.pipeline.caller_member.is_empty() {
        // Only Google's credentials name someone; an emulator has none.
        let known = match config.backend {
            Backend::Google => crate::gcp::identity::adc_member(),
            _ => None,
        };
        tracing::info!(member = ?known, "the member remediation commands name");
        config.pipeline.caller_member =
            known.unwrap_or_else(|| crate::pipeline::PLACEHOLDER_MEMBER.to_string());
    }
    let prober = Arc::new(match &config.probe_ca_file {
        Some(path) => HttpProber::with_ca_file(path)?,
        None => HttpProber::new()?,
    });
    let promql = Arc::new(crate::promql::HttpPromQl::new()?);
    let pipeline = Arc::new(Pipeline::new(
        cloud,
        prober,
        promql,
        config.pipeline.clone(),
    ));
    let store_url = config.store_url();
    let store = crate::store::open(&store_url).await?;
    let manager = Manager::new(
        store,
        pipeline.clone(),
        ManagerConfig {
            owner: config
                .daemon_id
                .clone()
                .unwrap_or_else(|| crate::deployments::default_owner(Some(grpc.port()))),
            lease: config.lease,
            retention: config.history_retention,
            ..ManagerConfig::default()
        },
    );
    tracing::info!(store = ?crate::store::backend_of(&store_url).ok(), owner = manager.owner(), "deployment store open");
    manager.start_background().await;
    // No metrics endpoint, no recorder: metrics calls are then no-ops.
    if let Some(listener) = metrics_listener {
        let handle = telemetry::prometheus()?;
        let stop = shutdown.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let h = handle.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        telemetry::render(&h),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let tls_on = tls.is_some();
    let authenticated = auth.authenticates();
    let done = tokio::spawn(serve(
        grpc_listener,
        Served {
            pipeline,
            manager: manager.clone(),
            auth,
            tls,
        },
        config,
        shutdown,
    ));
    tracing::info!(%grpc, metrics = ?metrics, tls = tls_on, authenticated, "deployd listening");
    Ok(Running {
        grpc,
        metrics,
        sandbox,
        manager,
        done,
    })
}

/// What the gRPC server serves.
pub struct Served {
    pub pipeline: Arc<Pipeline>,
    pub manager: Arc<Manager>,
    pub auth: Arc<Auth>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Serves gRPC until `shutdown`, then drains: deployments stop at their
/// last recorded step and are handed back for the next daemon (streams are
/// told where to watch them), Preflight and Verify runs are cancelled, all
/// within the grace period.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    config: DaemonConfig,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let Served {
        pipeline,
        manager,
        auth,
        tls,
    } = served;
    let runs = TaskTracker::new();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::deployer_server::DeployerServer<DeployerService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let deployer = DeployerService::new(
        pipeline,
        manager.clone(),
        runs.clone(),
        shutdown.clone(),
        config.pipeline.retry_base_delay,
        auth.clone(),
    );
    let stop = shutdown.clone();
    let grace = config.shutdown_grace;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Nagle would hold each short reply for the peer's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(config.tcp_nodelay));
    let server = builder
        .layer(crate::api::observe::ObserveLayer)
        .layer(AuthLayer::new(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(deployer.into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            // Before the server stops: the drain ends the event streams, so
            // connections can close.
            manager.drain(grace).await;
        });
    // A client that never answers the closing handshake (a stalled
    // process, a dead network) must not keep the daemon from exiting.
    let bounded = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace + Duration::from_secs(1)).await;
    };
    tokio::select! {
        served = server => served?,
        _ = bounded => tracing::warn!("connections still open after the drain time; closing them"),
    }
    runs.close();
    if tokio::time::timeout(config.shutdown_grace, runs.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed with deploys still running");
    }
    Ok(())
}
