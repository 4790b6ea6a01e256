//! Sentinel's header names, defined once: the layer, the proxy and the
//! tests use these constants, never the literals.
//!
//! | header | direction | meaning |
//! | --- | --- | --- |
//! | [`MODEL`] `x-sentinel-model` | response | the upstream model that produced the response |
//! | [`TIER`] `x-sentinel-tier` | request and response | the tier asked for; the effective tier (after a session upgrade) |
//! | [`SESSION`] `x-sentinel-session` | request | the session id: its requests stay on one model (upgrades allowed) |
//! | [`REQUEST_ID`] `x-request-id` | request and response | the request's id (the proxy keeps a valid client id or makes one) |
//!
//! And one name that travels as an SSE comment, not a header:
//! [`CONTINUED_MODEL`] (`: x-sentinel-continued-model: MODEL`, before the
//! end of a stream continued on another model).
//!
//! # Example
//!
//! ```
//! use sentinel_layer::headers;
//!
//! let mut request = http::Request::new(());
//! request
//!     .headers_mut()
//!     .insert(headers::TIER_NAME, http::HeaderValue::from_static("complex"));
//! assert_eq!(request.headers()[headers::TIER], "complex");
//! ```

use http::HeaderName;

/// The response header naming the model that produced the response.
pub const MODEL: &str = "x-sentinel-model";
/// The tier: asked for on a request, the effective one on a response.
pub const TIER: &str = "x-sentinel-tier";
/// The request header naming the session.
pub const SESSION: &str = "x-sentinel-session";
/// The request's id, on the request and on its response.
pub const REQUEST_ID: &str = "x-request-id";

/// [`MODEL`] as a header name.
pub const MODEL_NAME: HeaderName = HeaderName::from_static(MODEL);
/// [`TIER`] as a header name.
pub const TIER_NAME: HeaderName = HeaderName::from_static(TIER);
/// [`SESSION`] as a header name.
pub const SESSION_NAME: HeaderName = HeaderName::from_static(SESSION);
/// [`REQUEST_ID`] as a header name.
pub const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);

/// The SSE comment naming the model that continued a broken stream.
pub const CONTINUED_MODEL: &str = "x-sentinel-continued-model";
