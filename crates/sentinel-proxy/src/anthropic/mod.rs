//! Translation between OpenAI's Chat Completions API, which clients speak,
//! and Anthropic's Messages API, which Sentinel can send a request to.
//!
//! Pure code, no I/O: [`request()`] turns a chat completion request into a
//! Messages request body, [`response()`] turns a Messages answer into a
//! `chat.completion`, [`error_envelope()`] turns an Anthropic error answer
//! into OpenAI's error envelope, and [`ChunkStream`] turns Anthropic's
//! server-sent events into `chat.completion.chunk` events as they arrive.
//! The caller sends the body to `POST /v1/messages` with the
//! `anthropic-version: API_VERSION` header.
//!
//! Nothing from outside the process panics here: malformed input gives an
//! error value ([`Refused`], [`StreamFailure`]) or, where the function has
//! no error value ([`response()`], [`error_envelope()`]), a best-effort answer.
//!
//! # Request
//!
//! - `system` and `developer` messages, wherever they stand, become the
//!   top-level `system` string: the text parts of one message are
//!   concatenated as they are, several messages are joined with a blank
//!   line (`"\n\n"`); empty ones are left out. Their content may be a
//!   string or an array of `text` parts; any other part is refused.
//! - `user` and `assistant` messages become `messages`, each as an array of
//!   content blocks; consecutive messages of the same role are merged into
//!   one (blocks concatenated), since the API wants turns to alternate.
//!   `tool` messages become `tool_result` blocks of a `user` turn, merged
//!   with the user turn next to them; within a user turn the `tool_result`
//!   blocks are moved (in their order) before the other blocks, as the API
//!   requires. Empty text (`""`, e.g. the `content` of an assistant message
//!   that only calls tools) gives no block, and a message left without any
//!   block is left out (before merging). The `name` of a message is dropped.
//! - A conversation that starts with an `assistant` message is sent as it
//!   is: nothing is inserted. Anthropic's reference only says that messages
//!   alternate and that consecutive same-role turns are combined, and the
//!   first-party API accepts an assistant first turn (Bedrock refuses it:
//!   anthropic-sdk-typescript#622); if a provider refuses it, its error
//!   reaches the client through [`error_envelope()`]. A request with no user
//!   or assistant message at all is refused.
//! - Content parts: `text` → a text block; `image_url` with a `data:` URL
//!   (`data:<media type>;base64,<data>`) → an image block with a `base64`
//!   source; an `http:` or `https:` URL → an image block with a `url`
//!   source (the `detail` is dropped); other URLs, data URLs that are not
//!   base64, and every other part type (`input_audio`, `file`, …) are
//!   refused. An assistant's `refusal` parts and `refusal` field become text.
//! - Assistant `tool_calls` (type `function`) → `tool_use` blocks whose
//!   `input` is the parsed `arguments`, which must be a JSON object; empty
//!   (or blank) arguments are taken as `{}`, anything else that is not a
//!   JSON object is refused. `tool` messages → `tool_result` blocks
//!   (`tool_use_id` = `tool_call_id`; a string content stays a string, an
//!   array of text parts becomes text blocks, an empty content is left out).
//!   The deprecated `function` role, `functions` and `function_call` are
//!   refused.
//! - `max_completion_tokens`, else `max_tokens`, → `max_tokens`
//!   ([`DEFAULT_MAX_TOKENS`] when neither is given).
//! - `stop` (a string or an array of strings) → `stop_sequences` (left out
//!   when empty); `temperature` → `temperature`, values above 1 clamped to 1
//!   (Anthropic's range is 0 to 1, OpenAI's 0 to 2); `top_p` → `top_p`,
//!   but only without `temperature` (recent Claude models refuse both;
//!   `temperature` wins); a stop sequence with no visible character is
//!   refused (Anthropic refuses it, and dropping it would change the answer);
//!   `user` → `metadata.user_id`; `stream: true` → `stream: true`.
//! - `tools` (type `function`) → `tools` (`name`, `description` when given,
//!   `input_schema` = `parameters` or `{"type":"object"}`; `strict` is
//!   dropped); other tool types are refused. `tool_choice`: `"auto"` →
//!   `{"type":"auto"}`, `"required"` → `{"type":"any"}`, `"none"` →
//!   `{"type":"none"}`, a named function → `{"type":"tool","name"}`;
//!   `parallel_tool_calls: false` → `disable_parallel_tool_use: true` on the
//!   tool choice (`{"type":"auto"}` when none was given; not on `none`).
//!   Without tools (absent or empty), `tool_choice` and
//!   `parallel_tool_calls` are dropped.
//! - Refused: `n` other than 1, `logprobs: true`, `top_logprobs`,
//!   `response_format` other than `text`, an `audio` modality or the
//!   `audio` parameter; and a field of the wrong JSON type among those this
//!   module reads. `null` counts as absent everywhere.
//! - Dropped: `frequency_penalty`, `presence_penalty`, `seed`, `logit_bias`,
//!   `service_tier`, `store`, `metadata`, `stream_options` (read for
//!   [`MessagesRequest::include_usage`]), `reasoning_effort`, `prediction`,
//!   `modalities: ["text"]`, `parallel_tool_calls: true`,
//!   `response_format: {"type":"text"}`, `logprobs: false`, and every field
//!   this module does not know.
//! - `model` is passed as it is.
//!
//! # Response
//!
//! A `chat.completion` with the message's `id` and `model`, the caller's
//! `created`, and one choice: `content` is the text blocks concatenated
//! (`null` when there is none), `tool_calls` the `tool_use` blocks
//! (`arguments` = the `input` as a JSON string). Thinking and every other
//! block type are left out. `finish_reason`: `end_turn`/`stop_sequence` →
//! `stop`, `max_tokens` and `model_context_window_exceeded` → `length`,
//! `tool_use` → `tool_calls`, `refusal` →
//! `content_filter`, anything else (`pause_turn`, unknown, missing) →
//! `stop`. `usage`: `prompt_tokens` = `input_tokens` +
//! `cache_creation_input_tokens` + `cache_read_input_tokens`,
//! `completion_tokens` = `output_tokens`; left out when the message has no
//! `usage`. Missing `id`/`model` become `""`.
//!
//! # Errors
//!
//! See [`error_envelope()`]: the provider's `error.type` (or, when the body
//! is not Anthropic's error JSON, the type its documentation gives the
//! HTTP status) picks the OpenAI `type` and `code`; the message is the
//! provider's, or a generic one naming only the status.
//!
//! # Streaming
//!
//! See [`ChunkStream`].

mod error;
mod request;
mod response;
mod stream;

pub(crate) use error::error_envelope;
pub(crate) use request::request;
pub(crate) use response::response;
pub(crate) use stream::{ChunkStream, StreamFailure};

/// `max_tokens` sent when the client gave neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires it).
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The `anthropic-version` header value.
pub(crate) const API_VERSION: &str = "2023-06-01";

/// A request Sentinel refuses to translate: answered 400
/// `invalid_request_error` with this message (code e.g.
/// `"unsupported_parameter"`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refused {
    /// What is refused, for the client.
    pub(crate) message: String,
    /// The request field at fault (`"messages"` for anything inside a
    /// message).
    pub(crate) param: Option<&'static str>,
}

/// What the request translation gives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessagesRequest {
    /// The Anthropic Messages request body (JSON).
    pub(crate) body: serde_json::Value,
    /// The client asked for a stream.
    pub(crate) stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub(crate) include_usage: bool,
}

#[cfg(test)]
mod tests {
    use super::{API_VERSION, DEFAULT_MAX_TOKENS};

    #[test]
    fn the_constants_are_the_documented_ones() {
        assert_eq!(API_VERSION, "2023-06-01");
        assert_eq!(DEFAULT_MAX_TOKENS, 4096);
    }
}
