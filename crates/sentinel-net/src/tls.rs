//! The TLS settings of Sentinel's outbound HTTP calls (to providers, to
//! Zion) and a pooled `reqwest` client built on them.
//!
//! # Example
//!
//! ```
//! let tls = sentinel_net::tls_config()?;
//! assert!(tls.alpn_protocols.is_empty(), "each client sets its own");
//! # Ok::<(), sentinel_net::ClientBuildError>(())
//! ```

use std::fmt;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An HTTP client could not be built (its TLS settings, or the client
/// itself). The source is kept.
#[derive(Debug)]
pub struct ClientBuildError {
    what: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for ClientBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} set-up failed: {}", self.what, self.source)
    }
}

impl std::error::Error for ClientBuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl ClientBuildError {
    fn new(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClientBuildError {
            what,
            source: Box::new(source),
        }
    }
}

/// The TLS settings of Sentinel's HTTP clients: rustls with the webpki
/// roots and the `ring` crypto provider passed explicitly (the only provider
/// in the build, so nothing depends on a process-wide default). No ALPN
/// protocols: each client sets its own.
pub fn tls_config() -> Result<rustls::ClientConfig, ClientBuildError> {
    tls_config_with(&[], None).map_err(|e| ClientBuildError::new("TLS", e))
}

/// [`tls_config`] that also trusts `extra_roots` and, given an identity,
/// presents that client certificate.
pub(crate) fn tls_config_with(
    extra_roots: &[CertificateDer<'static>],
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain.to_vec(), key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A pooled HTTP client with [`tls_config`], HTTP/1.1 and HTTP/2 by ALPN.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ClientBuildError> {
    let mut tls = tls_config()?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| ClientBuildError::new("HTTP client", e))
}
