//! Where a provider's requests go, and what each carries: its URL (with
//! the provider's query parameters), its key as the provider takes it,
//! and its extra headers. Built once per provider; the upstream client,
//! the model probes and the health checks all use it.

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use sentinel_layer::UpstreamError;

use crate::settings::{AuthStyle, Provider, ProviderKind};

/// A provider's key or extra header cannot go into a header (a control
/// character, say). The value itself is never shown.
#[derive(Debug)]
pub struct InvalidProviderKey {
    provider: String,
    source: Option<http::header::InvalidHeaderValue>,
}

impl std::fmt::Display for InvalidProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the key or a header of provider `{}` cannot go into a header",
            self.provider
        )
    }
}

impl std::error::Error for InvalidProviderKey {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The `anthropic-version` header.
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// One provider's destination.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) kind: ProviderKind,
    /// The base URL without its trailing `/`.
    base_url: String,
    /// `?k=v&...` added to every URL, or empty.
    query: String,
    /// Set on every request: the key, Anthropic's version, extra headers.
    pub(crate) headers: HeaderMap,
}

fn sensitive(provider: &Provider, value: String) -> Result<HeaderValue, InvalidProviderKey> {
    let mut value = HeaderValue::try_from(value).map_err(|e| InvalidProviderKey {
        provider: provider.name.clone(),
        source: Some(e),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Percent-encodes a query component (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Target {
    /// The destination of `provider`.
    pub(crate) fn of(provider: &Provider) -> Result<Target, InvalidProviderKey> {
        let mut headers = HeaderMap::new();
        // Extra headers first: the key and the version are Sentinel's.
        for (name, value) in &provider.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|_| InvalidProviderKey {
                provider: provider.name.clone(),
                source: None,
            })?;
            headers.append(name, sensitive(provider, value.clone())?);
        }
        if let Some(key) = &provider.api_key {
            let key = key.expose();
            match (provider.kind, provider.auth) {
                (ProviderKind::Anthropic, _) => {
                    headers.insert("x-api-key", sensitive(provider, key.to_owned())?);
                }
                (ProviderKind::Openai, AuthStyle::Bearer) => {
                    headers.insert(
                        header::AUTHORIZATION,
                        sensitive(provider, format!("Bearer {key}"))?,
                    );
                }
                (ProviderKind::Openai, AuthStyle::ApiKey) => {
                    headers.insert("api-key", sensitive(provider, key.to_owned())?);
                }
            }
        }
        if provider.kind == ProviderKind::Anthropic {
            headers.insert(
                ANTHROPIC_VERSION,
                HeaderValue::from_static(crate::anthropic::API_VERSION),
            );
        }
        let query = if provider.query.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = provider
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            format!("?{}", pairs.join("&"))
        };
        Ok(Target {
            kind: provider.kind,
            base_url: provider.base_url.trim_end_matches('/').to_owned(),
            query,
            headers,
        })
    }

    /// The provider's URL for `rest` (the client's path without `/v1`;
    /// Anthropic's chat completions go to its Messages API).
    pub(crate) fn uri(&self, rest: &str) -> Result<Uri, UpstreamError> {
        let rest = match self.kind {
            ProviderKind::Openai => rest,
            ProviderKind::Anthropic => "/v1/messages",
        };
        self.uri_of(rest)
    }

    /// The provider's URL for `path`, exactly.
    pub(crate) fn uri_of(&self, path: &str) -> Result<Uri, UpstreamError> {
        Uri::try_from(format!("{}{path}{}", self.base_url, self.query))
            .map_err(|_| UpstreamError::other("the upstream URL is invalid"))
    }

    /// The path (and query) a health check probes: the checks' own
    /// `path` for an OpenAI-compatible provider, `/v1/models` for
    /// Anthropic's.
    pub(crate) fn health_path(&self, path: &str) -> String {
        match self.kind {
            ProviderKind::Openai => format!("{path}{}", self.query),
            ProviderKind::Anthropic => format!("/v1/models{}", self.query),
        }
    }

    /// The base URL.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    #[test]
    fn each_kind_and_style_sends_its_key_its_way() {
        let bearer = Target::of(&Provider::openai(
            "openai",
            "https://o/v1/",
            Some(Secret::from("k1")),
        ))
        .unwrap();
        assert_eq!(bearer.headers[header::AUTHORIZATION], "Bearer k1");
        assert!(bearer.headers[header::AUTHORIZATION].is_sensitive());
        assert_eq!(
            bearer.uri("/chat/completions").unwrap(),
            "https://o/v1/chat/completions"
        );

        let azure = Target::of(&Provider {
            auth: AuthStyle::ApiKey,
            query: vec![("api-version".into(), "2024-10-21".into())],
            headers: vec![("x-ms-team".into(), "ops".into())],
            ..Provider::openai(
                "azure",
                "https://a.openai.azure.com/openai/v1",
                Some(Secret::from("k2")),
            )
        })
        .unwrap();
        assert_eq!(azure.headers["api-key"], "k2");
        assert!(azure.headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(azure.headers["x-ms-team"], "ops");
        assert_eq!(
            azure.uri("/chat/completions").unwrap(),
            "https://a.openai.azure.com/openai/v1/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            azure.health_path("/models"),
            "/models?api-version=2024-10-21"
        );

        let anthropic = Target::of(&Provider {
            kind: ProviderKind::Anthropic,
            ..Provider::openai(
                "anthropic",
                "https://api.anthropic.com",
                Some(Secret::from("k3")),
            )
        })
        .unwrap();
        assert_eq!(anthropic.headers["x-api-key"], "k3");
        assert_eq!(anthropic.headers["anthropic-version"], "2023-06-01");
        assert!(anthropic.headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(
            anthropic.uri("/chat/completions").unwrap(),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(anthropic.health_path("/models"), "/v1/models");
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_without_showing_it() {
        let err = Target::of(&Provider::openai(
            "openai",
            "https://o",
            Some(Secret::from("bad\nkey-secret")),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("openai") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn query_values_are_encoded() {
        let t = Target::of(&Provider {
            query: vec![("a b".into(), "c&d=e".into())],
            ..Provider::openai("x", "https://o", None)
        })
        .unwrap();
        assert_eq!(t.uri("/m").unwrap(), "https://o/m?a%20b=c%26d%3De");
    }
}
