//! The circuit-breaking backoff stage.
//!
//! [`Backoff`] sits between the retry stage and the inner service. For each
//! attempt it checks the chosen model's breaker (a model that opened since
//! it was chosen is refused without calling the inner service, and the
//! retry stage moves on) and records the outcome: a success closes the
//! model's and the provider's breakers; a timeout, 429 or 5xx counts against
//! the model; a connection failure against the provider.
//!
//! Open models are excluded when the layer chooses a model, never through
//! `poll_ready`, so one open model never stalls the others.

pub(crate) mod service;
pub(crate) mod shared;
pub(crate) mod state;

pub use service::{Backoff, BackoffFuture};
