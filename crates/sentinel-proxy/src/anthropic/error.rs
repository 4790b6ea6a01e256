//! Anthropic error answer → OpenAI error envelope.

use serde_json::{Value, json};

/// An Anthropic error answer (status + body bytes, which may not be JSON at
/// all) → the OpenAI error envelope
/// `{"error":{"message","type","code","param":null}}`.
///
/// The Anthropic error type is the body's `error.type`; when the body is
/// not Anthropic's error JSON, it is the type Anthropic's documentation
/// gives the status (400 `invalid_request_error`, 401
/// `authentication_error`, 403 `permission_error`, 404 `not_found_error`,
/// 413 `request_too_large`, 429 `rate_limit_error`, 529
/// `overloaded_error`, other 4xx `invalid_request_error`, anything else
/// `api_error`). It maps to OpenAI's `type` and `code`:
///
/// | Anthropic | `type` | `code` |
/// | --- | --- | --- |
/// | `invalid_request_error` | `invalid_request_error` | `invalid_request_error` |
/// | `authentication_error` | `authentication_error` | `authentication_error` |
/// | `permission_error` | `permission_error` | `permission_error` |
/// | `not_found_error` | `not_found_error` | `not_found_error` |
/// | `request_too_large` | `invalid_request_error` | `request_too_large` |
/// | `rate_limit_error` | `rate_limit_error` | `rate_limit_exceeded` |
/// | `overloaded_error` | `server_error` | `overloaded` |
/// | `api_error` | `server_error` | `api_error` |
/// | anything else | by status (401, 403, 404, 429 as above, other 4xx `invalid_request_error`, else `server_error`) | the Anthropic type |
///
/// A message that says the prompt is too long (`prompt is too long`, any
/// case) gives `invalid_request_error` / `context_length_exceeded`, which
/// Sentinel's context-length retry recognises. The message is the
/// provider's `error.message`, or, when there is none, a generic one that
/// names only the status: the raw body (possibly an HTML page) is never
/// passed on.
pub(crate) fn error_envelope(status: u16, body: &[u8]) -> Value {
    let error = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|body| body.get("error").cloned());
    let provider_type = error
        .as_ref()
        .and_then(|error| error.get("type"))
        .and_then(Value::as_str)
        .filter(|kind| !kind.is_empty());
    let provider_message = error
        .as_ref()
        .and_then(|error| error.get("message"))
        .and_then(Value::as_str)
        .filter(|message| !message.trim().is_empty());

    let kind = provider_type.unwrap_or_else(|| type_of_status(status));
    let message = provider_message
        .map(str::to_owned)
        .unwrap_or_else(|| format!("The provider answered with HTTP status {status}."));
    let (openai_type, code) = if message.to_ascii_lowercase().contains("prompt is too long") {
        ("invalid_request_error", "context_length_exceeded")
    } else {
        match kind {
            "invalid_request_error" => ("invalid_request_error", "invalid_request_error"),
            "authentication_error" => ("authentication_error", "authentication_error"),
            "permission_error" => ("permission_error", "permission_error"),
            "not_found_error" => ("not_found_error", "not_found_error"),
            "request_too_large" => ("invalid_request_error", "request_too_large"),
            "rate_limit_error" => ("rate_limit_error", "rate_limit_exceeded"),
            "overloaded_error" => ("server_error", "overloaded"),
            "api_error" => ("server_error", "api_error"),
            other => (openai_type_of_status(status), other),
        }
    };
    json!({
        "error": {
            "message": message,
            "type": openai_type,
            "code": code,
            "param": null,
        }
    })
}

/// The Anthropic error type its documentation gives an HTTP status.
fn type_of_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        // 400 and the other 4xx.
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The OpenAI error type for a status, for Anthropic types this module does
/// not know.
fn openai_type_of_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::{Value, json};

    use crate::anthropic::error_envelope;

    fn anthropic_error(kind: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": "error",
            "error": { "type": kind, "message": message },
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }))
        .unwrap()
    }

    fn envelope(message: &str, kind: &str, code: &str) -> Value {
        json!({ "error": { "message": message, "type": kind, "code": code, "param": null } })
    }

    /// Each type of Anthropic's errors reference, with its status.
    #[test]
    fn anthropic_error_types_map_to_openai_types() {
        let cases = [
            (
                400,
                "invalid_request_error",
                "max_tokens: Field required",
                "invalid_request_error",
                "invalid_request_error",
            ),
            (
                401,
                "authentication_error",
                "invalid x-api-key",
                "authentication_error",
                "authentication_error",
            ),
            (
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
                "permission_error",
                "permission_error",
            ),
            (
                404,
                "not_found_error",
                "The requested resource could not be found.",
                "not_found_error",
                "not_found_error",
            ),
            (
                413,
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
                "invalid_request_error",
                "request_too_large",
            ),
            (
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            (
                500,
                "api_error",
                "Internal server error",
                "server_error",
                "api_error",
            ),
            (
                529,
                "overloaded_error",
                "Overloaded",
                "server_error",
                "overloaded",
            ),
            (
                402,
                "billing_error",
                "Your credit balance is too low.",
                "invalid_request_error",
                "billing_error",
            ),
            (
                504,
                "timeout_error",
                "Request timed out",
                "server_error",
                "timeout_error",
            ),
        ];
        for (status, kind, message, openai_type, code) in cases {
            assert_eq!(
                error_envelope(status, &anthropic_error(kind, message)),
                envelope(message, openai_type, code),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_prompt_too_long_is_a_context_length_error() {
        for message in [
            "prompt is too long: 208310 tokens > 200000 maximum",
            "Prompt is too long",
        ] {
            assert_eq!(
                error_envelope(400, &anthropic_error("invalid_request_error", message)),
                envelope(message, "invalid_request_error", "context_length_exceeded"),
            );
        }
    }

    #[test]
    fn a_body_that_is_not_anthropics_error_gets_a_generic_message() {
        let html = b"<html><head><title>502 Bad Gateway</title></head><body>secret</body></html>";
        let cases: [(u16, &[u8], &str, &str); 8] = [
            (502, html, "server_error", "api_error"),
            (529, b"", "server_error", "overloaded"),
            (
                429,
                b"Too Many Requests",
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            (401, b"{}", "authentication_error", "authentication_error"),
            (
                413,
                b"<html>413 Request Entity Too Large</html>",
                "invalid_request_error",
                "request_too_large",
            ),
            (
                404,
                br#"{"error":"not here"}"#,
                "not_found_error",
                "not_found_error",
            ),
            (
                418,
                b"\xff\xfe not utf-8",
                "invalid_request_error",
                "invalid_request_error",
            ),
            (
                500,
                br#"{"type":"error","error":{"type":"api_error","message":""}}"#,
                "server_error",
                "api_error",
            ),
        ];
        for (status, body, openai_type, code) in cases {
            assert_eq!(
                error_envelope(status, body),
                envelope(
                    &format!("The provider answered with HTTP status {status}."),
                    openai_type,
                    code
                ),
                "{status}"
            );
        }
    }
}
