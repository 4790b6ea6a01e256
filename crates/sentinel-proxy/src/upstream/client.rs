//! The upstream HTTP client and its TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The upstream HTTP client: hyper's pooled client over rustls
/// ([`sentinel_net::tls_config`]: webpki roots, `ring` passed explicitly),
/// HTTP/1.1 and HTTP/2 by ALPN, plain HTTP allowed (local providers).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the [`UpstreamClient`]: TCP connects time out after
/// `connect_timeout`; idle pooled connections close after 90 s.
pub fn upstream_client(
    connect_timeout: Duration,
) -> Result<UpstreamClient, sentinel_net::ClientBuildError> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https_connector(connect_timeout)?))
}

/// The proxy's outgoing connector (providers, the trace exporter): TCP
/// with `TCP_NODELAY` and `connect_timeout`, rustls
/// ([`sentinel_net::tls_config`]), HTTP/1.1 and HTTP/2 by ALPN, plain HTTP
/// allowed.
pub(crate) fn https_connector(
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, sentinel_net::ClientBuildError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(sentinel_net::tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_crypto_provider_is_built_in() {
        // Panics when more than one provider is compiled in (or none).
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        assert!(!config.crypto_provider().cipher_suites.is_empty());
    }

    #[tokio::test]
    async fn the_upstream_client_builds() {
        assert!(upstream_client(Duration::from_secs(1)).is_ok());
    }
}
