//! [`TierRouting`]: the tier-routing service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Limited};
use sentinel_core::{PickReason, Pinned, SessionPlan, Tier, TierConfig};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::attempts::{self, Attempt};
use super::future::ResponseFuture;
use super::{Mode, Shared};
use crate::body::{ResponseBody, RoutedBody};
use crate::breaker::state::Ticket;
use crate::decision::{RoutingDecision, SelectionReason};
use crate::error::{ErrorCode, SentinelError};
use crate::headers;
use crate::metrics as m;
use crate::request;
use crate::retry::RouteContext;
use crate::select::NoModel;
use crate::upstream::BoxError;

/// The tier-routing service made by [`TierRoutingLayer`](super::TierRoutingLayer).
pub struct TierRouting<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S: Clone> Clone for TierRouting<S> {
    fn clone(&self) -> Self {
        TierRouting {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for TierRouting<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierRouting").finish_non_exhaustive()
    }
}

impl<S> TierRouting<S> {
    pub(crate) fn new(shared: Arc<Shared>, inner: S) -> Self {
        TierRouting { shared, inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type Routed<ResBody> = Response<ResponseBody<ResBody>>;

impl<S, B, ResBody> Service<Request<B>> for TierRouting<S>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Routed<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is driven inside each request's future, after the
        // routing work: the layer itself is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mode = self.shared.mode(req.method(), req.uri(), req.headers());
        let inner = self.inner.clone();
        if mode == Mode::PassThrough {
            return ResponseFuture::pass_through(inner.oneshot(req.map(RoutedBody::streaming)));
        }
        let shared = self.shared.clone();
        ResponseFuture::routed(Box::pin(route(shared, inner, req, mode == Mode::Grpc)))
    }
}

/// A Sentinel error as a response, in the envelope or as a gRPC status.
fn reject<R>(error: SentinelError, grpc: bool, tier: Option<Tier>) -> Response<ResponseBody<R>> {
    let mut response = if grpc {
        crate::grpc::error_response(&error)
    } else {
        error.into_response()
    }
    .map(Either::Right);
    if let Some(tier) = tier {
        response
            .headers_mut()
            .insert(headers::TIER_NAME, HeaderValue::from_static(tier.as_str()));
    }
    count_request(tier, None, &response);
    response
}

fn count_request<R>(
    tier: Option<Tier>,
    decision: Option<&RoutingDecision>,
    response: &Response<R>,
) {
    let tier = tier.map_or("none", Tier::as_str);
    // Labels share the decision's strings instead of copying them.
    let (model, provider): (::metrics::SharedString, ::metrics::SharedString) = decision.map_or(
        (
            ::metrics::SharedString::const_str("none"),
            ::metrics::SharedString::const_str("none"),
        ),
        |d| (d.model.clone().into(), d.provider.clone().into()),
    );
    ::metrics::counter!(m::REQUESTS,
        "tier" => tier,
        "model" => model,
        "provider" => provider,
        "status" => m::status_class(response.status()))
    .increment(1);
}

async fn route<S, B, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<B>,
    grpc: bool,
) -> Routed<ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();

    // Headers first: no need to read a body for a bad header.
    let session = match request::session_id(&parts.headers) {
        Ok(s) => s.map(Arc::<str>::from),
        Err(e) => return reject(e, grpc, None),
    };
    let header_tier = match request::header_tier(&parts.headers) {
        Ok(t) => t,
        Err(e) => return reject(e, grpc, None),
    };

    // The body: buffered and rewritten, or (gRPC) passed through.
    let (requested, template, stream, usage_added, body) = if grpc {
        (
            header_tier.unwrap_or_default(),
            None,
            false,
            false,
            Some(RoutedBody::streaming(body)),
        )
    } else {
        if let Err(e) = request::json_content_type(&parts.headers) {
            return reject(e, grpc, None);
        }
        let too_large = || {
            SentinelError::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the request body is larger than {} bytes",
                    shared.body_limit
                ),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > shared.body_limit as u64) {
            return reject(too_large(), grpc, None);
        }
        let read = Limited::new(body, shared.body_limit).collect();
        let bytes = match tokio::time::timeout(shared.body_timeout, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return reject(too_large(), grpc, None);
            }
            Err(_) => {
                let e = SentinelError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} ms",
                        shared.body_timeout.as_millis()
                    ),
                );
                return reject(e, grpc, None);
            }
            Ok(Err(_)) => {
                let e = SentinelError::new(
                    ErrorCode::InvalidJson,
                    "the request body could not be read",
                );
                return reject(e, grpc, None);
            }
        };
        let parsed = match request::parse_body(&bytes) {
            Ok(p) => p,
            Err(e) => return reject(e, grpc, None),
        };
        let requested = match request::resolve_tier(header_tier, &parsed) {
            Ok(t) => t,
            Err(e) => return reject(e, grpc, None),
        };
        let stream = parsed.stream();
        // Only chat completions have `stream_options.include_usage`.
        let stream_usage = shared.stream_usage && parts.uri.path().ends_with("/chat/completions");
        let (template, usage_added) = parsed.template_with(stream_usage);
        (requested, Some(template), stream, usage_added, None)
    };

    // The config.
    let config = match shared.source.cached() {
        Some(c) => c,
        None => match shared.source.load().await {
            Ok(c) => c,
            Err(e) => {
                // The reason may quote Zion's answer or the config: it goes
                // to the log, and the client learns only what it can act on.
                tracing::warn!(reason = e.reason(), "no tier config for a request");
                let err = SentinelError::new(
                    ErrorCode::TierConfigUnavailable,
                    "no tier config is available yet: retry after the time in `Retry-After`",
                )
                .retry_after(e.retry_after());
                return reject(err, grpc, Some(requested));
            }
        },
    };
    shared.remember(&config);
    // Only the models whose provider can serve this path.
    let routed = shared.config_for(parts.uri.path(), config.clone());
    if routed.tier(requested).models().is_empty() && !config.tier(requested).models().is_empty() {
        let err = SentinelError::new(
            ErrorCode::UnsupportedRoute,
            format!(
                "no model of tier `{requested}` serves {}: use another route or tier",
                parts.uri.path()
            ),
        );
        return reject(err, grpc, Some(requested));
    }
    let (config, full) = (routed, config);

    // The model.
    let (decision, ticket) = match decide(&shared, (&config, &full), requested, session).await {
        Ok((d, ticket)) => (RoutingDecision { stream, ..d }, ticket),
        Err(e) => return reject(e, grpc, Some(requested)),
    };
    let key = (
        decision.tier,
        decision.provider.clone(),
        decision.model.clone(),
        decision.reason,
    );
    shared
        .selections
        .get(&key, || {
            ::metrics::counter!(m::SELECTIONS,
                "tier" => decision.tier.as_str(),
                "model" => decision.model.clone(),
                "provider" => decision.provider.clone(),
                "reason" => decision.reason.as_str())
        })
        .increment(1);

    // The body is rendered for each attempt's model: its length is the
    // only framing that may travel on with it.
    if template.is_some() {
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    let context = template.map(|template| RouteContext {
        config: config.clone(),
        template,
        selector: shared.selector.clone(),
    });
    let first = Attempt {
        decision,
        ticket,
        usage_added,
    };
    let (mut response, last) =
        match attempts::run(&shared, inner, parts, body, context, first).await {
            Ok(answered) => answered,
            // A gRPC call, or an inner service that failed to get ready, failed
            // before a response.
            Err((e, last)) => {
                let code = crate::classify::error_code(e.kind(), false);
                let err = SentinelError::new(code, e.to_string());
                let mut r = reject(err, grpc, Some(last.tier));
                stamp(&mut r, &last);
                return r;
            }
        };

    stamp(&mut response, &last);
    let status = m::status_class(response.status());
    let key = (last.tier, last.provider.clone(), last.model.clone(), status);
    shared
        .requests
        .get(&key, || {
            ::metrics::counter!(m::REQUESTS,
                "tier" => last.tier.as_str(),
                "model" => last.model.clone(),
                "provider" => last.provider.clone(),
                "status" => status)
        })
        .increment(1);

    // After a failover, the session follows the model that served it.
    if response.status().is_success()
        && last.attempt > 1
        && let (Some(id), Some(sessions)) = (&last.session, &shared.sessions)
    {
        let pin = Pinned::new(last.tier, last.provider.clone(), last.model.clone());
        let repinned = tokio::time::timeout(sessions.wait, sessions.store.repin(id, &pin)).await;
        if !matches!(repinned, Ok(Ok(_))) {
            session_fallback();
        }
    }
    // The decision of the attempt that answered goes with the response.
    response.extensions_mut().insert(last);
    response
}

fn stamp<R>(response: &mut Response<R>, decision: &RoutingDecision) {
    if let Ok(model) = HeaderValue::from_str(&decision.model) {
        response.headers_mut().insert(headers::MODEL_NAME, model);
    }
    response.headers_mut().insert(
        headers::TIER_NAME,
        HeaderValue::from_static(decision.tier.as_str()),
    );
}

fn session_fallback() {
    ::metrics::counter!(m::REDIS_FALLBACKS, "component" => "sessions").increment(1);
}

fn no_model(tier: Tier, why: NoModel) -> SentinelError {
    match why {
        NoModel::Empty => SentinelError::new(
            ErrorCode::TierUnavailable,
            format!("tier `{tier}` has no model in the tier config"),
        ),
        NoModel::BackingOff { wait } => SentinelError::new(
            ErrorCode::AllModelsBackingOff,
            format!("every model of tier `{tier}` is backing off"),
        )
        .retry_after(wait),
    }
}

/// Applies the session rule and the weighted choice; the chosen model
/// comes admitted, with its breaker ticket.
///
/// `config` is the tier config for the request's path; `full` the whole
/// one (they differ when some providers cannot serve the path).
async fn decide(
    shared: &Shared,
    (config, full): (&Arc<TierConfig>, &Arc<TierConfig>),
    requested: Tier,
    session: Option<Arc<str>>,
) -> Result<(RoutingDecision, Ticket), SentinelError> {
    let now = Instant::now();
    let selector = &shared.selector;
    let (candidate, candidate_ticket) =
        match selector.choose(config.tier(requested), |_| false, now) {
            Ok((m, ticket)) => (Ok(m), Some(ticket)),
            Err(why) => (Err(why), None),
        };
    let decision =
        |tier: Tier, m: &sentinel_core::ModelEntry, reason, session: Option<Arc<str>>| {
            RoutingDecision {
                requested_tier: requested,
                tier,
                provider: m.provider_arc().clone(),
                model: m.model_arc().clone(),
                attempt: 1,
                reason,
                session,
                stream: false,
            }
        };
    // The candidate with its ticket.
    fn admitted(
        candidate: Result<&sentinel_core::ModelEntry, NoModel>,
        ticket: Option<Ticket>,
        tier: Tier,
    ) -> Result<(&sentinel_core::ModelEntry, Ticket), SentinelError> {
        match (candidate, ticket) {
            (Ok(m), Some(ticket)) => Ok((m, ticket)),
            (Err(why), _) => Err(no_model(tier, why)),
            (Ok(_), None) => Err(no_model(tier, NoModel::Empty)),
        }
    }

    let (Some(id), Some(sessions)) = (session, &shared.sessions) else {
        let (m, ticket) = admitted(candidate, candidate_ticket, requested)?;
        return Ok((
            decision(requested, m, SelectionReason::Weighted, None),
            ticket,
        ));
    };

    let candidate_pin = candidate
        .ok()
        .map(|m| Pinned::new(requested, m.provider_arc().clone(), m.model_arc().clone()));
    let outcome = tokio::time::timeout(
        sessions.wait,
        sessions.store.pin_or_get(&id, candidate_pin.as_ref()),
    )
    .await;
    let outcome = match outcome {
        Ok(Ok(outcome)) => outcome,
        _ => {
            // The store is slow or down: serve without pinning.
            session_fallback();
            let (m, ticket) = admitted(candidate, candidate_ticket, requested)?;
            return Ok((
                decision(requested, m, SelectionReason::Weighted, None),
                ticket,
            ));
        }
    };

    // This request pinned its candidate: a new session, or an upgrade.
    if let (Some(pin), Some(current)) = (&candidate_pin, &outcome.current)
        && pin == current
        && outcome.previous.as_ref() != Some(current)
    {
        let reason = match &outcome.previous {
            Some(previous) => {
                ::metrics::counter!(m::SESSION_UPGRADES,
                    "from" => previous.tier.as_str(),
                    "to" => requested.as_str())
                .increment(1);
                SelectionReason::Upgrade
            }
            None => SelectionReason::Weighted,
        };
        let (m, ticket) = admitted(candidate, candidate_ticket, requested)?;
        return Ok((decision(requested, m, reason, Some(id)), ticket));
    }

    let Some(pin) = outcome.current else {
        // No pin and nothing to pin: the requested tier has no model to give.
        return Err(match candidate {
            Err(why) => no_model(requested, why),
            Ok(_) => no_model(requested, NoModel::Empty),
        });
    };
    // The pinned model is in the config but cannot serve this path: this
    // request is served by one that can, and the session keeps its model.
    if config
        .tier(pin.tier)
        .find(&pin.provider, &pin.model)
        .is_none()
        && full
            .tier(pin.tier)
            .find(&pin.provider, &pin.model)
            .is_some()
    {
        let tier = pin.tier.max(requested);
        let (m, ticket) = selector
            .choose(config.tier(tier), |_| false, now)
            .map_err(|why| no_model(tier, why))?;
        return Ok((
            decision(tier, m, SelectionReason::Weighted, Some(id)),
            ticket,
        ));
    }
    let plan = SessionPlan::decide(Some(&pin), requested, config, |m| {
        selector.available(m, now)
    });
    if let SessionPlan::Keep { tier } = plan {
        let m = config
            .tier(tier)
            .find(&pin.provider, &pin.model)
            .ok_or_else(|| no_model(tier, NoModel::Empty))?;
        // The pinned model is admitted unless it lost its probe slot to
        // another request in the meantime; then it is backing off, as below.
        if let Ok(ticket) = selector.admit(m, now) {
            return Ok((decision(tier, m, SelectionReason::Sticky, Some(id)), ticket));
        }
    }
    let (tier, upgrade) = match plan {
        SessionPlan::Keep { tier } => (tier, false),
        SessionPlan::Pick { tier, reason } => (tier, reason == PickReason::Upgrade),
    };
    // An upgrade here means the requested (higher) tier had nothing to
    // give; otherwise the pinned model left or is backing off.
    let (m, ticket) = if upgrade {
        admitted(candidate, candidate_ticket, tier)?
    } else {
        selector
            .choose(config.tier(tier), |_| false, now)
            .map_err(|why| no_model(tier, why))?
    };
    let new_pin = Pinned::new(tier, m.provider_arc().clone(), m.model_arc().clone());
    let repinned = tokio::time::timeout(sessions.wait, sessions.store.repin(&id, &new_pin)).await;
    if !matches!(repinned, Ok(Ok(_))) {
        session_fallback();
    }
    Ok((
        decision(tier, m, SelectionReason::Weighted, Some(id)),
        ticket,
    ))
}
