//! Who is calling, and what they may do: one tower layer in front of the
//! gRPC services authenticates every call (a client certificate, an OIDC
//! ID token or an API token) and hands the handlers a [`Principal`]; the
//! handlers, which know each call's target once it is decoded, ask the
//! policy through a [`Call`], which also writes the audit line and counts
//! the result. The pipeline sees only the principal's name.
//!
//! With no authentication configured every caller is
//! `unauthenticated@IP` and may do everything; once any is configured,
//! what the policy does not grant is refused.

pub mod oidc;
pub mod policy;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use crate::api::refusal::{refuse, Reason};
use crate::config::AuthConfig;
use crate::telemetry::metrics;
use oidc::{OidcError, OidcVerifier};
use policy::{Action, Policy, PolicyError};
use tokens::{ApiTokens, TokensError};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Certificate,
    Oidc,
    ApiToken,
    /// No authentication is configured: the name is the peer's address.
    Unauthenticated,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Certificate => "certificate",
            Via::Oidc => "oidc",
            Via::ApiToken => "api_token",
            Via::Unauthenticated => "none",
        }
    }
}

/// The caller of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub via: Via,
}

impl Principal {
    fn unauthenticated(peer: Option<IpAddr>) -> Principal {
        Principal {
            name: match peer {
                Some(ip) => format!("unauthenticated@{ip}"),
                None => "unauthenticated".into(),
            },
            via: Via::Unauthenticated,
        }
    }
}

/// Why a call's credential was not accepted. Never holds the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credential: send `authorization: Bearer TOKEN` metadata{0}")]
    Missing(&'static str),
    #[error("the authorization metadata is not `Bearer TOKEN`")]
    Malformed,
    #[error("the API token is not one this daemon knows")]
    UnknownToken,
    #[error("this daemon takes no bearer tokens (only client certificates)")]
    NoTokens,
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error("the client certificate names no identity (no URI or DNS SAN, no CN)")]
    CertificateIdentity,
    #[error("the identity has characters that cannot be logged as they are")]
    Identity,
}

impl Refusal {
    /// The metrics label (a fixed set).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownToken => "unknown_token",
            Refusal::NoTokens => "no_tokens",
            Refusal::Oidc(e) => e.reason(),
            Refusal::CertificateIdentity => "certificate",
            Refusal::Identity => "identity",
        }
    }

    fn status(&self) -> Status {
        match self {
            // Not the caller's fault, and worth retrying.
            Refusal::Oidc(OidcError::KeysUnavailable(_)) => {
                refuse(Reason::IssuerUnavailable, self.to_string())
            }
            _ => refuse(Reason::Unauthenticated, self.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the OIDC settings: {0}")]
    Oidc(#[from] OidcError),
    #[error("reading the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--tls-cert and --tls-key go together")]
    TlsPair,
    #[error("--client-ca needs --tls-cert and --tls-key: client certificates come with TLS")]
    ClientCaWithoutTls,
    #[error(
        "--policy needs an authentication method (--client-ca, --oidc-jwks-url, \
         --oidc-jwks-file or --api-tokens-file): without one every caller is anonymous"
    )]
    PolicyWithoutAuthentication,
    #[error(
        "refusing to serve {addr} without authentication: any host that reaches it could \
         deploy with this daemon's Google credentials. Configure --client-ca, \
         --oidc-jwks-url/--oidc-jwks-file or --api-tokens-file (with --policy), listen on \
         a loopback address, or pass --insecure-allow-unauthenticated"
    )]
    Unauthenticated { addr: SocketAddr },
}

/// The daemon's authentication and policy, loaded once at start.
pub struct Auth {
    tokens: Option<ApiTokens>,
    oidc: Option<OidcVerifier>,
    certificates: bool,
    /// `None`: no authentication, so no policy: everything is allowed.
    policy: Option<Policy>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The server's TLS settings, when it serves TLS.
pub fn server_tls(
    config: &AuthConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, AuthSetupError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if config.client_ca.is_some() => {
            return Err(AuthSetupError::ClientCaWithoutTls)
        }
        (None, None) => return Ok(None),
        _ => return Err(AuthSetupError::TlsPair),
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("TLS certificate", cert)?,
            read("TLS key", key)?,
        ))
        // A client that stalls its handshake does not hold a task forever.
        .timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = &config.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read("client CA", ca)?))
            .client_auth_optional(false);
    }
    Ok(Some(tls))
}

impl Auth {
    /// Loads tokens, keys and policy; refuses settings that would leave a
    /// network listener open or a policy without callers to apply to.
    pub async fn load(config: &AuthConfig, listen: SocketAddr) -> Result<Auth, AuthSetupError> {
        let tokens = match &config.api_tokens_file {
            Some(p) => Some(ApiTokens::load(p)?),
            None => None,
        };
        let oidc = match &config.oidc {
            Some(c) => {
                let v = OidcVerifier::new(c.clone())?;
                match (&c.jwks, v.load().await) {
                    (_, Ok(n)) => tracing::info!(keys = n, issuer = %c.issuer, "OIDC keys loaded"),
                    // A missing file is a mistake; an issuer that is down
                    // now may be up at the first call.
                    (oidc::JwksSource::File(_), Err(e)) => return Err(e.into()),
                    (oidc::JwksSource::Url(_), Err(e)) => {
                        tracing::warn!(error = %e, "OIDC keys not loaded yet; ID tokens are refused until they are")
                    }
                }
                Some(v)
            }
            None => None,
        };
        let certificates = config.client_ca.is_some();
        let authenticates = tokens.is_some() || oidc.is_some() || certificates;
        let policy = match (&config.policy_file, authenticates) {
            (Some(_), false) => return Err(AuthSetupError::PolicyWithoutAuthentication),
            (Some(p), true) => Some(Policy::load(p)?),
            (None, true) => {
                tracing::warn!(
                    "authentication is on and there is no --policy: every call will be refused"
                );
                Some(Policy::default())
            }
            (None, false) => None,
        };
        if !authenticates {
            if !listen.ip().is_loopback() && !config.insecure_allow_unauthenticated {
                return Err(AuthSetupError::Unauthenticated { addr: listen });
            }
            if config.insecure_allow_unauthenticated {
                tracing::warn!(%listen, "--insecure-allow-unauthenticated: anyone who reaches this address can deploy with this daemon's credentials");
            }
        }
        if let Some(t) = &tokens {
            if t.is_empty() {
                tracing::warn!("the API tokens file lists no token");
            }
        }
        Ok(Auth {
            tokens,
            oidc,
            certificates,
            policy,
        })
    }

    pub fn authenticates(&self) -> bool {
        self.policy.is_some()
    }

    /// Who sent this request (the headers and connection of one call).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Principal, Refusal> {
        let peer = peer_addr(extensions);
        if !self.authenticates() {
            return Ok(Principal::unauthenticated(peer.map(|a| a.ip())));
        }
        let principal = match bearer(headers)? {
            Some(token) => self.token_principal(token).await?,
            None => match peer_certificate(extensions) {
                Some(der) if self.certificates => Principal {
                    name: certificate_identity(&der).ok_or(Refusal::CertificateIdentity)?,
                    via: Via::Certificate,
                },
                _ => {
                    return Err(Refusal::Missing(if self.certificates {
                        " or a client certificate"
                    } else {
                        ""
                    }))
                }
            },
        };
        // Names go into logs and the store as they are.
        if principal.name.is_empty()
            || principal.name.len() > 512
            || principal.name.chars().any(char::is_control)
        {
            return Err(Refusal::Identity);
        }
        Ok(principal)
    }

    async fn token_principal(&self, token: &str) -> Result<Principal, Refusal> {
        // A JWT has three dot-separated parts; our API tokens have none.
        let looks_like_jwt = token.split('.').count() == 3;
        match (&self.oidc, &self.tokens) {
            (Some(oidc), _) if looks_like_jwt => Ok(Principal {
                name: oidc.verify(token).await?,
                via: Via::Oidc,
            }),
            (_, Some(tokens)) => tokens
                .principal(token)
                .map(|name| Principal {
                    name: name.to_string(),
                    via: Via::ApiToken,
                })
                .ok_or(Refusal::UnknownToken),
            (Some(_), None) => Err(Refusal::Oidc(OidcError::Malformed)),
            (None, None) => Err(Refusal::NoTokens),
        }
    }

    /// With no authentication, everything is allowed.
    pub fn permits(&self, p: &Principal, action: Action, project: &str, service: &str) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|pol| pol.allows(&p.name, action, project, service))
    }

    pub fn permits_host(&self, p: &Principal, host: &str) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|pol| pol.allows_host(&p.name, host))
    }

    pub fn permits_some(&self, p: &Principal, action: Action, project: Option<&str>) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|pol| pol.allows_some(&p.name, action, project))
    }
}

/// Whether a URL's host is this machine (where plain http:// carries no
/// secret off it).
pub fn is_loopback_host(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// The bearer token, if the call sent one.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(Some(token))
}

fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| {
            extensions
                .get::<TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
        })
}

fn peer_certificate(extensions: &http::Extensions) -> Option<Vec<u8>> {
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

/// A certificate's identity: its first URI SAN (SPIFFE ids), else its
/// first DNS SAN, else its subject's CN.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names: Vec<GeneralName> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    uri.or(dns).or_else(|| {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    })
}

/// The RPC a path names, from a fixed set (metrics labels must be).
pub fn rpc_name(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Deploy",
        "Preflight",
        "Verify",
        "GetDeployment",
        "ListDeployments",
        "WatchDeployment",
        "CancelDeployment",
        "GetDeliveryMetrics",
        "Analyze",
    ];
    let method = path.rsplit('/').next().unwrap_or("");
    if path.starts_with("/deployd.v1.Deployer/") {
        if let Some(k) = KNOWN.iter().find(|k| **k == method) {
            return k;
        }
    }
    if path.starts_with("/grpc.reflection.") {
        return "ServerReflectionInfo";
    }
    match path {
        "/grpc.health.v1.Health/Check" => return "HealthCheck",
        "/grpc.health.v1.Health/Watch" => return "HealthWatch",
        _ => {}
    }
    "other"
}

/// The layer that authenticates every call but health checks.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            // Load balancers and orchestrators check health anonymously.
            if request.uri().path().starts_with("/grpc.health.v1.Health/") {
                return inner.call(request).await;
            }
            match auth
                .authenticate(request.headers(), request.extensions())
                .await
            {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(refusal) => {
                    let rpc = rpc_name(request.uri().path());
                    let status = refusal.status();
                    metrics::auth_refused(rpc, refusal.reason());
                    tracing::warn!(
                        target: "deployd::audit",
                        principal = "-",
                        peer = ?peer_addr(request.extensions()).map(|a| a.ip()),
                        rpc,
                        result = code_name(status.code()),
                        reason = %refusal,
                        "call refused"
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The canonical name of a gRPC code, as metrics and audit lines carry it
/// (the domain's names: one list of them).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        other => crate::pipeline::error::Code::from_number(other as i64).name(),
    }
}

/// One call to a Deployer RPC: who made it, what it targets, what the
/// policy said. `end` writes its audit line and counts its result.
pub struct Call {
    pub rpc: &'static str,
    pub principal: Principal,
    auth: Arc<Auth>,
    target: String,
}

impl Call {
    /// The call a request makes; its principal is the layer's, or (where
    /// no layer ran, which only tests do) the anonymous peer.
    pub fn begin<T>(auth: Arc<Auth>, rpc: &'static str, request: &tonic::Request<T>) -> Call {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(|| Principal::unauthenticated(request.remote_addr().map(|a| a.ip())));
        Call {
            rpc,
            principal,
            auth,
            target: "-".into(),
        }
    }

    fn deny(&self, action: Action, what: &str) -> Status {
        metrics::auth_refused(self.rpc, "denied");
        refuse(
            Reason::NotPermitted,
            format!(
                "{} may not {} {what}: no policy rule allows it",
                self.principal.name,
                action.as_str()
            ),
        )
    }

    /// The call acts on a project's service (Deploy, Preflight).
    pub fn permit(&mut self, action: Action, project: &str, service: &str) -> Result<(), Status> {
        self.target = format!("projects/{project}/services/{service}");
        if self.auth.permits(&self.principal, action, project, service) {
            Ok(())
        } else {
            Err(self.deny(action, &self.target))
        }
    }

    /// The call acts on a recorded deployment; the refusal names only its
    /// id, which the caller sent, not the project it may not see.
    pub fn permit_deployment(
        &mut self,
        action: Action,
        id: &str,
        project: &str,
        service: &str,
    ) -> Result<(), Status> {
        self.target = format!("deployments/{id}");
        if self.auth.permits(&self.principal, action, project, service) {
            Ok(())
        } else {
            Err(self.deny(action, &format!("deployment {id}")))
        }
    }

    /// A deployment looked up by id (Get, Watch, Cancel).
    pub fn names_deployment(&mut self, id: &str) {
        self.target = format!("deployments/{id}");
    }

    /// Verify of a URL on `host`.
    pub fn permit_host(&mut self, host: &str) -> Result<(), Status> {
        self.target = format!("hosts/{host}");
        if self.auth.permits_host(&self.principal, host) {
            Ok(())
        } else {
            Err(self.deny(Action::Verify, &format!("URLs on {host}")))
        }
    }

    /// A listing, of one project or of all the principal may see.
    /// Analyze fetches and reads a source as a Deploy's first stages do: a
    /// caller who may deploy some service may have a source analyzed.
    pub fn permit_analyze(&mut self, source: &str) -> Result<(), Status> {
        self.target = format!("sources/{source}");
        if self
            .auth
            .permits_some(&self.principal, Action::Deploy, None)
        {
            Ok(())
        } else {
            Err(self.deny(
                Action::Deploy,
                "any service, so it may not have a source analyzed",
            ))
        }
    }

    pub fn permit_listing(&mut self, project: Option<&str>) -> Result<(), Status> {
        self.target = match project {
            Some(p) => format!("projects/{p}"),
            None => "projects/*".into(),
        };
        if self
            .auth
            .permits_some(&self.principal, Action::ListDeployments, project)
        {
            Ok(())
        } else {
            Err(self.deny(Action::ListDeployments, &self.target))
        }
    }

    /// Whether a deployment of `project`/`service` is visible to the call.
    pub fn sees(&self, action: Action, project: &str, service: &str) -> bool {
        self.auth.permits(&self.principal, action, project, service)
    }

    /// Audits the call's result, and returns it (the observe layer counts
    /// it when its stream ends).
    pub fn end<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        };
        if code == "PERMISSION_DENIED" || code == "UNAUTHENTICATED" {
            tracing::warn!(target: "deployd::audit", principal = %self.principal.name, via = self.principal.via.as_str(),
                rpc = self.rpc, target = %self.target, result = code, "call refused");
        } else {
            tracing::info!(target: "deployd::audit", principal = %self.principal.name, via = self.principal.via.as_str(),
                rpc = self.rpc, target = %self.target, result = code, "call");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_metadata_is_parsed_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Ok(Some("abc")));
        h.insert("authorization", "bearer  abc ".parse().expect("header"));
        assert_eq!(bearer(&h), Ok(Some("abc")));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            h.insert("authorization", bad.parse().expect("header"));
            assert_eq!(bearer(&h), Err(Refusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }

    #[test]
    fn rpc_names_are_a_fixed_set() {
        // Every method of the contract is named, none counted as "other".
        let pool = prost_reflect::DescriptorPool::decode(crate::api::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let service = pool
            .get_service_by_name("deployd.v1.Deployer")
            .expect("Deployer");
        for m in service.methods() {
            let path = format!("/deployd.v1.Deployer/{}", m.name());
            assert_eq!(rpc_name(&path), m.name(), "{path}");
        }
        assert_eq!(rpc_name("/deployd.v1.Deployer/Deploy"), "Deploy");
        assert_eq!(rpc_name("/deployd.v1.Deployer/Nope"), "other");
        assert_eq!(rpc_name("/x.y/Deploy"), "other");
        assert_eq!(
            rpc_name("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "ServerReflectionInfo"
        );
    }

    #[tokio::test]
    async fn a_network_listener_needs_authentication_or_an_explicit_opt_out() {
        let any: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let e = Auth::load(&AuthConfig::default(), any)
            .await
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("--insecure-allow-unauthenticated"),
            "{e}"
        );
        let open = AuthConfig {
            insecure_allow_unauthenticated: true,
            ..AuthConfig::default()
        };
        assert!(!Auth::load(&open, any)
            .await
            .expect("opt-out")
            .authenticates());
        let local: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        assert!(!Auth::load(&AuthConfig::default(), local)
            .await
            .expect("loopback")
            .authenticates());
        let v6: SocketAddr = "[::]:50051".parse().expect("addr");
        assert!(Auth::load(&AuthConfig::default(), v6).await.is_err());
    }
}
