//! The TLS settings of every outgoing HTTPS client (Google's APIs, probes,
//! a JWKS), built on one copy of the system's CA roots. Reading the roots
//! from /etc/ssl/certs takes milliseconds; reqwest would do it again for
//! every client it builds, and a probe pinned to approved addresses needs a
//! client of its own each time.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no CA root certificates could be loaded from the system ({0})")]
    NoSystemRoots(String),
    #[error("a trusted certificate is not a usable CA root")]
    BadRoot(#[source] rustls::Error),
    #[error("setting up TLS")]
    Config(#[source] rustls::Error),
}

/// The system's roots, loaded on first use and then shared.
fn system_roots() -> Result<&'static RootCertStore, TlsError> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(loaded.certs);
            if ignored > 0 {
                tracing::warn!(
                    ignored,
                    "system CA roots that could not be parsed were skipped"
                );
            }
            if store.is_empty() {
                let why: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
                return Err(if why.is_empty() {
                    "none found".into()
                } else {
                    why.join("; ")
                });
            }
            tracing::debug!(added, "loaded the system's CA roots");
            Ok(store)
        })
        .as_ref()
        .map_err(|why| TlsError::NoSystemRoots(why.clone()))
}

/// Client settings trusting the system's roots plus `extra`, speaking
/// HTTP/2 or HTTP/1.1. Cheap to clone into each client.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = system_roots()?.clone();
    for cert in extra {
        roots.add(cert.clone()).map_err(TlsError::BadRoot)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The shared settings with only the system's roots.
pub fn system_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let c = client_config(&[])?;
    Ok(CONFIG.get_or_init(|| c).clone())
}

/// A reqwest builder using `config` (reqwest takes the settings by value;
/// cloning them shares the root store).
pub fn http_client(config: &ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(config.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_roots_are_loaded_once_and_shared() {
        let a = system_roots().expect("roots");
        let b = system_roots().expect("roots");
        assert!(std::ptr::eq(a, b));
        assert!(!a.is_empty());
        let c = system_client_config().expect("config");
        let d = system_client_config().expect("config");
        assert!(Arc::ptr_eq(&c, &d));
    }

    #[test]
    fn a_client_built_on_the_shared_settings_is_usable() {
        let c = system_client_config().expect("config");
        http_client(&c).build().expect("client");
    }
}
