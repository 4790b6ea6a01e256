//! What an answer says of the model that gave it: one rule per question,
//! used by every stage (retry, breakers, health checks, background probes,
//! metrics), as tower-http's `classify` is.
//!
//! | question | rule | used by |
//! | --- | --- | --- |
//! | did the model fail? ([`is_failure`]) | 429 or any 5xx; a trailers-only gRPC answer with `grpc-status` 14, 8 or 4 ([`is_grpc_unavailable`]) | retry, breakers, continuation |
//! | for how long? ([`retry_after`]) | the provider's `Retry-After`, delta-seconds or an HTTP-date, capped at a day | retry (the client's 429), breakers (a floor on the wait) |
//! | no answer at all ([`UpstreamErrorKind`]) | a connection failure is the provider's; a timeout or anything else the model's | breakers |
//! | what does the client get when the last attempt failed? ([`error_code`]) | timeout: 504 `upstream_timeout`; a 429: 429 `rate_limited`; else 502 `upstream_failed` (no model to try at all is 503 `all_models_backing_off`, from the choice) | retry, routing, the proxy |
//! | what does a probe say? ([`Probe::of`]) | 2xx: up; no answer, 429, 502, 503, 504: down; any other status: inconclusive | health checks, background model probes |
//! | which status class? ([`status_class`]) | `1xx` ... `5xx` | metrics |
//!
//! A 4xx other than 429 is the caller's, not the model's: it passes
//! through and counts as an answer. A `2xx` head is an answer so far: a
//! stream that breaks after it is reported through
//! [`AttemptReport`](crate::AttemptReport).
//!
//! # Example
//!
//! ```
//! use http::StatusCode;
//! use sentinel_layer::classify::{self, Probe};
//!
//! assert!(classify::is_failure(StatusCode::TOO_MANY_REQUESTS, &http::HeaderMap::new()));
//! assert!(!classify::is_failure(StatusCode::BAD_REQUEST, &http::HeaderMap::new()));
//! assert_eq!(Probe::of(Ok(StatusCode::INTERNAL_SERVER_ERROR)), Probe::Inconclusive);
//! assert_eq!(classify::status_class(StatusCode::CREATED), "2xx");
//! ```

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

use crate::error::ErrorCode;
use crate::upstream::UpstreamErrorKind;

/// Whether a response head says the model failed: a 429, any 5xx, or a
/// trailers-only gRPC answer that says it could not serve
/// ([`is_grpc_unavailable`]).
pub fn is_failure(status: StatusCode, headers: &HeaderMap) -> bool {
    is_failure_status(status) || is_grpc_unavailable(headers)
}

/// Whether a status is a failure of the model: 429 or any 5xx.
pub fn is_failure_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Whether a trailers-only gRPC response says the model could not serve:
/// `grpc-status` UNAVAILABLE (14), RESOURCE_EXHAUSTED (8) or
/// DEADLINE_EXCEEDED (4). (A status in the trailers of a streamed body is
/// not seen: the outcome is decided on the response head.)
pub fn is_grpc_unavailable(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(b"14" | b"8" | b"4")
    )
}

/// The upstream's `Retry-After`, in delta-seconds or as an HTTP-date (then
/// the time left until it, zero when it has passed), when it sent one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    // A day at most: a provider's word is a hint, not a reason to park a
    // model for years (or to overflow a clock).
    const CAP: Duration = Duration::from_secs(86_400);
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(CAP),
    )
}

/// The error code of a request whose last attempt ended in `kind`, or in
/// a 429 (`rate_limited`).
pub fn error_code(kind: UpstreamErrorKind, rate_limited: bool) -> ErrorCode {
    match kind {
        _ if rate_limited => ErrorCode::RateLimited,
        UpstreamErrorKind::Timeout => ErrorCode::UpstreamTimeout,
        _ => ErrorCode::UpstreamFailed,
    }
}

/// The `status` label of the metrics: `1xx`, `2xx`, `3xx`, `4xx`, `5xx`.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// What one probe (a provider's health check, an open model's background
/// probe) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// 2xx: up.
    Up,
    /// No answer in time, no connection, 429, 502, 503 or 504: it (or the
    /// gateway in front of it) says it cannot serve.
    Down,
    /// Any other status (a 404 or 501 for a path or method it does not
    /// serve, a 401 for a key without that permission, a 400 for a request
    /// shape it refuses, a 500): it answered, so it is reachable, but it is
    /// not shown up either. Changes nothing.
    Inconclusive,
}

impl Probe {
    /// Classifies a probe's answer (`Err`: none, in time or at all).
    pub fn of(answer: Result<StatusCode, ()>) -> Self {
        match answer {
            Ok(status) if status.is_success() => Probe::Up,
            Ok(
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT,
            ) => Probe::Down,
            Ok(_) => Probe::Inconclusive,
            Err(()) => Probe::Down,
        }
    }

    /// The `result` label of the probe metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Up => "up",
            Probe::Down => "down",
            Probe::Inconclusive => "inconclusive",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_the_head() {
        let none = HeaderMap::new();
        assert!(is_failure(StatusCode::TOO_MANY_REQUESTS, &none));
        assert!(is_failure(StatusCode::BAD_GATEWAY, &none));
        assert!(is_failure(StatusCode::NOT_IMPLEMENTED, &none));
        assert!(!is_failure(StatusCode::BAD_REQUEST, &none));
        assert!(!is_failure(StatusCode::OK, &none));
        let mut headers = HeaderMap::new();
        assert!(!is_grpc_unavailable(&headers));
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(is_grpc_unavailable(&headers));
        assert!(is_failure(StatusCode::OK, &headers));
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert!(
            !is_grpc_unavailable(&headers),
            "INVALID_ARGUMENT is the caller's"
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        headers.insert(header::RETRY_AFTER, date.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&wait),
            "{wait:?}"
        );
        headers.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date passed");
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::from_secs(86_400)),
            "capped at a day"
        );
    }

    #[test]
    fn probes_and_last_attempts_have_one_rule_each() {
        assert_eq!(Probe::of(Ok(StatusCode::NO_CONTENT)), Probe::Up);
        for down in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(down).unwrap();
            assert_eq!(Probe::of(Ok(status)), Probe::Down, "{down}");
        }
        assert_eq!(Probe::of(Err(())), Probe::Down);
        for other in [400, 401, 404, 500, 501] {
            let status = StatusCode::from_u16(other).unwrap();
            assert_eq!(Probe::of(Ok(status)), Probe::Inconclusive, "{other}");
        }
        assert_eq!(
            error_code(UpstreamErrorKind::Timeout, false),
            ErrorCode::UpstreamTimeout
        );
        assert_eq!(
            error_code(UpstreamErrorKind::Other, true),
            ErrorCode::RateLimited
        );
        assert_eq!(
            error_code(UpstreamErrorKind::Connect, false),
            ErrorCode::UpstreamFailed
        );
        assert_eq!(status_class(StatusCode::from_u16(599).unwrap()), "5xx");
    }
}
