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
    let server = &with_scheme(server);
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
        .map_err(|e| unreachable(server, &e))?;
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

/// `HOST:PORT` as `http://HOST:PORT`, the way the daemon listens by
/// default; a URL with a scheme stays as it is.
fn with_scheme(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// A failed connection, said once and with what to do (tonic's own text
/// repeats itself: "tcp connect error: tcp connect error: ...").
fn unreachable(server: &str, e: &tonic::transport::Error) -> anyhow::Error {
    // The innermost cause is the one that says what happened.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    anyhow::anyhow!(
        "cannot reach deployd at {server} ({cause}): start it with `deployd serve`, or run this command with --sandbox"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_is_plain_http() {
        assert_eq!(with_scheme("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(
            with_scheme("https://d.example:443"),
            "https://d.example:443"
        );
    }

    #[tokio::test]
    async fn no_daemon_says_how_to_start_one() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        // Nothing listens there any more.
        let err = match connect(&format!("127.0.0.1:{port}"), &ClientCreds::default()).await {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.starts_with(&format!(
                "cannot reach deployd at http://127.0.0.1:{port} ("
            )),
            "{err}"
        );
        assert!(
            err.contains("deployd serve") && err.contains("--sandbox"),
            "{err}"
        );
        assert_eq!(err.matches("tcp connect error").count(), 0, "{err}");
    }
}
