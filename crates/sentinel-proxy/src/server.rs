//! The HTTP service: routes, inbound auth, admission control, CORS, request
//! ids and the access log. Connections are served by [`crate::serve`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::{HeaderName, HeaderValue, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use sentinel_core::{Tier, TierConfigSource};
use sentinel_layer::{ErrorCode, RoutingDecision, SentinelError, TierRouting, UpstreamError};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tower::Layer;

use crate::metrics as m;
use crate::serve::Guarded;
use crate::settings::Secret;
use crate::status;
use crate::timing::{RequestClock, Timings};
use crate::trace::Tracing;
use crate::upstream::Upstream;

/// The request-id header.
pub use sentinel_layer::headers::REQUEST_ID;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) source: Arc<dyn TierConfigSource>,
    pub(crate) prometheus: PrometheusHandle,
    /// For the breaker-state gauge, set when `/metrics` is read, and the
    /// state API.
    pub(crate) layer: sentinel_layer::TierRoutingLayer,
    /// The routed requests' histograms and last minute (the status page).
    pub(crate) timings: Arc<Timings>,
}

/// The proxy's service, outer to inner: CORS (when origins are set),
/// [`Front`] (request ids, the access log, inbound auth), [`Dispatch`],
/// which sends `POST`s to the routed paths straight to the routed service
/// ([`Answered`]: admission, then the tier routing) and everything else to
/// the router. No stage boxes a routed request's future but the routing
/// itself.
pub(crate) fn app(
    state: AppState,
    routed: TierRouting<Upstream>,
    tracing: Tracing,
    keys: &[Secret],
    max_in_flight: usize,
    cors_origins: &[String],
) -> tower::util::Either<tower_http::cors::Cors<Front<Dispatch>>, Front<Dispatch>> {
    let routed = Answered {
        routed,
        admission: Arc::new(Semaphore::new(
            max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
        )),
        timings: state.timings.clone(),
        tracing,
    };
    // The routed paths' `POST`s never reach the router (see `Dispatch`):
    // it answers their other methods.
    let mut router = Router::new();
    for path in ROUTED_PATHS {
        router = router.route(path, MethodRouter::new().fallback(method_not_allowed));
    }
    let router = router
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/metrics", get(metrics))
        .route("/admin/state", get(status::admin_state))
        .route("/status", get(status::status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state);
    let front = Front {
        inner: Dispatch { routed, router },
        inbound_keys: Arc::new(keys.iter().map(|k| KeyDigest::of(k.expose())).collect()),
    };
    match cors(cors_origins) {
        Some(cors) => tower::util::Either::Left(cors.layer(front)),
        None => tower::util::Either::Right(front),
    }
}

/// The CORS layer for `origins` (`*`: any), or none when the list is empty.
/// Preflights are answered here, before the inbound keys are asked for (a
/// browser sends none with them).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([http::Method::GET, http::Method::POST])
            // SDKs send headers of their own (`x-stainless-*`, `openai-beta`):
            // whatever the preflight asks for, from an allowed origin.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([MODEL_NAME, TIER_NAME, REQUEST_ID_NAME, header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The paths whose `POST`s are routed: the layer's defaults, which the
/// proxy does not change.
use sentinel_layer::DEFAULT_ROUTED_PATHS as ROUTED_PATHS;

/// Sends a routed request (`POST` to [`ROUTED_PATHS`]) to the routed
/// service without the router's matching and boxing, and anything else to
/// the router, which also answers other methods on those paths.
#[derive(Clone)]
pub(crate) struct Dispatch {
    routed: Answered,
    router: Router,
}

impl tower::Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = DispatchFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready: the routed service drives readiness inside
        // each request, and axum's router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let routed =
            request.method() == http::Method::POST && ROUTED_PATHS.contains(&request.uri().path());
        if routed {
            DispatchFuture::Routed {
                call: self.routed.call(request),
            }
        } else {
            DispatchFuture::Other {
                call: tower::Service::call(&mut self.router, request),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Dispatch`].
    #[project = DispatchProj]
    pub(crate) enum DispatchFuture {
        Routed { #[pin] call: AnsweredFuture },
        Other { #[pin] call: axum::routing::future::RouteFuture<Infallible> },
    }
}

impl std::future::Future for DispatchFuture {
    type Output = Result<Response, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            DispatchProj::Routed { call } => call.poll(cx),
            DispatchProj::Other { call } => call.poll(cx),
        }
    }
}

/// The routed service with its errors answered as responses, behind the
/// in-flight cap. Routed requests never fail as service errors (the layer
/// answers in its envelope); an error can only come from a request it
/// passed through.
///
/// The cap is a semaphore whose permit travels with the response body, so
/// a stream holds its place until its last byte (tower's
/// `ConcurrencyLimit` would free it when the response head is ready). Past
/// the cap a request is answered `503 overloaded` at once, never queued.
/// Only routed requests take a place: everything else the proxy answers
/// from memory.
#[derive(Clone)]
struct Answered {
    routed: TierRouting<Upstream>,
    admission: Arc<Semaphore>,
    timings: Arc<Timings>,
    tracing: Tracing,
}

impl tower::Service<Request> for Answered {
    type Response = Response;
    type Error = Infallible;
    type Future = AnsweredFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            return AnsweredFuture::Shed {
                response: Some(overloaded()),
            };
        };
        let span = self.tracing.start_request(&mut request);
        let clock = RequestClock::start(&mut request, &self.timings, span);
        // `TierRouting` is always ready: its readiness is driven inside
        // each request's future.
        AnsweredFuture::Routing {
            call: self.routed.call(request),
            admitted: Some((permit, clock)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Answered`].
    #[project = AnsweredProj]
    pub(crate) enum AnsweredFuture {
        Shed { response: Option<Response> },
        Routing {
            #[pin]
            call: sentinel_layer::ResponseFuture<Upstream, Body, Body>,
            admitted: Option<(tokio::sync::OwnedSemaphorePermit, RequestClock)>,
        },
    }
}

impl std::future::Future for AnsweredFuture {
    type Output = Result<Response, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let response = match self.project() {
            // Polled again after it finished: fused, as `futures`' `Fuse` is.
            AnsweredProj::Shed { response } => match response.take() {
                Some(response) => response,
                None => return std::task::Poll::Pending,
            },
            AnsweredProj::Routing { call, admitted } => {
                let response = match std::task::ready!(call.poll(cx)) {
                    Ok(response) => response,
                    Err(e) => upstream_failed(&e).map(http_body_util::Either::Left),
                };
                match admitted.take() {
                    Some((permit, clock)) => clock
                        .answered(response)
                        .map(|body| Body::new(Guarded::new(body, permit))),
                    None => return std::task::Poll::Pending,
                }
            }
        };
        std::task::Poll::Ready(Ok(response))
    }
}

fn upstream_failed(e: &UpstreamError) -> Response {
    let code = sentinel_layer::classify::error_code(e.kind(), false);
    SentinelError::new(code, e.to_string())
        .into_response()
        .into_response()
}

/// A tier as an OpenAI model object.
fn model_object(tier: Tier) -> serde_json::Value {
    serde_json::json!({ "id": tier.as_str(), "object": "model", "created": 0, "owned_by": "sentinel" })
}

async fn models() -> Response {
    let data: Vec<_> = Tier::ALL.into_iter().map(model_object).collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{id}`: a tier, as OpenAI's model retrieval answers.
async fn model(
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    // An id that is not UTF-8 once decoded is no tier either.
    let id = id.map(|p| p.0).unwrap_or_default();
    match id.parse::<Tier>() {
        Ok(tier) => axum::Json(model_object(tier)).into_response(),
        Err(_) => {
            let shown: String = id.chars().take(64).collect();
            SentinelError::new(
                ErrorCode::NotFound,
                format!(
                    "the model `{shown}` does not exist: Sentinel serves the tiers {}",
                    Tier::ALL.map(Tier::as_str).join(", ")
                ),
            )
            .into_response()
            .into_response()
        }
    }
}

/// A routed path with another method than `POST`.
async fn method_not_allowed(method: http::Method) -> Response {
    let mut response = SentinelError::new(
        ErrorCode::MethodNotAllowed,
        format!("this path takes POST, not {}", method.as_str()),
    )
    .into_response()
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.layer.export_breaker_states();
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

/// An inbound key, as the SHA-256 digest it is compared by: digests of the
/// same length whatever the key's, compared in constant time, so neither
/// the comparison's time nor its length says anything about the key.
pub(crate) struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        KeyDigest(bytes)
    }
}

/// The key `Authorization` presents: `Bearer <key>`, or, for a browser,
/// `Basic` with the key as the password (any user name). Schemes in any
/// case.
fn presented_key(headers: &http::HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(std::borrow::Cow::Borrowed(token));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| std::borrow::Cow::Owned(password.to_owned()))
}

/// Whether `path` is guarded by the inbound keys: the API (`/v1/`), the
/// state API (`/admin/`) and the status page.
fn guarded(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || path.starts_with("/admin/") || path == STATUS_PAGE
}

/// The status page's path: a browser's page, asked for its key by HTTP
/// Basic.
const STATUS_PAGE: &str = "/status";

/// Whether `request` may pass: a [`guarded`] path needs one of the inbound
/// keys (when there are any).
fn authorized(keys: &[KeyDigest], request: &Request) -> bool {
    if keys.is_empty() || !guarded(request.uri().path()) {
        return true;
    }
    let Some(key) = presented_key(request.headers()) else {
        return false;
    };
    let presented = KeyDigest::of(&key);
    // Compare against every key, without stopping at a match.
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        ok |= presented.0.ct_eq(&key.0);
    }
    bool::from(ok)
}

fn overloaded() -> Response {
    ::metrics::counter!(m::REQUESTS_SHED).increment(1);
    SentinelError::new(
        ErrorCode::Overloaded,
        "Sentinel is serving as many requests as it is allowed to: retry shortly",
    )
    .retry_after(std::time::Duration::from_secs(1))
    .into_response()
    .into_response()
}

/// `401 invalid_api_key` for a request to `path`; the status page's also
/// asks a browser for the key by HTTP Basic.
fn unauthorized(path: &str) -> Response {
    let mut response = SentinelError::new(
        ErrorCode::InvalidApiKey,
        "a valid API key is required: send `Authorization: Bearer <key>`",
    )
    .into_response()
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    if path == STATUS_PAGE {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Sentinel status\", charset=\"UTF-8\""),
        );
    }
    response
}

/// The request-id header, parsed once.
use sentinel_layer::headers::{MODEL_NAME, REQUEST_ID_NAME, TIER_NAME};

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

/// The front service: sets `X-Request-Id` on every request and response,
/// answers `401` to requests without a valid inbound key, and logs each
/// request once. One service instead of a middleware per concern: no boxed
/// clone of the router per concern and per request.
#[derive(Clone)]
pub(crate) struct Front<S> {
    inner: S,
    inbound_keys: Arc<Vec<KeyDigest>>,
}

impl<S> tower::Service<Request> for Front<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
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
        let inner = authorized(&self.inbound_keys, &request).then(|| self.inner.call(request));
        FrontFuture {
            inner,
            line: Some(AccessLine {
                id,
                method,
                uri,
                started,
            }),
        }
    }
}

/// What the access log line of a request needs from its head.
struct AccessLine {
    id: HeaderValue,
    method: http::Method,
    uri: http::Uri,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The future of [`Front`]: the inner call (`None`: unauthorized), then
    /// the request id on the response and the access log line.
    pub(crate) struct FrontFuture<F> {
        #[pin]
        inner: Option<F>,
        line: Option<AccessLine>,
    }
}

impl<F> std::future::Future for FrontFuture<F>
where
    F: std::future::Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if this.line.is_none() {
            // Polled again after it finished: fused, as `futures`' `Fuse` is.
            return std::task::Poll::Pending;
        }
        let mut response = match this.inner.as_pin_mut() {
            Some(inner) => match std::task::ready!(inner.poll(cx)) {
                Ok(response) => response,
                Err(never) => match never {},
            },
            None => unauthorized(this.line.as_ref().map_or("", |l| l.uri.path())),
        };
        if let Some(line) = this.line.take() {
            response
                .headers_mut()
                .insert(REQUEST_ID_NAME, line.id.clone());
            log_request(&line.id, &line.method, &line.uri, line.started, &response);
        }
        std::task::Poll::Ready(Ok(response))
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
