//! The HTTP server: routes, inbound auth, request ids and the access log.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderName, HeaderValue, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use sentinel_core::{Tier, TierConfigSource};
use sentinel_layer::{ErrorCode, RoutingDecision, SentinelError, TierRouting, UpstreamError};
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use crate::metrics as m;
use crate::settings::Secret;
use crate::upstream::Upstream;

/// The request-id header.
pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) source: Arc<dyn TierConfigSource>,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) inbound_keys: Arc<Vec<Secret>>,
}

/// The proxy's service: [`Front`] (request ids, the access log, inbound
/// auth) around the router, which sends the routed paths to the routed
/// service.
pub(crate) fn app(state: AppState, routed: TierRouting<Upstream>) -> Front<Router> {
    let routed = Answered(routed);
    let keys = state.inbound_keys.clone();
    let router = Router::new()
        .route_service("/v1/chat/completions", routed.clone())
        .route_service("/v1/responses", routed)
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state);
    Front {
        inner: router,
        inbound_keys: keys,
    }
}

/// The future of the proxy's own services.
type BoxResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

/// The routed service with its errors answered as responses. Routed
/// requests never fail as service errors (the layer answers in its
/// envelope); an error can only come from a request it passed through.
#[derive(Clone)]
struct Answered(TierRouting<Upstream>);

impl tower::Service<Request> for Answered {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxResponse;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let routed = self.0.clone();
        Box::pin(async move {
            Ok(match routed.oneshot(request).await {
                Ok(response) => response.into_response(),
                Err(e) => upstream_failed(&e),
            })
        })
    }
}

fn upstream_failed(e: &UpstreamError) -> Response {
    SentinelError::new(ErrorCode::UpstreamFailed, e.to_string())
        .into_response()
        .into_response()
}

async fn models() -> Response {
    let data: Vec<_> = Tier::ALL
        .iter()
        .map(|t| serde_json::json!({ "id": t.as_str(), "object": "model", "created": 0, "owned_by": "sentinel" }))
        .collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.source.cached() {
        Some(config) => axum::Json(serde_json::json!({
            "status": "ready",
            "tier_config_version": config.version(),
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                serde_json::json!({ "status": "not_ready", "reason": "no tier config loaded yet" }),
            ),
        )
            .into_response(),
    }
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().chars().take(128).collect::<String>();
    SentinelError::new(
        ErrorCode::NotFound,
        format!("Sentinel does not serve `{path}`"),
    )
    .into_response()
    .into_response()
}

/// Whether `request` may pass: `/v1/` is guarded by the inbound keys
/// (when there are any), compared in constant time.
fn authorized(keys: &[Secret], request: &Request) -> bool {
    let path = request.uri().path();
    let guarded = path == "/v1" || path.starts_with("/v1/");
    if !guarded || keys.is_empty() {
        return true;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Compare against every key, without stopping at a match.
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        ok |= presented.as_bytes().ct_eq(key.expose().as_bytes());
    }
    !presented.is_empty() && bool::from(ok)
}

fn unauthorized() -> Response {
    let mut response = SentinelError::new(
        ErrorCode::InvalidApiKey,
        "a valid API key is required: send `Authorization: Bearer <key>`",
    )
    .into_response()
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The request-id header, parsed once.
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
const TIER_NAME: HeaderName = HeaderName::from_static(sentinel_layer::TIER_HEADER);
const MODEL_NAME: HeaderName = HeaderName::from_static(sentinel_layer::MODEL_HEADER);

/// A client's request id when it is sane: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then_some(s)
}

/// A new request id: 32 random hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..));
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((random >> (4 * (31 - i))) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// The outermost service: sets `X-Request-Id` on every request and
/// response, answers `401` to requests without a valid inbound key, and logs
/// each request once. One service instead of a middleware per concern: no
/// boxed clone of the router per concern and per request.
#[derive(Clone)]
pub(crate) struct Front<S> {
    inner: S,
    inbound_keys: Arc<Vec<Secret>>,
}

impl<S> tower::Service<Request> for Front<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxResponse;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Readiness is the inner service's, driven per request by `oneshot`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let id = match request.headers().get(REQUEST_ID_NAME) {
            Some(v) if sane_request_id(v).is_some() => v.clone(),
            _ => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID_NAME, id.clone());
                id
            }
        };
        let method = request.method().clone();
        let uri = request.uri().clone();
        let inner = authorized(&self.inbound_keys, &request).then(|| self.inner.clone());
        Box::pin(async move {
            let mut response = match inner {
                Some(inner) => inner.oneshot(request).await?,
                None => unauthorized(),
            };
            response.headers_mut().insert(REQUEST_ID_NAME, id.clone());
            log_request(&id, &method, &uri, started, &response);
            Ok(response)
        })
    }
}

/// The access log line and the request counter.
fn log_request(
    id: &HeaderValue,
    method: &http::Method,
    uri: &http::Uri,
    started: Instant,
    response: &Response,
) {
    let status = response.status();
    let header = |name: HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let attempts = response
        .extensions()
        .get::<RoutingDecision>()
        .map_or(0, |d| d.attempt);
    tracing::info!(
        request_id = id.to_str().unwrap_or("-"),
        method = method.as_str(),
        path = uri.path(),
        status = status.as_u16(),
        tier = header(TIER_NAME),
        model = header(MODEL_NAME),
        attempts,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    ::metrics::counter!(m::HTTP_REQUESTS, "status" => sentinel_layer::metrics::status_class(status)).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123:x.y_z")),
            Some("abc-123:x.y_z")
        );
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("has space")),
            None
        );
        assert_eq!(sane_request_id(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(
            sane_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(sane_request_id(&id).is_some());
        assert_ne!(id, new_request_id());
    }
}
