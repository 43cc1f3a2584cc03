//! JSON log lines with the OpenTelemetry ids of the span they were logged
//! in (`trace_id`, `span_id`, lowercase hex as in traceparent), so a log
//! search leads to the trace and back. Lines outside any traced span (or
//! with tracing off) carry none.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// tracing-subscriber's JSON lines (with the current span and the span
/// list), plus the trace and span ids.
pub struct TraceIds {
    inner: Format<Json>,
}

impl Default for TraceIds {
    fn default() -> Self {
        TraceIds {
            inner: tracing_subscriber::fmt::format()
                .json()
                .with_current_span(true)
                .with_span_list(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for TraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The event is formatted while its span is the current one.
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return writer.write_str(&line);
        }
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line) {
            Ok(mut fields) => {
                fields.insert("trace_id".into(), ids.trace_id().to_string().into());
                fields.insert("span_id".into(), ids.span_id().to_string().into());
                writeln!(writer, "{}", serde_json::Value::Object(fields))
            }
            Err(_) => writer.write_str(&line),
        }
    }
}
