//! Anthropic Message → OpenAI `chat.completion`. The rules are listed in
//! the [module docs](super#response).

use serde_json::{Map, Value, json};

/// Anthropic non-streaming Message response → OpenAI `chat.completion`
/// JSON. `created` is unix seconds (the caller passes the clock).
pub(crate) fn response(message: &Value, created: u64) -> Value {
    let text_of = |name: &str| message.get(name).and_then(Value::as_str).unwrap_or("");

    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    let blocks = message.get("content").and_then(Value::as_array);
    for block in blocks.into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(part) = block.get("text").and_then(Value::as_str) {
                    text.push_str(part);
                    has_text = true;
                }
            }
            Some("tool_use") => tool_calls.push(tool_call(block)),
            // Thinking, redacted thinking, server tool blocks, and whatever
            // the API adds: nothing an OpenAI client can take.
            _ => {}
        }
    }

    let mut reply = Map::new();
    reply.insert("role".to_owned(), json!("assistant"));
    reply.insert(
        "content".to_owned(),
        if has_text {
            Value::String(text)
        } else {
            Value::Null
        },
    );
    if !tool_calls.is_empty() {
        reply.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }

    let mut completion = Map::new();
    completion.insert("id".to_owned(), json!(text_of("id")));
    completion.insert("object".to_owned(), json!("chat.completion"));
    completion.insert("created".to_owned(), json!(created));
    completion.insert("model".to_owned(), json!(text_of("model")));
    completion.insert(
        "choices".to_owned(),
        json!([{
            "index": 0,
            "message": reply,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }]),
    );
    if let Some(usage) = message.get("usage").filter(|usage| usage.is_object()) {
        let usage = Usage::read(usage);
        completion.insert("usage".to_owned(), usage.openai());
    }
    Value::Object(completion)
}

/// A `tool_use` block → an OpenAI tool call.
fn tool_call(block: &Value) -> Value {
    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
    let arguments = serde_json::to_string(&input).unwrap_or_else(|_| "{}".to_owned());
    json!({
        "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
        "type": "function",
        "function": {
            "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
            "arguments": arguments,
        },
    })
}

/// Anthropic's `stop_reason` → OpenAI's `finish_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        // The output hit `max_tokens`, or the context window.
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything else.
        _ => "stop",
    }
}

/// Anthropic's token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) input: u64,
    pub(super) cache_creation: u64,
    pub(super) cache_read: u64,
    pub(super) output: u64,
}

impl Usage {
    /// The counts in a `usage` object (missing ones are 0).
    pub(super) fn read(usage: &Value) -> Usage {
        let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            input: count("input_tokens"),
            cache_creation: count("cache_creation_input_tokens"),
            cache_read: count("cache_read_input_tokens"),
            output: count("output_tokens"),
        }
    }

    pub(super) fn prompt_tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    /// OpenAI's `usage` object.
    pub(super) fn openai(&self) -> Value {
        let prompt = self.prompt_tokens();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::{Value, json};

    use crate::anthropic::response;

    const CREATED: u64 = 1_700_000_000;

    /// The example response of Anthropic's Messages reference.
    #[test]
    fn a_text_message_becomes_a_chat_completion() {
        let message = json!({
            "content": [{ "text": "Hi! My name is Claude.", "type": "text" }],
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "model": "claude-3-7-sonnet-20250219",
            "role": "assistant",
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "type": "message",
            "usage": { "input_tokens": 2095, "output_tokens": 503 },
        });
        assert_eq!(
            response(&message, CREATED),
            json!({
                "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
                "object": "chat.completion",
                "created": CREATED,
                "model": "claude-3-7-sonnet-20250219",
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": "Hi! My name is Claude." },
                    "finish_reason": "stop",
                }],
                "usage": { "prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598 },
            }),
        );
    }

    /// The single tool example of Anthropic's tool use documentation.
    #[test]
    fn tool_use_blocks_become_tool_calls() {
        let message = json!({
            "id": "msg_01Aq9w938a90dw8q",
            "model": "claude-3-opus-20240229",
            "stop_reason": "tool_use",
            "role": "assistant",
            "content": [
                { "type": "text", "text": "I need to call the get_weather function." },
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": { "location": "San Francisco, CA", "unit": "celsius" },
                },
                { "type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {} },
            ],
        });
        let completion = response(&message, CREATED);
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(
            choice["message"]["content"],
            "I need to call the get_weather function."
        );
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            arguments,
            json!({ "location": "San Francisco, CA", "unit": "celsius" })
        );
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert!(completion.get("usage").is_none());
    }

    #[test]
    fn a_message_without_text_has_null_content() {
        let message = json!({
            "id": "msg_1",
            "model": "claude-sonnet-4-5",
            "stop_reason": "tool_use",
            "content": [
                { "type": "thinking", "thinking": "Let me think.", "signature": "abc" },
                { "type": "tool_use", "id": "toolu_1", "name": "f", "input": { "a": [1] } },
            ],
        });
        let completion = response(&message, CREATED);
        assert_eq!(completion["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":[1]}"
        );
    }

    #[test]
    fn text_blocks_are_concatenated_and_thinking_left_out() {
        let message = json!({
            "id": "msg_1",
            "model": "claude-sonnet-4-5",
            "stop_reason": "end_turn",
            "content": [
                { "type": "thinking", "thinking": "27 * 453 = 12,231", "signature": "abc" },
                { "type": "redacted_thinking", "data": "xyz" },
                { "type": "text", "text": "27 * 453 " },
                { "type": "text", "text": "= 12,231" },
            ],
        });
        let reply = &response(&message, CREATED)["choices"][0]["message"];
        assert_eq!(
            reply,
            &json!({ "role": "assistant", "content": "27 * 453 = 12,231" })
        );
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let cases = [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("model_context_window_exceeded"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("pause_turn"), "stop"),
            (json!("a_future_reason"), "stop"),
            (Value::Null, "stop"),
        ];
        for (stop_reason, finish_reason) in cases {
            let message =
                json!({ "id": "m", "model": "c", "content": [], "stop_reason": stop_reason });
            assert_eq!(
                response(&message, CREATED)["choices"][0]["finish_reason"],
                finish_reason,
                "{stop_reason}"
            );
        }
    }

    #[test]
    fn prompt_tokens_include_the_cache() {
        let cases = [
            (json!({ "input_tokens": 25, "output_tokens": 15 }), (25, 15)),
            (
                json!({ "input_tokens": 12, "cache_creation_input_tokens": 100,
                        "cache_read_input_tokens": 2000, "output_tokens": 30 }),
                (2112, 30),
            ),
            (
                json!({ "input_tokens": 5, "cache_creation_input_tokens": null, "output_tokens": 1 }),
                (5, 1),
            ),
            (json!({}), (0, 0)),
        ];
        for (usage, (prompt, completion)) in cases {
            let message = json!({ "id": "m", "model": "c", "content": [], "usage": usage });
            assert_eq!(
                response(&message, CREATED)["usage"],
                json!({
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }),
                "{usage}"
            );
        }
    }

    #[test]
    fn a_malformed_message_gives_a_best_effort_answer() {
        for message in [Value::Null, json!([1, 2]), json!({ "content": "text" })] {
            let completion = response(&message, CREATED);
            assert_eq!(completion["object"], "chat.completion");
            assert_eq!(completion["id"], "");
            assert_eq!(completion["choices"][0]["message"]["content"], Value::Null);
            assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        }
    }
}
