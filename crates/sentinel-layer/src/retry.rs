//! The retry stage's policy: once more, on the next model of the tier.
//!
//! [`NextModel`] is a tower [`Policy`]: on a connection error, a timeout,
//! a 429 or any 5xx (the [`classify`](crate::classify) rule) it chooses another model of the same tier that
//! has not been tried (the same weighted rule, open breakers excluded),
//! rewrites the buffered body for it and tries once more. Other 4xx pass
//! through. The decision is made on the response head, so a stream that
//! has started is never retried; a request whose body was not buffered
//! (gRPC) is never retried. When the last attempt fails, the policy answers
//! in Sentinel's envelope: 429 `rate_limited` with the provider's
//! `Retry-After` after a 429, 504 `upstream_timeout` after a timeout, else
//! 502 `upstream_failed`.
//!
//! The policy is part of the stack [`TierRoutingLayer`](crate::TierRoutingLayer)
//! builds; there is nothing to configure. What the inner service sees on a
//! retry is a second call whose [`RoutingDecision`] has `attempt == 2` and
//! `reason == SelectionReason::Retry`.
//!
//! # Example
//!
//! ```
//! use sentinel_layer::{RoutingDecision, SelectionReason};
//!
//! fn describe(decision: &RoutingDecision) -> String {
//!     match decision.reason {
//!         SelectionReason::Retry => format!("retry #{} on {}", decision.attempt, decision.model),
//!         _ => format!("first try on {}", decision.model),
//!     }
//! }
//! # let _ = describe;
//! ```

use std::future::{Ready, ready};
use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};
use http_body_util::Either;
use sentinel_core::TierConfig;
use tokio::time::Instant;
use tower::retry::Policy;

use crate::body::{ResponseBody, RoutedBody};
use crate::breaker::state::TicketSlot;
use crate::classify::{is_failure_status, retry_after};
use crate::decision::{RoutingDecision, SelectionReason};
use crate::error::{ErrorCode, SentinelError};
use crate::metrics as m;
use crate::request::BodyTemplate;
use crate::select::Selector;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// Attempts per request: the first and one retry.
const MAX_ATTEMPTS: u32 = 2;

/// A response extension an inner service sets on a `400` whose error code
/// is `context_length_exceeded`: the prompt does not fit the model. The
/// retry stage then tries once more on the model of the tier with the
/// largest context window (or the next model when the tier config gives
/// none); it does not count against the model's breaker. The proxy sets it
/// from the provider's error body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextLengthExceeded;

/// What the retry stage needs of a routed request (a request extension).
#[derive(Clone)]
pub(crate) struct RouteContext {
    pub(crate) config: Arc<TierConfig>,
    pub(crate) template: BodyTemplate,
    /// Chooses a continuation's model ([`crate::Continuation`]).
    pub(crate) selector: Arc<Selector>,
}

/// The retry policy: the next model of the tier, once.
#[derive(Clone)]
pub struct NextModel {
    selector: Arc<Selector>,
    attempts: u32,
}

impl std::fmt::Debug for NextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextModel")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl NextModel {
    pub(crate) fn new(selector: Arc<Selector>) -> Self {
        NextModel {
            selector,
            attempts: 1,
        }
    }
}

enum Failure {
    /// The prompt does not fit the model: try a larger one, else pass the
    /// provider's answer on.
    ContextLength,
    Timeout,
    BackingOff(Option<Instant>),
    /// A 429, with the provider's `Retry-After`.
    RateLimited(Option<std::time::Duration>),
    Other,
}

impl<B, ResBody> Policy<Request<RoutedBody<B>>, Response<ResponseBody<ResBody>>, UpstreamError>
    for NextModel
{
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<RoutedBody<B>>,
        result: &mut Result<Response<ResponseBody<ResBody>>, UpstreamError>,
    ) -> Option<Self::Future> {
        let failure = match result {
            Ok(response)
                if response.status() == http::StatusCode::BAD_REQUEST
                    && response
                        .extensions()
                        .get::<ContextLengthExceeded>()
                        .is_some() =>
            {
                Failure::ContextLength
            }
            Ok(response) if !is_failure_status(response.status()) => return None,
            Ok(response) if response.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                Failure::RateLimited(retry_after(response.headers()))
            }
            Ok(_) => Failure::Other,
            Err(e) => match e.kind() {
                UpstreamErrorKind::Timeout => Failure::Timeout,
                UpstreamErrorKind::BackingOff => Failure::BackingOff(e.until()),
                _ => Failure::Other,
            },
        };
        let decision = req.extensions().get::<RoutingDecision>()?.clone();
        let context = req.extensions().get::<RouteContext>()?.clone();

        if self.attempts < MAX_ATTEMPTS {
            let now = Instant::now();
            let models = context.config.tier(decision.tier);
            let tried = |m: &sentinel_core::ModelEntry| m.is(&decision.provider, &decision.model);
            let next = match failure {
                Failure::ContextLength => {
                    let window = models
                        .find(&decision.provider, &decision.model)
                        .and_then(|m| m.context_window());
                    self.selector
                        .choose_largest_window(models, tried, window, now)
                }
                _ => self.selector.choose(models, tried, now),
            };
            if let Ok((next, ticket)) = next {
                self.attempts += 1;
                req.extensions_mut().insert(TicketSlot::new(ticket));
                let body = context.template.render(next.model());
                req.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                *req.body_mut() = RoutedBody::buffered(body);
                let retry = RoutingDecision {
                    provider: next.provider_arc().clone(),
                    model: next.model_arc().clone(),
                    attempt: self.attempts,
                    reason: SelectionReason::Retry,
                    ..decision
                };
                ::metrics::counter!(m::RETRIES, "tier" => retry.tier.as_str()).increment(1);
                ::metrics::counter!(m::SELECTIONS,
                    "tier" => retry.tier.as_str(),
                    "model" => retry.model.clone(),
                    "provider" => retry.provider.clone(),
                    "reason" => SelectionReason::Retry.as_str())
                .increment(1);
                tracing::info!(tier = %retry.tier, from = %decision.model, to = %retry.model, "retrying on the next model");
                req.extensions_mut().insert(retry);
                return Some(ready(()));
            }
        }

        let error = match failure {
            // No other model to try: the provider's own answer stands.
            Failure::ContextLength => return None,
            Failure::Timeout => SentinelError::new(
                ErrorCode::UpstreamTimeout,
                format!("the upstream model `{}` timed out", decision.model),
            ),
            Failure::BackingOff(until) => {
                let wait = until.map(|u| u.saturating_duration_since(Instant::now()));
                let err = SentinelError::new(
                    ErrorCode::AllModelsBackingOff,
                    format!("every model of tier `{}` is backing off", decision.tier),
                );
                match wait {
                    Some(w) => err.retry_after(w),
                    None => err,
                }
            }
            Failure::RateLimited(wait) => {
                let err = SentinelError::new(
                    ErrorCode::RateLimited,
                    format!("the upstream model `{}` is rate limited", decision.model),
                );
                match wait {
                    Some(w) => err.retry_after(w),
                    None => err,
                }
            }
            Failure::Other => SentinelError::new(
                ErrorCode::UpstreamFailed,
                format!("the upstream model `{}` failed", decision.model),
            ),
        };
        let mut response = error.into_response().map(Either::Right);
        response.extensions_mut().insert(decision);
        *result = Ok(response);
        None
    }

    fn clone_request(&mut self, req: &Request<RoutedBody<B>>) -> Option<Request<RoutedBody<B>>> {
        let bytes = req.body().as_bytes()?.clone();
        req.extensions().get::<RouteContext>()?;
        let mut clone = Request::new(RoutedBody::buffered(bytes));
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}
