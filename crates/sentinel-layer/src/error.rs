//! The errors Sentinel answers itself, in the OpenAI error envelope.
//!
//! Every response the layer makes instead of the inner service is
//! `{"error":{"message":...,"type":...,"code":...}}` with the status of
//! design's table; [`SentinelError::into_response`] builds it, with a
//! `Retry-After` header where the code carries one.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_layer::error::{ErrorCode, SentinelError};
//!
//! let err = SentinelError::new(ErrorCode::AllModelsBackingOff, "every model of tier `simple` is backing off")
//!     .retry_after(Duration::from_millis(2_500));
//! let response = err.into_response();
//! assert_eq!(response.status(), 503);
//! assert_eq!(response.headers()["retry-after"], "3");
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The error codes Sentinel answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not a JSON object.
    InvalidJson,
    /// 400: the tier name is unknown.
    InvalidTier,
    /// 400: body `tier`, `X-Sentinel-Tier` and the `model` alias disagree.
    ConflictingTier,
    /// 400: `model` names something other than a tier.
    ModelNotAllowed,
    /// 400: a bad `X-Sentinel-Session`.
    InvalidSession,
    /// 400: the chosen model's provider does not serve this route (the
    /// Responses API on an Anthropic model).
    UnsupportedRoute,
    /// 401: the inbound key is missing or wrong.
    InvalidApiKey,
    /// 404: a `/v1/` path Sentinel does not serve.
    NotFound,
    /// 405: a routed path with a method other than `POST`.
    MethodNotAllowed,
    /// 408: the client did not send its body in time.
    RequestTimeout,
    /// 413: the body is over the limit.
    BodyTooLarge,
    /// 415: a routed request whose content type is not JSON.
    UnsupportedMediaType,
    /// 429: the last attempt got a 429 (with the provider's `Retry-After`).
    RateLimited,
    /// 502: a retryable failure on the last attempt.
    UpstreamFailed,
    /// 503: no tier config can be had.
    TierConfigUnavailable,
    /// 503: the tier is missing or empty in the config.
    TierUnavailable,
    /// 503: every model of the tier is backing off.
    AllModelsBackingOff,
    /// 503: over the in-flight request cap.
    Overloaded,
    /// 504: the last attempt timed out.
    UpstreamTimeout,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidTier
            | ErrorCode::ConflictingTier
            | ErrorCode::ModelNotAllowed
            | ErrorCode::InvalidSession
            | ErrorCode::UnsupportedRoute => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::TierConfigUnavailable
            | ErrorCode::TierUnavailable
            | ErrorCode::AllModelsBackingOff
            | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `code` string of the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidTier => "invalid_tier",
            ErrorCode::ConflictingTier => "conflicting_tier",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::InvalidSession => "invalid_session",
            ErrorCode::UnsupportedRoute => "unsupported_route",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::TierConfigUnavailable => "tier_config_unavailable",
            ErrorCode::TierUnavailable => "tier_unavailable",
            ErrorCode::AllModelsBackingOff => "all_models_backing_off",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The `type` string of the envelope, as OpenAI groups its errors.
    pub fn error_type(self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API a stream belongs to: it decides the shape of an SSE error event
/// ([`SentinelError::sse_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamApi {
    /// Chat completions: `data: {"error":{...}}`.
    Chat,
    /// The Responses API: `event: error` with its `error` event shape.
    Responses,
}

/// An error Sentinel answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelError {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

impl SentinelError {
    /// An error with `code` and a message for the client (no secrets).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SentinelError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` (sent in whole seconds, rounded up, at least 1).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` wait, when there is one.
    pub fn retry_after_value(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The JSON envelope.
    pub fn body(&self) -> Bytes {
        let envelope = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.code.error_type(),
                "param": null,
                "code": self.code.as_str(),
            }
        });
        Bytes::from(envelope.to_string())
    }

    /// The error as the SSE event that ends a stream whose head already
    /// went out: `data: {"error":{...}}` (the envelope) for chat
    /// completions; `event: error` with the Responses API's error shape
    /// (`type`, `code`, `message`, `param`, `sequence_number`: `sequence`,
    /// or 0) for `/v1/responses`.
    pub fn sse_event(&self, api: StreamApi, sequence: Option<u64>) -> Bytes {
        let text = match api {
            StreamApi::Chat => {
                let envelope = self.body();
                let mut event = Vec::with_capacity(envelope.len() + 8);
                event.extend_from_slice(b"data: ");
                event.extend_from_slice(&envelope);
                event.extend_from_slice(b"\n\n");
                return Bytes::from(event);
            }
            StreamApi::Responses => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": self.code.as_str(),
                    "message": self.message,
                    "param": null,
                    "sequence_number": sequence.unwrap_or(0),
                });
                format!("event: error\ndata: {event}\n\n")
            }
        };
        Bytes::from(text)
    }

    /// The response: status, JSON envelope, `Retry-After` when set.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        ::metrics::counter!(crate::metrics::ERRORS, "code" => self.code.as_str()).increment(1);
        let mut response = Response::new(Full::new(self.body()));
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl fmt::Display for SentinelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for SentinelError {}

/// Settings that break a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(String);

impl InvalidConfig {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        InvalidConfig(message.into())
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid tier-routing settings: {}", self.0)
    }
}

impl std::error::Error for InvalidConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn stream_error_events_take_each_apis_shape() {
        let err = SentinelError::new(ErrorCode::UpstreamTimeout, "stalled");
        let chat = err.sse_event(StreamApi::Chat, None);
        let payload = chat
            .strip_prefix(b"data: ")
            .and_then(|p| p.strip_suffix(b"\n\n"))
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(json["error"]["code"], "upstream_timeout");
        assert_eq!(json["error"]["type"], "server_error");
        assert_eq!(json["error"]["message"], "stalled");
        let responses = err.sse_event(StreamApi::Responses, Some(7));
        let text = std::str::from_utf8(&responses).unwrap();
        let payload = text
            .strip_prefix("event: error\ndata: ")
            .and_then(|p| p.strip_suffix("\n\n"))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "upstream_timeout");
        assert_eq!(json["sequence_number"], 7);
    }

    #[tokio::test]
    async fn envelope_has_message_type_and_code() {
        let response =
            SentinelError::new(ErrorCode::InvalidTier, "unknown tier `x`").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "invalid_tier");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["message"], "unknown tier `x`");
    }

    #[test]
    fn statuses_follow_the_contract() {
        use ErrorCode::*;
        let table = [
            (InvalidJson, 400),
            (InvalidTier, 400),
            (ConflictingTier, 400),
            (ModelNotAllowed, 400),
            (InvalidSession, 400),
            (InvalidApiKey, 401),
            (NotFound, 404),
            (MethodNotAllowed, 405),
            (RequestTimeout, 408),
            (BodyTooLarge, 413),
            (UnsupportedMediaType, 415),
            (RateLimited, 429),
            (UpstreamFailed, 502),
            (TierConfigUnavailable, 503),
            (TierUnavailable, 503),
            (AllModelsBackingOff, 503),
            (Overloaded, 503),
            (UpstreamTimeout, 504),
        ];
        for (code, status) in table {
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
