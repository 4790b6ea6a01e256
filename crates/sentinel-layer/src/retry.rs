//! The retry rule: once more, on the next model of the tier.
//!
//! After a connection error, a timeout, a 429 or any 5xx (the
//! [`classify`](crate::classify) rule) the layer chooses another model of
//! the same tier that has not been tried (the same weighted rule, open
//! breakers excluded), renders the buffered body for it and tries once
//! more. Other 4xx pass through. The decision is made on the response
//! head, so a stream that has started is never retried; a request whose
//! body was not buffered (gRPC) is never retried. When the last attempt
//! fails, the layer answers in Sentinel's envelope: 429 `rate_limited` with the provider's
//! `Retry-After` after a 429, 504 `upstream_timeout` after a timeout, else
//! 502 `upstream_failed`.
//!
//! The rule is part of [`TierRoutingLayer`](crate::TierRoutingLayer)'s one
//! routing future; there is nothing to configure. What a retry needs is
//! kept only when the tier has another model to retry on: a copy of the
//! request head (method, URI, headers, the extensions the caller set; the
//! header values are shared, not copied). The retry's body is rendered
//! from the body template only when the retry happens, and the layer's
//! own extensions are made again for it. An inner service that fails to
//! get ready is not retried: it was not called, and tower's contract is
//! that such a service is discarded. What the inner service sees on a
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

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use sentinel_core::{ModelEntry, TierConfig};
use tokio::time::Instant;

use crate::breaker::state::Ticket;
use crate::classify::{error_code, is_failure_status, retry_after};
use crate::decision::{RoutingDecision, SelectionReason};
use crate::error::SentinelError;
use crate::metrics as m;
use crate::request::BodyTemplate;
use crate::select::Selector;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// Attempts per request: the first and one retry.
pub(crate) const MAX_ATTEMPTS: u32 = 2;

/// A response extension an inner service sets on a `400` whose error code
/// is `context_length_exceeded`: the prompt does not fit the model. The
/// layer then tries once more on the model of the tier with the largest
/// context window (or the next model when the tier config gives none); it
/// does not count against the model's breaker. The proxy sets it from the
/// provider's error body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextLengthExceeded;

/// What a retry or a continuation needs of a routed request (a request
/// extension of every attempt whose body was buffered).
#[derive(Clone)]
pub(crate) struct RouteContext {
    pub(crate) config: Arc<TierConfig>,
    pub(crate) template: BodyTemplate,
    /// Chooses the next model ([`crate::Continuation`]).
    pub(crate) selector: Arc<Selector>,
}

/// Why an attempt did not give the client its answer.
pub(crate) enum Failure {
    /// The prompt does not fit the model: try a larger one, else pass the
    /// provider's answer on.
    ContextLength,
    Timeout,
    /// A 429, with the provider's `Retry-After`.
    RateLimited(Option<Duration>),
    Other,
}

impl Failure {
    /// The failure an attempt ended in; `None` when its answer stands.
    pub(crate) fn of<R>(result: &Result<Response<R>, UpstreamError>) -> Option<Failure> {
        Some(match result {
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
            Err(e) if e.kind() == UpstreamErrorKind::Timeout => Failure::Timeout,
            Err(_) => Failure::Other,
        })
    }

    /// The model to retry on after this failure, chosen and admitted: the
    /// largest context window after [`Failure::ContextLength`], else the
    /// weighted rule; never the model that failed.
    pub(crate) fn next_model<'c>(
        &self,
        context: &'c RouteContext,
        failed: &RoutingDecision,
        now: Instant,
    ) -> Option<(&'c ModelEntry, Ticket)> {
        let models = context.config.tier(failed.tier);
        let tried = |m: &ModelEntry| m.is(&failed.provider, &failed.model);
        let next = match self {
            Failure::ContextLength => {
                let window = models
                    .find(&failed.provider, &failed.model)
                    .and_then(|m| m.context_window());
                context
                    .selector
                    .choose_largest_window(models, tried, window, now)
            }
            _ => context.selector.choose(models, tried, now),
        };
        next.ok()
    }

    /// What the client gets when no attempt is left; `None` when the
    /// provider's own answer stands (a prompt too long for every model).
    pub(crate) fn final_answer(self, last: &RoutingDecision) -> Option<SentinelError> {
        let model = &last.model;
        let (kind, wait, what) = match self {
            Failure::ContextLength => return None,
            Failure::Timeout => (UpstreamErrorKind::Timeout, None, "timed out"),
            Failure::RateLimited(wait) => (UpstreamErrorKind::Other, wait, "is rate limited"),
            Failure::Other => (UpstreamErrorKind::Other, None, "failed"),
        };
        let rate_limited = matches!(self, Failure::RateLimited(_));
        let error = SentinelError::new(
            error_code(kind, rate_limited),
            format!("the upstream model `{model}` {what}"),
        );
        Some(match wait {
            Some(wait) => error.retry_after(wait),
            None => error,
        })
    }
}

/// The decision of the attempt after `failed` on `next`, for `reason`
/// ([`SelectionReason::Retry`] or [`SelectionReason::Continuation`]),
/// counted in the selection metric.
pub(crate) fn next_decision(
    failed: &RoutingDecision,
    next: &ModelEntry,
    reason: SelectionReason,
) -> RoutingDecision {
    let decision = RoutingDecision {
        provider: next.provider_arc().clone(),
        model: next.model_arc().clone(),
        attempt: failed.attempt + 1,
        reason,
        ..failed.clone()
    };
    if reason == SelectionReason::Retry {
        ::metrics::counter!(m::RETRIES, "tier" => decision.tier.as_str()).increment(1);
    }
    ::metrics::counter!(m::SELECTIONS,
        "tier" => decision.tier.as_str(),
        "model" => decision.model.clone(),
        "provider" => decision.provider.clone(),
        "reason" => reason.as_str())
    .increment(1);
    let (tier, from, to) = (decision.tier, &failed.model, &decision.model);
    if reason == SelectionReason::Retry {
        tracing::info!(%tier, %from, %to, "retrying on the next model");
    } else {
        tracing::info!(%tier, %from, %to, "continuing a broken stream on the next model");
    }
    decision
}
