//! Identity tokens for probing private Cloud Run services: IAM Credentials
//! `generateIdToken` for a configured service account, or the metadata server
//! when deployd itself runs on Google Cloud.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::error::GcpError;
use super::http::{segment, Transport};

#[derive(Deserialize)]
struct IdToken {
    token: String,
}

/// `POST /v1/projects/-/serviceAccounts/{sa}:generateIdToken`.
pub async fn generate_id_token(
    t: &Transport,
    service_account: &str,
    audience: &str,
) -> Result<String, GcpError> {
    let url = format!(
        "{}/v1/projects/-/serviceAccounts/{}:generateIdToken",
        t.endpoints.iam_credentials,
        segment(service_account)
    );
    let body = json!({"audience": audience, "includeEmail": true});
    let r: IdToken = t
        .json(
            "iamcredentials.projects.serviceAccounts.generateIdToken",
            t.request(Method::POST, url).json(&body),
        )
        .await?;
    Ok(r.token)
}

/// The metadata server's token for the instance's own service account.
/// `host` is `host[:port]` (plain HTTP, as the metadata server speaks).
pub async fn metadata_id_token(host: &str, audience: &str) -> Result<String, GcpError> {
    const METHOD: &str = "metadata.identity";
    let client = crate::tls::http_client(&*crate::tls::system_client_config()?)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| GcpError::Transport {
            method: METHOD,
            source,
        })?;
    let resp = client
        .get(format!(
            "http://{}/computeMetadata/v1/instance/service-accounts/default/identity",
            host.trim_start_matches("http://").trim_end_matches('/')
        ))
        .query(&[("audience", audience), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|source| GcpError::Transport {
            method: METHOD,
            source,
        })?;
    if !resp.status().is_success() {
        return Err(Transport::error_of(METHOD, resp).await);
    }
    resp.text().await.map_err(|source| GcpError::Transport {
        method: METHOD,
        source,
    })
}
