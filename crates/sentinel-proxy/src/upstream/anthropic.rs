//! The upstream path of an Anthropic provider: the chat completion the
//! layer rendered is translated into a Messages API request, and what
//! comes back into a chat completion (or a stream of chunks), before the
//! rest of the upstream path (usage, SSE framing, first token,
//! continuation) reads it as it reads any OpenAI answer. The translation
//! itself is [`crate::anthropic`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sentinel_layer::{ContextLengthExceeded, UpstreamError};
use tokio::time::Instant;

use crate::anthropic::{self, ChunkStream, MessagesRequest, Refused, StreamFailure};

/// The largest non-streaming answer read for translation.
pub(super) const ANSWER_CAP: usize = 16 << 20;
/// The largest error answer read.
const ERROR_CAP: usize = 64 << 10;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Translates the rendered chat completion `bytes`; `Err` is a request
/// the client must change ([`refused`] answers it), never an upstream
/// failure.
pub(super) fn request(bytes: &[u8]) -> Result<(Bytes, MessagesRequest), Refused> {
    let invalid = |message: &str| Refused {
        message: message.to_owned(),
        param: None,
    };
    let chat: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| invalid("the request body is not JSON"))?;
    let mut translated = anthropic::request(&chat)?;
    trim_prefill(&mut translated.body);
    let body = serde_json::to_vec(&translated.body)
        .map_err(|_| invalid("the request cannot be translated"))?;
    Ok((Bytes::from(body), translated))
}

/// Anthropic refuses a final assistant turn (a prefill, as a continued
/// stream sends) that ends with whitespace: its last text is trimmed at
/// the end, and a turn left empty is dropped.
fn trim_prefill(body: &mut serde_json::Value) {
    let Some(messages) = body.get_mut("messages").and_then(|m| m.as_array_mut()) else {
        return;
    };
    let Some(last) = messages.last_mut() else {
        return;
    };
    if last["role"] != "assistant" {
        return;
    }
    if let Some(blocks) = last.get_mut("content").and_then(|c| c.as_array_mut()) {
        if let Some(block) = blocks.last_mut()
            && block["type"] == "text"
            && let Some(text) = block["text"].as_str()
        {
            let trimmed = text.trim_end().to_owned();
            if trimmed.is_empty() {
                blocks.pop();
            } else {
                block["text"] = serde_json::Value::String(trimmed);
            }
        }
        if blocks.is_empty() {
            messages.pop();
        }
    } else if let Some(text) = last.get("content").and_then(|c| c.as_str()) {
        let trimmed = text.trim_end().to_owned();
        if trimmed.is_empty() {
            messages.pop();
        } else {
            last["content"] = serde_json::Value::String(trimmed);
        }
    }
}

/// The `400 invalid_request_error` answer to a request that cannot go to
/// Anthropic as it is.
pub(super) fn refused(Refused { message, param }: Refused) -> http::Response<axum::body::Body> {
    let error = serde_json::json!({ "error": {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": param.map(|_| "unsupported_parameter"),
    }});
    let mut response = http::Response::new(axum::body::Body::from(error.to_string()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What Anthropic's answer became.
pub(super) enum Answer {
    /// An error, translated into OpenAI's envelope with the same status:
    /// the response as it goes on.
    Error(http::Response<axum::body::Body>),
    /// A success: its body, translated.
    Body(ProviderBody),
}

/// Reads and translates Anthropic's answer to a request sent with
/// `translated`. `deadline` bounds what is read before the head goes on.
pub(super) async fn answer(
    parts: &mut http::response::Parts,
    body: Incoming,
    translated: &MessagesRequest,
    deadline: Instant,
) -> Result<Answer, UpstreamError> {
    parts.headers.remove(header::CONTENT_LENGTH);
    if !parts.status.is_success() {
        let read = tokio::time::timeout_at(deadline, Limited::new(body, ERROR_CAP).collect()).await;
        // A broken or oversized error body still says its status.
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        let envelope = anthropic::error_envelope(parts.status.as_u16(), &bytes);
        let mut response = http::Response::new(axum::body::Body::from(envelope.to_string()));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers.clone();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if envelope["error"]["code"] == "context_length_exceeded" {
            response.extensions_mut().insert(ContextLengthExceeded);
        }
        return Ok(Answer::Error(response));
    }
    if translated.stream {
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return Ok(Answer::Body(ProviderBody::Translated {
            inner: body,
            chunks: ChunkStream::new(translated.include_usage, now_unix()),
            done: false,
        }));
    }
    let read = tokio::time::timeout_at(deadline, Limited::new(body, ANSWER_CAP).collect()).await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(UpstreamError::other(
                "the provider's answer broke or exceeded 16 MiB",
            ));
        }
        Err(_) => {
            return Err(UpstreamError::timeout(
                "no whole answer within the first-byte timeout",
            ));
        }
    };
    let message: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| UpstreamError::other("the provider's answer is not JSON"))?;
    let completion = anthropic::response(&message, now_unix());
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(Answer::Body(ProviderBody::Whole {
        inner: Full::new(Bytes::from(completion.to_string())),
    }))
}

/// A translated stream broke: what the provider's `error` event or a cut
/// stream means for the rest of the path (the stream is broken).
#[derive(Debug)]
pub(super) struct Broken(String);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Broken {}

pin_project_lite::pin_project! {
    /// A provider's body as the rest of the upstream path reads it: as it
    /// came (OpenAI-compatible), or translated from Anthropic's.
    #[project = ProviderBodyProj]
    pub(super) enum ProviderBody {
        Passed { #[pin] inner: Incoming },
        Whole { #[pin] inner: Full<Bytes> },
        Translated {
            #[pin]
            inner: Incoming,
            chunks: ChunkStream,
            done: bool,
        },
    }
}

impl ProviderBody {
    /// An OpenAI-compatible provider's body, as it came.
    pub(super) fn passed(inner: Incoming) -> Self {
        ProviderBody::Passed { inner }
    }
}

impl Body for ProviderBody {
    type Data = Bytes;
    type Error = sentinel_layer::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ProviderBodyProj::Passed { inner } => inner.poll_frame(cx).map_err(Into::into),
            ProviderBodyProj::Whole { inner } => {
                inner.poll_frame(cx).map_err(|never| match never {})
            }
            ProviderBodyProj::Translated {
                mut inner,
                chunks,
                done,
            } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                let mut consumed = false;
                let translated = match std::task::ready!(inner.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            consumed = !data.is_empty();
                            chunks.feed(&data)
                        }
                        // Trailers: nothing to translate.
                        Err(_) => continue,
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    None => {
                        *done = true;
                        chunks.finish()
                    }
                };
                match translated {
                    // A `ping` (or a block with nothing to say yet): an
                    // empty frame, so the idle timer sees the provider is
                    // alive (the framer passes nothing on for it).
                    Ok(bytes) if bytes.is_empty() && consumed => {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Err(StreamFailure {
                        description,
                        provider_error,
                    }) => {
                        *done = true;
                        tracing::warn!(
                            reason = %description,
                            provider_error,
                            "an Anthropic stream failed"
                        );
                        return Poll::Ready(Some(Err(Box::new(Broken(description)))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProviderBody::Passed { inner } => inner.is_end_stream(),
            ProviderBody::Whole { inner } => inner.is_end_stream(),
            ProviderBody::Translated { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProviderBody::Passed { inner } => inner.size_hint(),
            ProviderBody::Whole { inner } => inner.size_hint(),
            ProviderBody::Translated { .. } => SizeHint::default(),
        }
    }
}
