//! Who the daemon is to Google, when its credentials say: the IAM member
//! its remediation commands grant roles to. Read from Application Default
//! Credentials without a network call; an end user's ADC (`gcloud auth
//! application-default login`) names no account, so it gives nothing.

use std::path::PathBuf;

/// The ADC file gcp_auth reads: `GOOGLE_APPLICATION_CREDENTIALS`, else
/// gcloud's well-known file.
fn adc_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud")))?;
    Some(config.join("application_default_credentials.json"))
}

/// `serviceAccount:EMAIL` of the credentials the daemon calls Google with,
/// when their file names one.
pub fn adc_member() -> Option<String> {
    // A key file is small; anything larger is not one.
    let path = adc_path()?;
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > 64 * 1024 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    member_of(&serde_json::from_str(&text).ok()?)
}

/// The member an ADC document names: a service account key's
/// `client_email`, or the account an impersonating or external credential
/// becomes (from its `service_account_impersonation_url`).
pub fn member_of(adc: &serde_json::Value) -> Option<String> {
    let email = match adc.get("type")?.as_str()? {
        "service_account" => adc.get("client_email")?.as_str()?.to_string(),
        "impersonated_service_account" | "external_account" => {
            // .../projects/-/serviceAccounts/EMAIL:generateAccessToken
            let url = adc.get("service_account_impersonation_url")?.as_str()?;
            let tail = url.rsplit_once("/serviceAccounts/")?.1;
            tail.split_once(':').map_or(tail, |(e, _)| e).to_string()
        }
        _ => return None,
    };
    crate::pipeline::rules::service_account_email(&email).ok()?;
    Some(format!("serviceAccount:{email}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_from_each_kind_of_adc() {
        let key = json!({"type": "service_account", "client_email": "deployer@my-proj.iam.gserviceaccount.com", "private_key": "..."});
        assert_eq!(
            member_of(&key).as_deref(),
            Some("serviceAccount:deployer@my-proj.iam.gserviceaccount.com")
        );
        let imp = json!({"type": "impersonated_service_account",
            "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ci@my-proj.iam.gserviceaccount.com:generateAccessToken"});
        assert_eq!(
            member_of(&imp).as_deref(),
            Some("serviceAccount:ci@my-proj.iam.gserviceaccount.com")
        );
        // An end user's credentials name no account.
        assert_eq!(
            member_of(&json!({"type": "authorized_user", "client_id": "x"})),
            None
        );
        // Nothing that is not an account email reaches a command line.
        let odd = json!({"type": "service_account", "client_email": "x --role=roles/owner"});
        assert_eq!(member_of(&odd), None);
    }
}
