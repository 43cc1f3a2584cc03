//! Span attributes by the OpenTelemetry conventions, at export: the short
//! field names that log lines carry (`deployment_id`, `project`) become
//! semantic-convention names where one exists (`cloud.account.id`,
//! `cloud.region`) and `deployd.*` otherwise. Logs keep the short names.

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The span attribute a log field becomes.
pub fn attribute_name(field: &str) -> std::borrow::Cow<'static, str> {
    match field {
        "project" => "cloud.account.id".into(),
        "region" => "cloud.region".into(),
        // tracing-opentelemetry's own timings.
        "busy_ns" | "idle_ns" => field.to_string().into(),
        f if f.contains('.') => f.to_string().into(),
        f => format!("deployd.{f}").into(),
    }
}

#[derive(Debug)]
pub struct Namespaced<E>(pub E);

impl<E: SpanExporter> SpanExporter for Namespaced<E> {
    fn export(
        &self,
        mut batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        for span in &mut batch {
            for kv in &mut span.attributes {
                let name = attribute_name(kv.key.as_str());
                if name != kv.key.as_str() {
                    *kv = KeyValue::new(Key::new(name.into_owned()), kv.value.clone());
                }
            }
        }
        self.0.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_fields_get_conventional_names() {
        use super::attribute_name as n;
        assert_eq!(n("project"), "cloud.account.id");
        assert_eq!(n("region"), "cloud.region");
        assert_eq!(n("deployment_id"), "deployd.deployment_id");
        assert_eq!(n("service"), "deployd.service");
        assert_eq!(n("rpc.method"), "rpc.method");
        assert_eq!(n("busy_ns"), "busy_ns");
    }
}
