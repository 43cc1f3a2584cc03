//! How client commands reach a daemon: the server URL (http:// or
//! https://), TLS roots and a client certificate for mTLS, and the bearer
//! token every call carries.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::api::proto::deployer_client::DeployerClient;
use crate::config::ENV_TOKEN;

/// Credentials of a client command.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientCreds {
    /// Bearer token sent with every call (an API token or an OIDC ID
    /// token). Prefer --token-file or DEPLOYD_TOKEN: a flag shows in `ps`.
    #[arg(long, env = ENV_TOKEN, hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token (its first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for an https:// server (default: the
    /// system's roots).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a daemon that requires mTLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

pub type Client = DeployerClient<InterceptedService<Channel, Bearer>>;

fn read(what: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

impl ClientCreds {
    fn token(&self) -> anyhow::Result<Option<String>> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the token file {}", p.display()))?;
                text.lines().next().unwrap_or("").trim().to_string()
            }
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            bail!("the token is empty");
        }
        Ok(Some(token))
    }

    fn wants_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }
}

/// A client of the daemon at `server`.
pub async fn connect(server: &str, creds: &ClientCreds) -> anyhow::Result<Client> {
    let url = url::Url::parse(server).with_context(|| {
        format!("the server {server:?} is not a URL (http://HOST:PORT or https://HOST:PORT)")
    })?;
    let token = creds.token()?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => bail!("the server URL's scheme {other:?} is neither http nor https"),
    };
    if !tls && creds.wants_tls() {
        bail!("--tls-ca, --tls-cert and --tls-key need an https:// server URL");
    }
    // A bearer token is a password: never in clear text off this machine.
    if !tls && token.is_some() && !crate::api::auth::is_loopback_host(url.host()) {
        bail!(
            "refusing to send a token in clear text to {}: use an https:// server URL",
            url.host_str().unwrap_or("?")
        );
    }
    let mut endpoint = Channel::from_shared(server.to_string())
        .with_context(|| format!("the server {server:?}"))?;
    if tls {
        let mut config = ClientTlsConfig::new();
        config = match &creds.tls_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("CA bundle", ca)?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&creds.tls_cert, &creds.tls_key) {
            config = config.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(config)
            .context("setting up TLS to the server")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to deployd at {server}"))?;
    let header = match token {
        Some(t) => {
            let mut v: MetadataValue<Ascii> = format!("Bearer {t}")
                .parse()
                .context("the token has characters a header cannot carry")?;
            // Kept out of HPACK tables and Debug output.
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    Ok(DeployerClient::with_interceptor(channel, Bearer(header)))
}
