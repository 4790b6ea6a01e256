//! Anthropic's server-sent events → OpenAI `chat.completion.chunk` events.
//!
//! [`ChunkStream`] reads the provider's bytes as they arrive, in pieces of
//! any size, and cuts them into events the way the SSE spec says: lines end
//! with LF, CRLF or CR; `data:` lines (one leading space dropped) are
//! joined with LF; `event:`, `id:`, `retry:`, other fields and comments
//! (`:`) are ignored; an empty line ends the event, and an event without
//! data is ignored. The event's type is the `type` of its JSON data (the
//! API names the SSE event the same). Each event is translated as soon as
//! its empty line arrives; only the current incomplete event is held, and
//! at most [`EVENT_CAP`] bytes of it.
//!
//! | Anthropic event | OpenAI chunk(s) |
//! | --- | --- |
//! | `message_start` | `delta: {"role":"assistant","content":""}`; its `id` and `model` go into every chunk; its `usage` is kept |
//! | `content_block_start`, `text` | `delta.content` with the block's text, when not empty |
//! | `content_block_start`, `tool_use` | a `tool_calls` delta `{index, id, type: "function", function: {name, arguments: ""}}`; `index` counts the tool calls from 0 |
//! | `content_block_delta`, `text_delta` | `delta.content`, when not empty |
//! | `content_block_delta`, `input_json_delta` | a `tool_calls` delta `{index, function: {arguments}}`, when `partial_json` is not empty |
//! | `content_block_stop` of a `tool_use` block that had no arguments | a `tool_calls` delta with `arguments: "{}"`, so that the arguments are JSON |
//! | `message_delta` | its `usage` is kept (its counts are cumulative and win over `message_start`'s); the first `stop_reason` gives an empty delta with `finish_reason` (mapped as for [`response`](super::response())) |
//! | `message_stop` | an empty delta with `finish_reason: "stop"` if no `message_delta` gave one; then, with `include_usage`, `{"choices":[],"usage":{…}}`; then `data: [DONE]` |
//! | `error` | `Err` with `provider_error: true` |
//! | `ping`, thinking and other blocks and deltas, unknown events | nothing |
//!
//! Every chunk carries the message's `id`, `object: "chat.completion.chunk"`,
//! the caller's `created` and the `model` the provider named; with
//! `include_usage` every chunk but the last also has `"usage": null`, as
//! OpenAI sends it. `usage` counts as in a non-streaming answer
//! (`prompt_tokens` includes the cache reads and writes).
//!
//! Failures: an `error` event, an event over [`EVENT_CAP`], data that is
//! not JSON (or not an object with a string `type`), a content or message
//! event before `message_start`, a known event missing its `index`, or the
//! body ending before `message_stop` (an event cut without its empty line
//! is discarded, as the SSE spec says). When events that came before the
//! failure in the same [`ChunkStream::feed`] translated into chunks, that
//! call returns them (`Ok`), and the failure comes from the next call
//! (`feed` or `finish`): nothing already translated is lost, and the
//! client's stream still ends on a whole event. After a failure every call
//! gives the same `Err`; after `message_stop` further bytes are ignored.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::response::{Usage, finish_reason};

/// The largest event held while it is incomplete (1 MiB).
pub(crate) const EVENT_CAP: usize = 1 << 20;

/// Tool-use blocks open at once (Anthropic sends one at a time).
const OPEN_TOOLS_CAP: usize = 64;

/// The longest provider error message kept in a [`StreamFailure`].
const MESSAGE_CAP: usize = 200;

/// Why a translated stream cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamFailure {
    /// What happened, for logs and Sentinel's error event (never the raw
    /// provider bytes).
    pub(crate) description: String,
    /// The provider sent an `error` event (vs a protocol break / cut).
    pub(crate) provider_error: bool,
}

impl StreamFailure {
    fn protocol(description: impl Into<String>) -> Self {
        StreamFailure {
            description: description.into(),
            provider_error: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Running,
    /// `message_stop` was translated (and `[DONE]` emitted).
    Done,
    Failed(StreamFailure),
}

/// A `tool_use` block that has started and not stopped.
#[derive(Debug, Clone, Copy)]
struct OpenTool {
    /// The block's `index` in the Anthropic message.
    block: u64,
    /// The tool call's index for the client.
    call: usize,
    /// Some non-empty `partial_json` was passed on.
    has_arguments: bool,
}

/// Anthropic SSE (bytes as they arrive, any chunking, LF or CRLF line
/// ends) → OpenAI `chat.completion.chunk` SSE bytes (`data: {json}\n\n`
/// events, ending with `data: [DONE]\n\n` after `message_stop`). See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct ChunkStream {
    include_usage: bool,
    created: u64,
    state: State,

    /// The current line, without its end.
    line: Vec<u8>,
    /// The current event's data lines, joined with LF.
    data: Vec<u8>,
    /// The current event has a data line (possibly empty).
    has_data: bool,
    /// Bytes of the current event so far, line ends included.
    event_len: usize,
    /// The last byte was a CR: an LF right after it ends nothing.
    after_cr: bool,

    /// `message_start` was seen.
    started: bool,
    id: String,
    model: String,
    usage: Usage,
    open_tools: Vec<OpenTool>,
    next_call: usize,
    finish_sent: bool,
}

impl ChunkStream {
    /// A translator for one stream; `include_usage` adds the final usage
    /// chunk, `created` (unix seconds) goes into every chunk.
    pub(crate) fn new(include_usage: bool, created: u64) -> Self {
        ChunkStream {
            include_usage,
            created,
            state: State::Running,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event_len: 0,
            after_cr: false,
            started: false,
            id: String::new(),
            model: String::new(),
            usage: Usage::default(),
            open_tools: Vec::new(),
            next_call: 0,
            finish_sent: false,
        }
    }

    /// Feeds provider bytes; returns the OpenAI SSE bytes that are ready
    /// (possibly empty). `Err` when the provider sent an `error` event, or
    /// broke the protocol (an event over [`EVENT_CAP`], invalid JSON in a
    /// data line): the caller then ends the client's stream with Sentinel's
    /// own SSE error event. When chunks were ready before the failure, they
    /// come first (`Ok`) and the `Err` from the next call.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Bytes, StreamFailure> {
        match &self.state {
            State::Failed(failure) => return Err(failure.clone()),
            State::Done => return Ok(Bytes::new()),
            State::Running => {}
        }
        let mut out = Vec::new();
        if let Err(failure) = self.scan(bytes, &mut out) {
            self.state = State::Failed(failure.clone());
            if out.is_empty() {
                return Err(failure);
            }
        }
        Ok(Bytes::from(out))
    }

    /// The provider's body ended: `Ok` (nothing more to send) if
    /// `message_stop` was seen (the `[DONE]` already emitted), `Err` if the
    /// stream was cut before `message_stop` or had failed.
    pub(crate) fn finish(&mut self) -> Result<Bytes, StreamFailure> {
        match &self.state {
            State::Done => Ok(Bytes::new()),
            State::Failed(failure) => Err(failure.clone()),
            State::Running => {
                let failure =
                    StreamFailure::protocol("the provider's stream ended before message_stop");
                self.state = State::Failed(failure.clone());
                Err(failure)
            }
        }
    }

    /// Cuts `bytes` into lines and the lines into events.
    fn scan(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        while !bytes.is_empty() && self.state == State::Running {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.count(bytes.len())?;
                    self.line.extend_from_slice(bytes);
                    bytes = &[];
                }
                Some(end) => {
                    self.count(end + 1)?;
                    self.line.extend_from_slice(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                    self.end_line(out)?;
                }
            }
        }
        Ok(())
    }

    /// Adds `len` bytes to the current event, within [`EVENT_CAP`].
    fn count(&mut self, len: usize) -> Result<(), StreamFailure> {
        self.event_len = self.event_len.saturating_add(len);
        if self.event_len > EVENT_CAP {
            return Err(StreamFailure::protocol(format!(
                "the provider sent an event over {EVENT_CAP} bytes"
            )));
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        if self.line.is_empty() {
            let result = if self.has_data {
                self.dispatch(out)
            } else {
                Ok(())
            };
            self.data.clear();
            self.has_data = false;
            self.event_len = 0;
            return result;
        }
        let line = std::mem::take(&mut self.line);
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        // An empty name is a comment line (`: …`).
        if name == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        self.line = line;
        self.line.clear();
        Ok(())
    }

    /// Translates the complete event in `data`.
    fn dispatch(&mut self, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        let event: Value = serde_json::from_slice(&self.data).map_err(|_| {
            StreamFailure::protocol("the provider sent an event whose data is not JSON")
        })?;
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return Err(StreamFailure::protocol(
                "the provider sent an event without a type",
            ));
        };
        match kind {
            "message_start" => self.message_start(&event, out),
            "content_block_start" => self.block_start(&event, out),
            "content_block_delta" => self.block_delta(&event, out),
            "content_block_stop" => self.block_stop(&event, out),
            "message_delta" => self.message_delta(&event, out),
            "message_stop" => self.message_stop(out),
            "error" => Err(provider_error(&event)),
            // ping, and event types the API may add.
            _ => Ok(()),
        }
    }

    fn require_start(&self, kind: &str) -> Result<(), StreamFailure> {
        if self.started {
            Ok(())
        } else {
            Err(StreamFailure::protocol(format!(
                "the provider sent {kind} before message_start"
            )))
        }
    }

    fn message_start(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        if self.started {
            return Ok(());
        }
        let message = event.get("message");
        let text = |name: &str| {
            message
                .and_then(|message| message.get(name))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        self.id = text("id");
        self.model = text("model");
        if let Some(usage) = message.and_then(|message| message.get("usage")) {
            self.usage = Usage::read(usage);
        }
        self.started = true;
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
            ..Delta::default()
        };
        self.emit(out, delta, None)
    }

    /// The `text` of a text block or delta, as a content delta (none when
    /// empty).
    fn text(&mut self, holder: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        let text = holder.get("text").and_then(Value::as_str).unwrap_or("");
        if text.is_empty() {
            return Ok(());
        }
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.emit(out, delta, None)
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        self.require_start("content_block_start")?;
        let index = block_index(event, "content_block_start")?;
        let Some(block) = event.get("content_block") else {
            return Err(StreamFailure::protocol(
                "the provider sent content_block_start without content_block",
            ));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => self.text(block, out),
            Some("tool_use") => {
                if self.open_tools.len() >= OPEN_TOOLS_CAP {
                    return Err(StreamFailure::protocol(format!(
                        "the provider opened over {OPEN_TOOLS_CAP} tool_use blocks at once"
                    )));
                }
                let call = self.next_call;
                self.next_call += 1;
                self.open_tools.push(OpenTool {
                    block: index,
                    call,
                    has_arguments: false,
                });
                let text = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
                let delta = Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: call,
                        id: Some(text("id")),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(text("name")),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                };
                self.emit(out, delta, None)
            }
            // thinking, redacted_thinking, server tool blocks, …
            _ => Ok(()),
        }
    }

    fn block_delta(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        self.require_start("content_block_delta")?;
        let index = block_index(event, "content_block_delta")?;
        let Some(delta) = event.get("delta") else {
            return Err(StreamFailure::protocol(
                "the provider sent content_block_delta without delta",
            ));
        };
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => self.text(delta, out),
            Some("input_json_delta") => {
                let json = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(tool) = self.open_tools.iter_mut().find(|tool| tool.block == index) else {
                    // Input of a block this translation does not pass on.
                    return Ok(());
                };
                if json.is_empty() {
                    return Ok(());
                }
                tool.has_arguments = true;
                let call = tool.call;
                self.emit(out, arguments_delta(call, json), None)
            }
            // thinking_delta, signature_delta, citations_delta, …
            _ => Ok(()),
        }
    }

    fn block_stop(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        self.require_start("content_block_stop")?;
        let index = block_index(event, "content_block_stop")?;
        let Some(position) = self.open_tools.iter().position(|tool| tool.block == index) else {
            return Ok(());
        };
        let tool = self.open_tools.remove(position);
        if tool.has_arguments {
            return Ok(());
        }
        self.emit(out, arguments_delta(tool.call, "{}"), None)
    }

    fn message_delta(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        self.require_start("message_delta")?;
        if let Some(usage) = event.get("usage") {
            let update = Usage::read(usage);
            let has = |name: &str| usage.get(name).and_then(Value::as_u64).is_some();
            if has("input_tokens") {
                self.usage.input = update.input;
            }
            if has("cache_creation_input_tokens") {
                self.usage.cache_creation = update.cache_creation;
            }
            if has("cache_read_input_tokens") {
                self.usage.cache_read = update.cache_read;
            }
            if has("output_tokens") {
                self.usage.output = update.output;
            }
        }
        let stop_reason = event
            .get("delta")
            .and_then(|delta| delta.get("stop_reason"))
            .and_then(Value::as_str);
        match stop_reason {
            Some(reason) if !self.finish_sent => {
                self.finish_chunk(out, finish_reason(Some(reason)))
            }
            _ => Ok(()),
        }
    }

    fn message_stop(&mut self, out: &mut Vec<u8>) -> Result<(), StreamFailure> {
        self.require_start("message_stop")?;
        if !self.finish_sent {
            self.finish_chunk(out, "stop")?;
        }
        if self.include_usage {
            let chunk = Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: &[],
                usage: Some(Some(UsageOut {
                    prompt_tokens: self.usage.prompt_tokens(),
                    completion_tokens: self.usage.output,
                    total_tokens: self.usage.prompt_tokens().saturating_add(self.usage.output),
                })),
            };
            write_event(out, &chunk)?;
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.state = State::Done;
        Ok(())
    }

    /// The chunk with an empty delta and `finish_reason`.
    fn finish_chunk(
        &mut self,
        out: &mut Vec<u8>,
        reason: &'static str,
    ) -> Result<(), StreamFailure> {
        self.finish_sent = true;
        self.emit(out, Delta::default(), Some(reason))
    }

    /// Writes one chunk with one choice.
    fn emit(
        &self,
        out: &mut Vec<u8>,
        delta: Delta<'_>,
        finish_reason: Option<&'static str>,
    ) -> Result<(), StreamFailure> {
        let choices = [Choice {
            index: 0,
            delta,
            finish_reason,
        }];
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: self.include_usage.then_some(None),
        };
        write_event(out, &chunk)
    }
}

/// `data: {json}\n\n`.
fn write_event(out: &mut Vec<u8>, chunk: &Chunk<'_>) -> Result<(), StreamFailure> {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, chunk)
        .map_err(|_| StreamFailure::protocol("a chunk could not be encoded"))?;
    out.extend_from_slice(b"\n\n");
    Ok(())
}

fn block_index(event: &Value, kind: &str) -> Result<u64, StreamFailure> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| StreamFailure::protocol(format!("the provider sent {kind} without index")))
}

fn arguments_delta(call: usize, arguments: &str) -> Delta<'_> {
    Delta {
        tool_calls: Some([ToolCallDelta {
            index: call,
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments,
            },
        }]),
        ..Delta::default()
    }
}

/// The failure for an `error` event: its type and (shortened) message.
fn provider_error(event: &Value) -> StreamFailure {
    let error = event.get("error");
    let field = |name: &str| {
        error
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let kind = match field("type") {
        "" => "error",
        kind => kind,
    };
    let kind: String = kind.chars().take(MESSAGE_CAP).collect();
    let message: String = field("message").chars().take(MESSAGE_CAP).collect();
    let description = if message.is_empty() {
        format!("the provider sent an error event: {kind}")
    } else {
        format!("the provider sent an error event: {kind}: {message}")
    };
    StreamFailure {
        description,
        provider_error: true,
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    /// Absent without `include_usage`; `null` on every chunk but the last
    /// with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::{Value, json};

    use super::EVENT_CAP;
    use crate::anthropic::{ChunkStream, StreamFailure};

    const CREATED: u64 = 1_700_000_000;

    /// The basic streaming example of Anthropic's streaming reference.
    const BASIC: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"#;

    /// The tool use streaming example of Anthropic's streaming reference.
    const TOOL_USE: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" let"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'s"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" the"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" for"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" Francisco"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" CA"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":":"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"unit\": \"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

    /// The extended thinking streaming example of Anthropic's streaming
    /// reference (no usage in it).
    const THINKING: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: content_block_start
data: {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 1}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}

event: message_stop
data: {"type": "message_stop"}

"#;

    /// The error event of Anthropic's streaming reference.
    const OVERLOADED: &str = "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";

    /// Feeds `pieces`, then finishes: the output up to the first failure,
    /// and the failure.
    fn run<'a>(
        include_usage: bool,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<u8>, Option<StreamFailure>) {
        let mut stream = ChunkStream::new(include_usage, CREATED);
        let mut out = Vec::new();
        for piece in pieces {
            match stream.feed(piece) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(failure) => {
                    assert_eq!(stream.feed(b"data: {}\n\n"), Err(failure.clone()));
                    assert_eq!(stream.finish(), Err(failure.clone()));
                    return (out, Some(failure));
                }
            }
        }
        match stream.finish() {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                (out, None)
            }
            Err(failure) => (out, Some(failure)),
        }
    }

    /// [`run`] with the input in one piece, byte by byte and in pieces of
    /// every size up to 64, checking they all give the same.
    fn translate(include_usage: bool, input: &str) -> (Vec<u8>, Option<StreamFailure>) {
        let input = input.as_bytes();
        let whole = run(include_usage, [input]);
        for size in 1..=64 {
            assert_eq!(
                run(include_usage, input.chunks(size)),
                whole,
                "pieces of {size}"
            );
        }
        whole
    }

    /// The events of the output: each chunk's JSON, or `"[DONE]"`.
    fn events(out: &[u8]) -> Vec<Value> {
        let out = std::str::from_utf8(out).unwrap();
        assert!(out.is_empty() || out.ends_with("\n\n"), "{out}");
        out.split_terminator("\n\n")
            .map(|event| {
                let data = event.strip_prefix("data: ").unwrap();
                assert!(!data.contains('\n'), "{data}");
                if data == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }

    fn chunk(id: &str, model: &str, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    }

    fn basic_chunk(delta: Value, finish_reason: Value) -> Value {
        chunk(
            "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "claude-opus-4-20250514",
            delta,
            finish_reason,
        )
    }

    fn basic_chunks() -> Vec<Value> {
        vec![
            basic_chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
            basic_chunk(json!({ "content": "Hello" }), Value::Null),
            basic_chunk(json!({ "content": "!" }), Value::Null),
            basic_chunk(json!({}), json!("stop")),
            json!("[DONE]"),
        ]
    }

    #[test]
    fn a_text_stream_becomes_chunks_whatever_the_pieces() {
        let (out, failure) = translate(false, BASIC);
        assert_eq!(failure, None);
        assert_eq!(events(&out), basic_chunks());
        let first = concat!(
            r#"data: {"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","object":"chat.completion.chunk","#,
            r#""created":1700000000,"model":"claude-opus-4-20250514","choices":[{"index":0,"#,
            r#""delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            "\n\n",
        );
        assert!(out.starts_with(first.as_bytes()));
        assert!(out.ends_with(b"}\n\ndata: [DONE]\n\n"));
    }

    #[test]
    fn crlf_and_cr_line_ends_give_the_same_chunks() {
        let (lf, _) = translate(false, BASIC);
        for end in ["\r\n", "\r"] {
            let (out, failure) = translate(false, &BASIC.replace('\n', end));
            assert_eq!(failure, None);
            assert_eq!(out, lf, "{end:?}");
        }
    }

    #[test]
    fn each_chunk_is_emitted_as_soon_as_its_event_is_complete() {
        let mut stream = ChunkStream::new(false, CREATED);
        let events: Vec<&str> = BASIC.split_inclusive("\n\n").collect();
        let mut produced = Vec::new();
        for event in events {
            // All but the empty line that ends the event: nothing yet.
            let (body, end) = event.split_at(event.len() - 1);
            assert!(stream.feed(body.as_bytes()).unwrap().is_empty());
            produced.push(stream.feed(end.as_bytes()).unwrap());
        }
        let counts: Vec<usize> = produced
            .iter()
            .map(|bytes| self::events(bytes).len())
            .collect();
        // message_start, block start, ping, 2 deltas, block stop,
        // message_delta, message_stop.
        assert_eq!(counts, [1, 0, 0, 1, 1, 0, 1, 1]);
        assert!(stream.finish().unwrap().is_empty());
    }

    #[test]
    fn include_usage_adds_null_usage_and_a_final_usage_chunk() {
        let (out, failure) = translate(true, BASIC);
        assert_eq!(failure, None);
        let mut expected: Vec<Value> = basic_chunks();
        for chunk in &mut expected[..4] {
            chunk["usage"] = Value::Null;
        }
        expected.insert(
            4,
            json!({
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": "claude-opus-4-20250514",
                "choices": [],
                "usage": { "prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40 },
            }),
        );
        assert_eq!(events(&out), expected);
    }

    #[test]
    fn usage_counts_the_cache_and_takes_message_deltas_counts() {
        let stream = r#"data: {"type":"message_start","message":{"id":"msg_01","model":"claude-sonnet-4-5","usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}

data: {"type":"content_block_stop","index":0}

data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":30}}

data: {"type":"message_stop"}

"#;
        let (out, failure) = translate(true, stream);
        assert_eq!(failure, None);
        let events = events(&out);
        assert_eq!(
            events[events.len() - 2]["usage"],
            json!({ "prompt_tokens": 2112, "completion_tokens": 30, "total_tokens": 2142 })
        );
    }

    #[test]
    fn a_tool_use_stream_becomes_tool_call_deltas() {
        let (out, failure) = translate(false, TOOL_USE);
        assert_eq!(failure, None);
        let events = events(&out);
        assert_eq!(events.last(), Some(&json!("[DONE]")));
        let chunks = &events[..events.len() - 1];
        for chunk in chunks {
            assert_eq!(chunk["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
            assert_eq!(chunk["model"], "claude-opus-4-20250514");
            assert_eq!(chunk["object"], "chat.completion.chunk");
        }
        let deltas: Vec<&Value> = chunks
            .iter()
            .map(|chunk| &chunk["choices"][0]["delta"])
            .collect();
        let text: String = deltas
            .iter()
            .filter_map(|delta| delta["content"].as_str())
            .collect();
        assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");

        let calls: Vec<&Value> = deltas
            .iter()
            .filter_map(|delta| delta.get("tool_calls"))
            .collect();
        assert_eq!(
            calls[0],
            &json!([{
                "index": 0,
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "type": "function",
                "function": { "name": "get_weather", "arguments": "" },
            }])
        );
        // The empty first partial_json gives no chunk.
        assert_eq!(calls.len(), 1 + 8);
        let mut arguments = String::new();
        for call in &calls[1..] {
            assert_eq!(call[0]["index"], 0);
            assert!(call[0].get("id").is_none());
            arguments.push_str(call[0]["function"]["arguments"].as_str().unwrap());
        }
        let arguments: Value = serde_json::from_str(&arguments).unwrap();
        assert_eq!(
            arguments,
            json!({ "location": "San Francisco, CA", "unit": "fahrenheit" })
        );

        let finish = &chunks[chunks.len() - 1]["choices"][0];
        assert_eq!(finish["delta"], json!({}));
        assert_eq!(finish["finish_reason"], "tool_calls");
    }

    #[test]
    fn tool_calls_are_numbered_from_zero_and_get_json_arguments() {
        let stream = r#"data: {"type":"message_start","message":{"id":"msg_2","model":"claude-sonnet-4-5","usage":{"input_tokens":3,"output_tokens":1}}}

data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

data: {"type":"content_block_stop","index":0}

data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"get_time","input":{}}}

data: {"type":"content_block_stop","index":1}

data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"get_weather","input":{}}}

data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\":\"Paris\"}"}}

data: {"type":"content_block_stop","index":2}

data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}

data: {"type":"message_stop"}

"#;
        let (out, failure) = translate(false, stream);
        assert_eq!(failure, None);
        let chunk =
            |delta: Value, finish: Value| chunk("msg_2", "claude-sonnet-4-5", delta, finish);
        let call = |index: usize, id: &str, name: &str| {
            json!({ "tool_calls": [{
                "index": index, "id": id, "type": "function",
                "function": { "name": name, "arguments": "" },
            }] })
        };
        let arguments = |index: usize, arguments: &str| json!({ "tool_calls": [{ "index": index, "function": { "arguments": arguments } }] });
        assert_eq!(
            events(&out),
            [
                chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
                chunk(call(0, "toolu_a", "get_time"), Value::Null),
                chunk(arguments(0, "{}"), Value::Null),
                chunk(call(1, "toolu_b", "get_weather"), Value::Null),
                chunk(arguments(1, "{\"city\":\"Paris\"}"), Value::Null),
                chunk(json!({}), json!("tool_calls")),
                json!("[DONE]"),
            ]
        );
    }

    #[test]
    fn thinking_is_left_out() {
        let (out, failure) = translate(true, THINKING);
        assert_eq!(failure, None);
        let events = events(&out);
        let text: String = events
            .iter()
            .filter_map(|event| event["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "27 * 453 = 12,231");
        assert_eq!(events.len(), 5);
        assert_eq!(
            events[3]["usage"],
            json!({ "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 })
        );
    }

    #[test]
    fn stop_reasons_become_finish_reasons() {
        let cases = [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "stop"),
            // A null stop_reason gives nothing; the next one counts.
            (None, "stop"),
        ];
        for (stop_reason, finish_reason) in cases {
            let stop_reason = stop_reason.map_or(Value::Null, |reason| json!(reason));
            let stream = format!(
                "data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"model\":\"c\"}}}}\n\n\
                 data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":{stop_reason}}}}}\n\n\
                 data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}}}}\n\n\
                 data: {{\"type\":\"message_stop\"}}\n\n"
            );
            let (out, failure) = translate(false, &stream);
            assert_eq!(failure, None);
            let finishes: Vec<Value> = events(&out)
                .iter()
                .filter_map(|event| event["choices"][0].get("finish_reason").cloned())
                .filter(|finish| !finish.is_null())
                .collect();
            let expected = if stop_reason.is_null() {
                "stop"
            } else {
                finish_reason
            };
            assert_eq!(finishes, [json!(expected)], "{stop_reason}");
        }
    }

    #[test]
    fn without_a_stop_reason_message_stop_gives_stop() {
        let stream = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":2}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, failure) = translate(false, stream);
        assert_eq!(failure, None);
        assert_eq!(
            events(&out),
            [
                chunk(
                    "m",
                    "c",
                    json!({ "role": "assistant", "content": "" }),
                    Value::Null
                ),
                chunk("m", "c", json!({}), json!("stop")),
                json!("[DONE]"),
            ]
        );
    }

    #[test]
    fn sse_details_are_followed() {
        let stream = concat!(
            ": a comment\n",
            "id: 1\nretry: 1000\nevent: message_start\n",
            "data:{\"type\":\"message_start\",\n",
            "data: \"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"model\":\"claude-opus-4-20250514\",",
            "\"usage\":{\"input_tokens\":25}}}\n\n",
            "\n\n",
            "event: a_future_event\ndata: {\"type\":\"a_future_event\",\"index\":0}\n\n",
            "event: nothing\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"citations_delta\",\"citation\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"after the end\"}}\n\n",
            "garbage after the end",
        );
        let (out, failure) = translate(false, stream);
        assert_eq!(failure, None);
        assert_eq!(events(&out), basic_chunks());
    }

    #[test]
    fn an_error_event_fails_the_stream_after_what_came_before() {
        let before = BASIC.split("event: content_block_stop").next().unwrap();
        let input = format!("{before}{OVERLOADED}");
        let (out, failure) = translate(false, &input);
        assert_eq!(
            failure,
            Some(StreamFailure {
                description: "the provider sent an error event: overloaded_error: Overloaded"
                    .to_owned(),
                provider_error: true,
            })
        );
        assert_eq!(events(&out), basic_chunks()[..3]);

        // In one piece, the chunks come first and the failure next.
        let mut stream = ChunkStream::new(false, CREATED);
        assert_eq!(stream.feed(input.as_bytes()).unwrap(), out);
        assert!(stream.feed(b"").unwrap_err().provider_error);
        // Fed last, alone, it fails at once.
        let mut stream = ChunkStream::new(false, CREATED);
        assert_eq!(stream.feed(before.as_bytes()).unwrap(), out);
        assert!(
            stream
                .feed(OVERLOADED.as_bytes())
                .unwrap_err()
                .provider_error
        );
    }

    #[test]
    fn an_error_event_first_fails_at_once() {
        let (out, failure) = translate(true, OVERLOADED);
        assert!(out.is_empty());
        assert!(failure.unwrap().provider_error);
    }

    #[test]
    fn a_stream_cut_before_message_stop_fails() {
        let without_stop = BASIC.split("event: message_stop").next().unwrap();
        let cut_inside = &BASIC[..BASIC.len() - 3];
        for input in [without_stop, cut_inside, "", "event: message_start\n"] {
            let (out, failure) = translate(false, input);
            let failure = failure.unwrap();
            assert!(!failure.provider_error);
            assert!(failure.description.contains("message_stop"), "{failure:?}");
            assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
        }
    }

    #[test]
    fn an_event_over_the_cap_fails() {
        let start = BASIC.split("event: content_block_start").next().unwrap();
        let mut oversize = format!("{start}event: content_block_delta\ndata: ");
        oversize.push_str(&"a".repeat(EVENT_CAP));
        for piece in [oversize.len(), 64 * 1024, 1000] {
            let (out, failure) = run(false, oversize.as_bytes().chunks(piece));
            assert_eq!(events(&out), basic_chunks()[..1]);
            let failure = failure.unwrap();
            assert!(!failure.provider_error);
            assert!(failure.description.contains("bytes"), "{failure:?}");
        }
        // A line of many events, each under the cap, is fine; so is an
        // event just under it.
        let text = "b".repeat(EVENT_CAP - 200);
        let big = format!(
            "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
        );
        let mut input = start.to_owned();
        for _ in 0..3 {
            input.push_str(&big);
        }
        input.push_str("data: {\"type\":\"message_stop\"}\n\n");
        let (out, failure) = run(false, [input.as_bytes()]);
        assert_eq!(failure, None);
        assert_eq!(events(&out).len(), 1 + 3 + 2);
    }

    #[test]
    fn data_that_is_not_json_fails() {
        let start = BASIC.split("event: content_block_start").next().unwrap();
        for bad in [
            "data: {\"type\": \"content_block_delta\", \"index\": 0,\n\n",
            "data: not json\n\n",
            "data: [1, 2]\n\n",
            "data: {\"type\": 7}\n\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
        ] {
            let (out, failure) = translate(false, &format!("{start}{bad}"));
            assert_eq!(events(&out), basic_chunks()[..1], "{bad}");
            let failure = failure.unwrap();
            assert!(!failure.provider_error, "{bad}");
            assert!(!failure.description.contains("not json"), "{bad}");
        }
    }

    #[test]
    fn content_before_message_start_fails() {
        let input = "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";
        let (out, failure) = translate(false, input);
        assert!(out.is_empty());
        assert!(!failure.unwrap().provider_error);
    }
}
