//! Metrics (Prometheus), logs (tracing) and their setup, in one place.

mod conventions;
pub mod hdr;
mod json_logs;
pub mod metrics;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// process_* metrics (CPU, memory, fds, start time), read at each scrape.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The /metrics page: the recorder's families, the process' own, and the
/// HDR summary.
pub fn render(handle: &PrometheusHandle) -> String {
    if let Some(p) = PROCESS.get() {
        p.collect();
    }
    handle.render() + &hdr::render()
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("installing the Prometheus recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
    #[error("{variable}={value:?} is not an OTLP protocol deployd speaks (grpc, http/protobuf, http/json)")]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("setting up the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
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
                &metrics::buckets_for(m.name),
            )
            .map_err(TelemetryError::Recorder)?;
    }
    let handle = builder
        .install_recorder()
        .map_err(TelemetryError::Recorder)?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    metrics::describe();
    metrics::register_defaults();
    let process = PROCESS.get_or_init(metrics_process::Collector::default);
    process.describe();
    process.collect();
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

/// Keeps the trace pipeline alive; [`Tracing::shutdown`] flushes it.
pub struct Tracing {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Tracing {
    /// Flushes spans still batched. The SDK's shutdown blocks, and must not
    /// run on a runtime worker (a known deadlock), hence the blocking thread.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default `default_level`), as text
/// (coloured only on a terminal) or JSON (with the trace and span ids of
/// the line's span); every line inside a run carries its span fields, the
/// deployment id among them. With OTEL_EXPORTER_OTLP_ENDPOINT (or
/// OTEL_TRACES_EXPORTER=otlp) set, spans also go out over OTLP, configured
/// by the standard OTEL_* variables (protocol, resource, service name).
/// A setting deployd cannot honour is refused here, before anything runs.
pub fn init(format: LogFormat, default_level: &str) -> Result<Tracing, TelemetryError> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = match format {
        LogFormat::Text => {
            use tracing_subscriber::field::MakeExt;
            // Values come from requests (URLs, names): a CR or LF in one
            // must not start a forged log line.
            let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                let raw = format!("{value:?}");
                let text = escape_controls(&raw);
                match field.name() {
                    "message" => write!(w, "{text}"),
                    name => write!(w, "{name}={text}"),
                }
            })
            .delimited(" ");
            tracing_subscriber::fmt::layer()
                .fmt_fields(fields)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(json_logs::TraceIds::default())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, provider) = match otlp_provider()? {
        Some(provider) => {
            use opentelemetry::trace::TracerProvider;
            let tracer = provider.tracer("deployd");
            // Spans are exported whatever RUST_LOG says about log lines.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new("deployd=info"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(Tracing { provider })
}

/// A run's result on its span (`result`, exported as `deployd.result`),
/// and for a run that did not ship (neither success nor cancelled) an
/// error status with `error.type` (the failure code) and its message.
pub fn record_result(span: &tracing::Span, result: &str, failure: Option<(&str, &str)>) {
    span.record("result", result);
    if matches!(result, "success" | "cancelled") {
        return;
    }
    let (code, message) = failure.unwrap_or(("UNKNOWN", ""));
    span.record("otel.status_code", "ERROR");
    span.record("error.type", code);
    if !message.is_empty() {
        // Bounded: a span attribute, not a log.
        span.record(
            "otel.status_description",
            crate::pipeline::rules::truncate(message, 512),
        );
    }
}

/// A URL as spans carry it (`url.full`): without its query and fragment,
/// which can hold session ids and tokens.
pub fn url_for_span(url: &url::Url) -> String {
    format!("{}{}", &url[..url::Position::AfterPort], url.path())
}

/// Control characters as Rust escapes (`\n`, `\r`, `\u{1b}`), so one
/// log event is one line whatever its values hold.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The OTLP protocol the standard variables ask for (traces' own first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

fn otlp_protocol(env: impl Fn(&str) -> Option<String>) -> Result<OtlpProtocol, TelemetryError> {
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = env(variable) {
            return match value.as_str() {
                "grpc" => Ok(OtlpProtocol::Grpc),
                "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                "http/json" => Ok(OtlpProtocol::HttpJson),
                _ => Err(TelemetryError::Protocol { variable, value }),
            };
        }
    }
    // deployd's default since its first release (the SDKs' is http/protobuf).
    Ok(OtlpProtocol::Grpc)
}

/// The resource: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK
/// reads them, `service.name` "deployd" when neither names one, and
/// `service.version` always.
fn resource(env: impl Fn(&str) -> Option<String>) -> opentelemetry_sdk::Resource {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if named {
        builder.build()
    } else {
        builder.with_service_name("deployd").build()
    }
}

fn otlp_provider() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let env = |k: &str| std::env::var(k).ok();
    let wanted = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "otlp");
    if !wanted || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true") {
        return Ok(None);
    }
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match otlp_protocol(env)? {
        OtlpProtocol::Grpc => builder.with_tonic().build(),
        p => builder
            .with_http()
            .with_protocol(if p == OtlpProtocol::HttpJson {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            })
            .build(),
    }
    .map_err(TelemetryError::Exporter)?;
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(conventions::Namespaced(exporter))
            .with_resource(resource(env))
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(
            super::escape_controls("https://x/a\r\nINFO forged"),
            "https://x/a\\r\\nINFO forged"
        );
        assert_eq!(super::escape_controls("\u{1b}[31m"), "\\u{1b}[31m");
        assert_eq!(super::escape_controls("plain"), "plain");
    }
}
