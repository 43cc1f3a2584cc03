//! Metrics (Prometheus), logs (tracing) and their setup, in one place.

pub mod hdr;
pub mod metrics;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("installing the Prometheus recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
}

/// Installs the process-wide Prometheus recorder once and returns its handle;
/// later calls (several daemons in one test process) share it.
pub fn prometheus() -> Result<PrometheusHandle, TelemetryError> {
    // Serialises installation: two daemons starting at once must not both
    // try to install a global recorder.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for m in metrics::SPEC
        .iter()
        .filter(|m| m.kind == metrics::Kind::Histogram)
    {
        builder = builder
            .set_buckets_for_metric(
                Matcher::Full(m.name.to_string()),
                metrics::buckets_for(m.name),
            )
            .map_err(TelemetryError::Recorder)?;
    }
    let handle = builder
        .install_recorder()
        .map_err(TelemetryError::Recorder)?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    metrics::describe();
    let upkeep = handle.clone();
    // Histograms are drained only by upkeep; without it memory grows.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .ok();
    Ok(handle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by RUST_LOG (default `default_level`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
