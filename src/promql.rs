//! The Prometheus HTTP API, for canary analysis: one instant query at a
//! time (`GET /api/v1/query`), reduced to the single number it yields.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::pipeline::cloud::PromQl;

#[derive(Debug, thiserror::Error)]
pub enum PromQlError {
    #[error("setting up the Prometheus client")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

pub struct HttpPromQl {
    client: reqwest::Client,
}

/// One query waits at most this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpPromQl {
    pub fn new() -> Result<Self, PromQlError> {
        let client = crate::tls::http_client(&*crate::tls::system_client_config()?)
            .timeout(QUERY_TIMEOUT)
            // A query URL is the daemon's, not the server's, to choose.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deployd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(PromQlError::Client)?;
        Ok(Self { client })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// `[unix time, "value"]`, the value as a string ("NaN", "+Inf" too).
fn sample_value(v: &serde_json::Value) -> Result<f64, String> {
    let s = v
        .get(1)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("a sample that is not [time, \"value\"]: {v}"))?;
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("{s:?} is not a number")),
    }
}

/// The number an answer's data holds: a scalar, or a vector of one
/// series; none for an empty vector.
fn single_number(data: &Data) -> Result<Option<f64>, String> {
    match data.result_type.as_str() {
        "scalar" => sample_value(&data.result).map(Some),
        "vector" => {
            let series = data.result.as_array().cloned().unwrap_or_default();
            match series.as_slice() {
                [] => Ok(None),
                [one] => {
                    sample_value(one.get("value").unwrap_or(&serde_json::Value::Null)).map(Some)
                }
                many => Err(format!(
                    "the query returned {} series; aggregate it to one (sum, max, ...)",
                    many.len()
                )),
            }
        }
        other => Err(format!(
            "the query returned a {other}; an instant query yielding one number is needed"
        )),
    }
}

#[async_trait]
impl PromQl for HttpPromQl {
    async fn instant(&self, base_url: &str, query: &str) -> Result<Option<f64>, String> {
        let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
        let resp = self
            .client
            .get(&url)
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::pipeline::error::error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            format!("{url} answered {status} with a body that is not the Prometheus API's JSON")
        })?;
        if answer.status != "success" {
            return Err(format!(
                "Prometheus refused the query ({}): {}",
                answer.error_type, answer.error
            ));
        }
        let data = answer
            .data
            .ok_or_else(|| "Prometheus answered success without data".to_string())?;
        single_number(&data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Data {
        serde_json::from_str(json).expect("data")
    }

    #[test]
    fn one_series_or_scalar_is_a_number() {
        let v = data(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}"#,
        );
        assert_eq!(single_number(&v), Ok(Some(0.25)));
        let s = data(r#"{"resultType":"scalar","result":[1700000000.1,"3"]}"#);
        assert_eq!(single_number(&s), Ok(Some(3.0)));
        let e = data(r#"{"resultType":"vector","result":[]}"#);
        assert_eq!(single_number(&e), Ok(None));
        let two = data(r#"{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}"#);
        assert!(single_number(&two).unwrap_err().contains("2 series"));
        let nan = data(r#"{"resultType":"vector","result":[{"value":[1,"NaN"]}]}"#);
        assert!(single_number(&nan).unwrap().unwrap().is_nan());
    }
}
