//! Errors as gRPC statuses, for `application/grpc` requests.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::{ErrorCode, SentinelError};

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status code for a Sentinel error code.
pub(crate) fn status_code(code: ErrorCode) -> u16 {
    match code {
        // INVALID_ARGUMENT
        ErrorCode::InvalidJson
        | ErrorCode::InvalidTier
        | ErrorCode::ConflictingTier
        | ErrorCode::ModelNotAllowed
        | ErrorCode::InvalidSession
        | ErrorCode::UnsupportedMediaType => 3,
        // UNAUTHENTICATED
        ErrorCode::InvalidApiKey => 16,
        // UNIMPLEMENTED
        ErrorCode::NotFound | ErrorCode::MethodNotAllowed | ErrorCode::UnsupportedRoute => 12,
        // RESOURCE_EXHAUSTED
        ErrorCode::BodyTooLarge | ErrorCode::Overloaded | ErrorCode::RateLimited => 8,
        // DEADLINE_EXCEEDED
        ErrorCode::UpstreamTimeout | ErrorCode::RequestTimeout => 4,
        // UNAVAILABLE
        _ => 14,
    }
}

/// A trailers-only gRPC response carrying the error as `grpc-status` and
/// `grpc-message`.
pub(crate) fn error_response(error: &SentinelError) -> Response<Full<Bytes>> {
    ::metrics::counter!(crate::metrics::ERRORS, "code" => error.code().as_str()).increment(1);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status_code(error.code())));
    let message = percent_encode(&format!("{}: {}", error.code(), error.message()));
    if let Ok(value) = HeaderValue::try_from(message) {
        headers.insert("grpc-message", value);
    }
    response
}

/// Percent-encodes as the gRPC spec asks for `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_trailers_only_statuses() {
        let err = SentinelError::new(ErrorCode::InvalidTier, "unknown tier `é`");
        let response = error_response(&err);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "3");
        assert_eq!(
            response.headers()["grpc-message"],
            "invalid_tier: unknown tier `%C3%A9`"
        );
        let err = SentinelError::new(ErrorCode::AllModelsBackingOff, "x");
        assert_eq!(error_response(&err).headers()["grpc-status"], "14");
    }
}
