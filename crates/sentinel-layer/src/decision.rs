//! The routing decision, as the inner service and the caller see it.

use std::sync::Arc;

use sentinel_core::Tier;

/// Why a model was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectionReason {
    /// A weighted choice in the tier (no session, a new session, or a re-pin).
    Weighted,
    /// The session's pinned model.
    Sticky,
    /// A weighted choice in a higher tier than the session's.
    Upgrade,
    /// The next model of the tier after a retryable failure.
    Retry,
    /// The next model of the tier, asked to continue a stream that broke
    /// after its head (see [`Continuation`](crate::Continuation)).
    Continuation,
}

impl SelectionReason {
    /// The `reason` label of the selection metric.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectionReason::Weighted => "weighted",
            SelectionReason::Sticky => "sticky",
            SelectionReason::Upgrade => "upgrade",
            SelectionReason::Retry => "retry",
            SelectionReason::Continuation => "continuation",
        }
    }
}

/// Which model serves an attempt. The layer puts it in the request's
/// extensions for the inner service, and the model that produced the
/// response in the response's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingDecision {
    /// The tier the client asked for (or the default).
    pub requested_tier: Tier,
    /// The tier the request runs in, after any session upgrade.
    pub tier: Tier,
    /// The provider serving the model.
    pub provider: Arc<str>,
    /// The upstream model.
    pub model: Arc<str>,
    /// 1 for the first attempt, 2 for the retry (or the continuation).
    pub attempt: u32,
    /// Why the model was chosen.
    pub reason: SelectionReason,
    /// The session, when the request named one and the store answered.
    pub session: Option<Arc<str>>,
    /// Whether the client asked for a stream (`"stream": true`).
    pub stream: bool,
}
