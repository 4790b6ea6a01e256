//! Continuing a stream that broke after its head on the next model.
//!
//! A retry is decided on the response head: once a stream's head has
//! gone to the client, a failure can no longer be retried as a whole. What
//! can still be done is to ask another model of the tier to *continue* the
//! answer: the inner service that saw the stream break takes the request's
//! [`Continuation`], which chooses and admits the next model with the same
//! rule as a retry (weighted, the broken model and open breakers left out)
//! and renders the client's rewritten body for it. The caller appends what
//! was already said (for chat completions, a final assistant message),
//! sends it, and reports the continuation's head through the
//! [`ContinuationAttempt`], so that its model's breaker hears of it as of
//! any attempt.
//!
//! A request has a continuation only on its first attempt, when its body
//! was buffered: a request whose first attempt failed before its head
//! spent its one retry already, and gRPC requests are never replayed.
//! The proxy uses it for streamed chat completions; an app's inner service
//! may use it or ignore it.
//!
//! # Example
//!
//! ```
//! use sentinel_layer::Continuation;
//!
//! fn on_broken_stream(extensions: &http::Extensions, said: &str) -> Option<bytes::Bytes> {
//!     let attempt = Continuation::of(extensions)?.next()?;
//!     // The client's body, rendered for the next model; append `said` to it
//!     // as the final assistant message, send it, then report the head with
//!     // `attempt.answered(status, &headers)`.
//!     let _ = said;
//!     Some(attempt.body().clone())
//! }
//! # let _ = on_broken_stream;
//! ```

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::breaker::AttemptReport;
use crate::breaker::record::Record;
use crate::breaker::state::Outcome;
use crate::decision::{RoutingDecision, SelectionReason};
use crate::retry::{Failure, RouteContext, next_decision};
use crate::upstream::UpstreamError;

/// The continuation of a routed request's first attempt: a request
/// extension read with [`Continuation::of`]. See the [module docs](self).
#[derive(Clone)]
pub struct Continuation {
    context: RouteContext,
    decision: RoutingDecision,
}

impl std::fmt::Debug for Continuation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Continuation")
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl Continuation {
    /// The continuation of the request whose extensions these are: `Some`
    /// on a routed request's first attempt (its retry unused) whose body
    /// was buffered.
    pub fn of(extensions: &http::Extensions) -> Option<Continuation> {
        let decision = extensions.get::<RoutingDecision>()?;
        if decision.attempt != 1 {
            return None;
        }
        Some(Continuation {
            context: extensions.get::<RouteContext>()?.clone(),
            decision: decision.clone(),
        })
    }

    /// The attempt whose stream broke.
    pub fn decision(&self) -> &RoutingDecision {
        &self.decision
    }

    /// Chooses and admits the next model of the tier: the weighted rule,
    /// without the model that broke and without models whose breaker (or
    /// provider) is open. `None` when there is none to try.
    pub fn next(self) -> Option<ContinuationAttempt> {
        let Continuation { context, decision } = self;
        let (next, ticket) = Failure::Other.next_model(&context, &decision, Instant::now())?;
        let body = context.template.render(next.model());
        let next = next_decision(&decision, next, SelectionReason::Continuation);
        Some(ContinuationAttempt {
            record: Record::new(
                (next.provider.clone(), next.model.clone()),
                ticket,
                context.selector.breakers.clone(),
                AttemptReport::default(),
            ),
            decision: next,
            body,
        })
    }
}

/// A continuation admitted on its model: the body to send, and where its
/// outcome goes. Dropped without an outcome (the client went away), it
/// counts for nothing and frees the probe slot it may hold.
pub struct ContinuationAttempt {
    decision: RoutingDecision,
    body: Bytes,
    record: Record,
}

impl std::fmt::Debug for ContinuationAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuationAttempt")
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl ContinuationAttempt {
    /// The model that continues (`reason` is
    /// [`SelectionReason::Continuation`]).
    pub fn decision(&self) -> &RoutingDecision {
        &self.decision
    }

    /// The client's rewritten body with `model` set to the continuing model.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The attempt's report, to hand to the body before the head is known:
    /// it counts once [`answered`](Self::answered) armed it.
    pub fn report(&self) -> AttemptReport {
        self.record.report()
    }

    /// The continuation's response head arrived. A 429, 5xx or unavailable
    /// gRPC status counts against the model at once (the returned report
    /// is then inert); anything else waits for the returned report, as any
    /// attempt's does ([`AttemptReport`]): a success when its last clone
    /// goes, unless it was told otherwise.
    pub fn answered(self, status: StatusCode, headers: &HeaderMap) -> AttemptReport {
        let report = self.record.report();
        self.record.finish(Outcome::of_head(status, headers));
        report
    }

    /// The continuation failed before its head: a connection failure counts
    /// against the provider, anything else against the model.
    pub fn failed(self, error: &UpstreamError) {
        self.record.finish(Outcome::of_error(error));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sentinel_core::{RawTierConfig, TierConfig};

    use super::*;
    use crate::breaker::state::{BreakerSettings, Breakers};
    use crate::request;
    use crate::rng::Randomness;
    use crate::select::Selector;

    fn setup(models: &[&str]) -> (Arc<Breakers>, http::Extensions) {
        let list: Vec<_> = models
            .iter()
            .map(|m| serde_json::json!({ "provider": "p", "model": m, "relative_cost": 1 }))
            .collect();
        let raw: RawTierConfig = serde_json::from_value(
            serde_json::json!({ "tiers": { "simple": { "models": list } } }),
        )
        .unwrap();
        let config = Arc::new(TierConfig::validate(raw).unwrap());
        let breakers = Arc::new(Breakers::new(
            BreakerSettings {
                threshold: 1,
                schedule: sentinel_core::BackoffSchedule::default(),
            },
            None,
        ));
        let selector = Arc::new(Selector::new(breakers.clone(), Randomness::seeded(7)));
        let parsed =
            request::parse_body(br#"{"tier":"simple","stream":true,"messages":[]}"#).unwrap();
        let mut extensions = http::Extensions::new();
        extensions.insert(RouteContext {
            config,
            template: parsed.template(),
            selector,
        });
        extensions.insert(RoutingDecision {
            requested_tier: sentinel_core::Tier::Simple,
            tier: sentinel_core::Tier::Simple,
            provider: "p".into(),
            model: models[0].into(),
            attempt: 1,
            reason: SelectionReason::Weighted,
            session: None,
            stream: true,
        });
        (breakers, extensions)
    }

    #[test]
    fn continues_on_another_model_with_the_body_rendered_for_it() {
        let (_, extensions) = setup(&["a", "b"]);
        let attempt = Continuation::of(&extensions).unwrap().next().unwrap();
        assert_eq!(&*attempt.decision().model, "b");
        assert_eq!(attempt.decision().attempt, 2);
        assert_eq!(attempt.decision().reason, SelectionReason::Continuation);
        let body: serde_json::Value = serde_json::from_slice(attempt.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "stream": true, "messages": [], "model": "b" })
        );
    }

    #[test]
    fn none_after_a_retry_or_without_another_model() {
        let (_, extensions) = setup(&["a"]);
        assert!(Continuation::of(&extensions).unwrap().next().is_none());
        let (_, mut extensions) = setup(&["a", "b"]);
        let mut retried = extensions.get::<RoutingDecision>().unwrap().clone();
        retried.attempt = 2;
        extensions.insert(retried);
        assert!(Continuation::of(&extensions).is_none());
        assert!(Continuation::of(&http::Extensions::new()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_continuations_outcome_reaches_its_breaker() {
        let now = Instant::now;
        let (p, b): (Arc<str>, Arc<str>) = ("p".into(), "b".into());
        // A 503 opens the continuing model's breaker (threshold 1).
        let (breakers, extensions) = setup(&["a", "b"]);
        let attempt = Continuation::of(&extensions).unwrap().next().unwrap();
        drop(attempt.answered(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
        assert!(breakers.admit(&p, &b, now()).is_err());
        // A failure before the head too.
        let (breakers, extensions) = setup(&["a", "b"]);
        let attempt = Continuation::of(&extensions).unwrap().next().unwrap();
        attempt.failed(&UpstreamError::timeout("slow"));
        assert!(breakers.admit(&p, &b, now()).is_err());
        // A 2xx waits for its report: failed after the head, it counts.
        let (breakers, extensions) = setup(&["a", "b"]);
        let attempt = Continuation::of(&extensions).unwrap().next().unwrap();
        let report = attempt.answered(StatusCode::OK, &HeaderMap::new());
        assert!(breakers.admit(&p, &b, now()).is_ok());
        report.failed();
        assert!(breakers.admit(&p, &b, now()).is_err());
        // A refusal (4xx) and a dropped attempt count for nothing bad.
        let (breakers, extensions) = setup(&["a", "b"]);
        let attempt = Continuation::of(&extensions).unwrap().next().unwrap();
        drop(attempt.answered(StatusCode::BAD_REQUEST, &HeaderMap::new()));
        drop(Continuation::of(&extensions).unwrap().next().unwrap());
        assert!(breakers.admit(&p, &b, now()).is_ok());
    }
}
