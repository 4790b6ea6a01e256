//! Continuing a broken chat stream on the next model of the tier.
//!
//! When a streamed chat completion breaks or stalls after its head went to
//! the client (the connection breaks, the idle timeout passes, the body
//! ends without `data: [DONE]`) and the request's one retry is unused,
//! Sentinel asks the next model of the tier to continue the answer: the
//! client's request, with what the client has already received appended as
//! a final `assistant` message, on the model [`sentinel_layer::Continuation`]
//! chooses and admits. Its events are spliced into the client's stream as
//! one answer:
//!
//! - every chunk carries the first attempt's `id` and `created`, and the
//!   `role` announcement of the continuation's first chunk is left out;
//! - the continuation's `finish_reason` is the answer's only one (an answer
//!   is continued only while it has none);
//! - the usage chunk, when the client asked for it, is the continuation's:
//!   its `prompt_tokens` count the prompt plus the partial answer, its
//!   `completion_tokens` the rest (the broken attempt reported none);
//! - a comment, `: x-sentinel-continued-model: MODEL`, comes just before
//!   `data: [DONE]` (or before the error event, when the continuation
//!   itself fails).
//!
//! When the continuation cannot be had (no other model may be tried, it
//! refuses the prefill with a 4xx, it fails or stalls before its first
//! token) the client gets the error event the first attempt's failure
//! earned, never the fallback's. An answer is continued only when it is a
//! single choice of plain text: tool calls, refusals, several choices, an
//! error event already sent, or more than 1 MiB of text (`TEXT_CAP`) end with the
//! error event as before.
//!
//! What it costs a stream that never breaks: the events sent are copied
//! into a bounded log (64 KiB, `RAW_CAP`), read only when the log fills or the
//! stream breaks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::Frame;
use sentinel_layer::{Continuation, RoutingDecision, UpstreamError};
use serde::Deserialize;

use super::{BodyPlan, IDEMPOTENCY_KEY, Upstream, forwarded_headers, is_event_stream};
use crate::metrics as m;
use crate::sse;

/// The events sent to the client held raw before they are read into text.
pub(crate) const RAW_CAP: usize = 64 << 10;
/// The longest partial answer continued.
pub(crate) const TEXT_CAP: usize = 1 << 20;

/// How a first attempt's stream is continued if it breaks: the request to
/// send again, and a log of what the client has been sent.
pub(crate) struct Resume {
    upstream: Upstream,
    handle: Continuation,
    headers: HeaderMap,
    method: Method,
    rest: Box<str>,
    hide_usage: bool,
    transcript: Transcript,
    /// The request's trace: the continuation is one more attempt of it.
    trace: Option<crate::trace::RequestTrace>,
}

impl Resume {
    /// `client_headers` are the client's request headers: the ones that go
    /// upstream are picked from them if the stream breaks (an
    /// `Idempotency-Key` is left out: the continuation is another request).
    pub(crate) fn new(
        upstream: Upstream,
        handle: Continuation,
        client_headers: HeaderMap,
        method: Method,
        rest: &str,
        hide_usage: bool,
        trace: Option<crate::trace::RequestTrace>,
    ) -> Box<Resume> {
        Box::new(Resume {
            upstream,
            handle,
            method,
            headers: client_headers,
            rest: rest.into(),
            hide_usage,
            transcript: Transcript::default(),
            trace,
        })
    }

    /// Whole events that went to the client.
    pub(crate) fn sent(&mut self, events: &[u8]) {
        self.transcript.record(events);
    }

    /// The stream broke and `event` is the error event the client would
    /// get: a continuation under way, or `Err(event)` when the answer cannot
    /// be continued.
    pub(crate) fn start(mut self: Box<Self>, event: Bytes) -> Result<Resuming, Bytes> {
        let Some(prefill) = self.transcript.prefill() else {
            return Err(event);
        };
        Ok(Resuming {
            state: State::Starting {
                future: Box::pin(self.run(prefill)),
                fallback: event,
            },
        })
    }

    /// Chooses the next model, sends it the prefilled request and waits
    /// for its first token.
    async fn run(self: Box<Self>, prefill: Prefill) -> Option<(Body, Splice)> {
        let Resume {
            upstream,
            handle,
            headers,
            method,
            rest,
            hide_usage,
            trace,
            ..
        } = *self;
        let tier = handle.decision().tier;
        let Some(attempt) = handle.next() else {
            count(tier.as_str(), "none", "none", "unavailable");
            return None;
        };
        let decision: RoutingDecision = attempt.decision().clone();
        let outcome = |outcome| count(tier.as_str(), &decision.model, &decision.provider, outcome);
        let Some(target) = upstream.0.targets.get(&*decision.provider) else {
            attempt.failed(&UpstreamError::other("unknown provider"));
            outcome("failed");
            return None;
        };
        let (Ok(uri), Some(body)) = (
            target.uri(&rest),
            with_prefill(attempt.body(), &prefill.text),
        ) else {
            // Not the model's fault: dropped, the attempt counts for nothing.
            outcome("failed");
            return None;
        };
        let mut headers = forwarded_headers(&headers);
        headers.remove(IDEMPOTENCY_KEY);
        let plan = BodyPlan {
            api: sse::Api::Chat,
            hide_usage,
            report: Some(attempt.report()),
            resume: None,
            // After the head: the request's overhead is already counted.
            wait: None,
            trace,
        };
        let sent = upstream
            .send(&decision, target, method, uri, headers, body, plan)
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(model = %decision.model, error = %error, "the continuation failed before its first token");
                attempt.failed(&error);
                outcome("failed");
                return None;
            }
        };
        let status = response.status();
        let report = attempt.answered(status, response.headers());
        if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(model = %decision.model, status = status.as_u16(), "the continuation was refused");
            outcome("refused");
            return None;
        }
        if !status.is_success() || !is_event_stream(response.headers()) {
            report.failed();
            outcome("failed");
            return None;
        }
        outcome("continued");
        let splice = Splice::new(prefill, &decision.model);
        Some((response.into_body(), splice))
    }
}

fn count(tier: &str, model: &str, provider: &str, outcome: &'static str) {
    ::metrics::counter!(m::STREAM_CONTINUATIONS,
        "tier" => tier.to_owned(),
        "model" => model.to_owned(),
        "provider" => provider.to_owned(),
        "outcome" => outcome)
    .increment(1);
}

/// The client's request with the partial answer appended to `messages` as
/// a final assistant message.
fn with_prefill(body: &Bytes, text: &str) -> Option<Bytes> {
    let mut request: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    let messages = request.get_mut("messages")?.as_array_mut()?;
    messages.push(serde_json::json!({ "role": "assistant", "content": text }));
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

/// What the client was sent: whole events, read into text lazily.
#[derive(Default)]
struct Transcript {
    /// Events not read yet.
    raw: BytesMut,
    text: String,
    id: Option<String>,
    created: Option<u64>,
    /// Set once the answer is something a prefill cannot carry on.
    spoiled: bool,
}

/// What the continuation carries on from.
struct Prefill {
    text: String,
    id: Option<String>,
    created: Option<u64>,
}

#[derive(Deserialize)]
struct Chunk {
    id: Option<String>,
    created: Option<u64>,
    #[serde(default)]
    choices: Vec<Choice>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    index: Option<u64>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    refusal: Option<serde_json::Value>,
    tool_calls: Option<serde_json::Value>,
    function_call: Option<serde_json::Value>,
}

impl Transcript {
    fn record(&mut self, events: &[u8]) {
        if self.spoiled {
            return;
        }
        self.raw.extend_from_slice(events);
        if self.raw.len() > RAW_CAP {
            self.read();
        }
    }

    /// Reads the raw events into the text.
    fn read(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        for payload in sse::payloads(&raw) {
            if payload == b"[DONE]" {
                self.spoiled = true;
            }
            let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
                continue;
            };
            if chunk.error.is_some_and(|e| !e.is_null()) {
                self.spoiled = true;
            }
            if self.id.is_none() {
                self.id = chunk.id;
                self.created = chunk.created;
            }
            for choice in chunk.choices {
                let present =
                    |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
                if choice.index.unwrap_or(0) != 0 || choice.finish_reason.is_some() {
                    self.spoiled = true;
                }
                let Some(delta) = choice.delta else { continue };
                if present(&delta.refusal)
                    || present(&delta.tool_calls)
                    || present(&delta.function_call)
                {
                    self.spoiled = true;
                }
                if let Some(content) = delta.content {
                    self.text.push_str(&content);
                }
            }
        }
        if self.text.len() > TEXT_CAP {
            self.spoiled = true;
        }
        if self.spoiled {
            self.text = String::new();
        }
    }

    /// The partial answer, when it can be continued.
    fn prefill(&mut self) -> Option<Prefill> {
        self.read();
        if self.spoiled || self.text.is_empty() {
            return None;
        }
        Some(Prefill {
            text: std::mem::take(&mut self.text),
            id: self.id.take(),
            created: self.created,
        })
    }
}

/// Rewrites the continuation's events into the first attempt's answer.
struct Splice {
    id: Option<String>,
    created: Option<u64>,
    /// The comment naming the continuing model, until it is sent.
    comment: Option<Bytes>,
}

impl Splice {
    fn new(prefill: Prefill, model: &str) -> Self {
        // A model name is the config's: it cannot break the stream's lines.
        let model: String = model.chars().filter(|c| !c.is_control()).collect();
        Splice {
            id: prefill.id,
            created: prefill.created,
            comment: Some(Bytes::from(format!(
                ": {}: {model}\n\n",
                sentinel_layer::headers::CONTINUED_MODEL
            ))),
        }
    }

    /// Whole events of the continuation, as the client gets them.
    fn rewrite(&mut self, events: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(events.len() + 64);
        for line in events.split_inclusive(|&b| b == b'\n') {
            let Some(payload) = line.strip_prefix(b"data:") else {
                out.extend_from_slice(line);
                continue;
            };
            let payload = payload.trim_ascii();
            if payload == b"[DONE]" {
                if let Some(comment) = self.comment.take() {
                    out.extend_from_slice(&comment);
                }
                out.extend_from_slice(line);
                continue;
            }
            let Ok(serde_json::Value::Object(mut chunk)) = serde_json::from_slice(payload) else {
                out.extend_from_slice(line);
                continue;
            };
            if chunk.contains_key("error") && !chunk.contains_key("choices") {
                // The continuation failed too: its error event ends the
                // stream, after the comment.
                if let Some(comment) = self.comment.take() {
                    out.extend_from_slice(&comment);
                }
                out.extend_from_slice(line);
                continue;
            }
            if let Some(id) = &self.id
                && chunk.contains_key("id")
            {
                chunk.insert("id".into(), id.clone().into());
            }
            if let Some(created) = self.created
                && chunk.contains_key("created")
            {
                chunk.insert("created".into(), created.into());
            }
            if let Some(choices) = chunk.get_mut("choices").and_then(|c| c.as_array_mut()) {
                for choice in choices {
                    if let Some(delta) = choice.get_mut("delta").and_then(|d| d.as_object_mut()) {
                        delta.remove("role");
                    }
                }
            }
            let end: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            out.extend_from_slice(b"data: ");
            // Writing a `Value` to a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut out, &chunk);
            out.extend_from_slice(end);
        }
        Bytes::from(out)
    }
}

/// A continuation under way: the body the client reads after the break.
pub(crate) struct Resuming {
    state: State,
}

type Started = Pin<Box<dyn Future<Output = Option<(Body, Splice)>> + Send>>;

enum State {
    /// Waiting for the continuation's first token; `fallback` is the first
    /// attempt's error event.
    Starting {
        future: Started,
        fallback: Bytes,
    },
    Streaming {
        body: Body,
        splice: Splice,
    },
    Done,
}

impl Resuming {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, sentinel_layer::BoxError>>> {
        loop {
            match &mut self.state {
                State::Starting { future, fallback } => match future.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some((body, splice))) => {
                        self.state = State::Streaming { body, splice };
                    }
                    Poll::Ready(None) => {
                        let event = std::mem::take(fallback);
                        self.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::data(event))));
                    }
                },
                State::Streaming { body, splice } => {
                    match http_body::Body::poll_frame(Pin::new(body), cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(frame))) => {
                            return Poll::Ready(Some(Ok(match frame.into_data() {
                                Ok(data) => Frame::data(splice.rewrite(&data)),
                                Err(trailers) => trailers,
                            })));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            self.state = State::Done;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        Poll::Ready(None) => {
                            let comment = splice.comment.take();
                            self.state = State::Done;
                            return Poll::Ready(comment.map(|c| Ok(Frame::data(c))));
                        }
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &str, delta: serde_json::Value, finish: Option<&str>) -> String {
        let event = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        format!("data: {event}\n\n")
    }

    fn transcript(events: &[String]) -> Transcript {
        let mut t = Transcript::default();
        for e in events {
            t.record(e.as_bytes());
        }
        t
    }

    #[test]
    fn the_partial_answer_is_read_from_what_was_sent() {
        let events = [
            chunk(
                "a",
                serde_json::json!({ "role": "assistant", "content": "" }),
                None,
            ),
            chunk("a", serde_json::json!({ "content": "Hello " }), None),
            ": keep-alive\n\n".to_owned(),
            chunk("a", serde_json::json!({ "content": "wor" }), None),
        ];
        let prefill = transcript(&events).prefill().unwrap();
        assert_eq!(prefill.text, "Hello wor");
        assert_eq!(prefill.id.as_deref(), Some("a"));
        assert_eq!(prefill.created, Some(7));
    }

    #[test]
    fn answers_a_prefill_cannot_carry_on_are_not_continued() {
        let text = chunk("a", serde_json::json!({ "content": "x" }), None);
        for spoiler in [
            chunk("a", serde_json::json!({}), Some("stop")),
            chunk(
                "a",
                serde_json::json!({ "tool_calls": [{ "index": 0 }] }),
                None,
            ),
            chunk("a", serde_json::json!({ "refusal": "no" }), None),
            "data: {\"error\":{\"message\":\"x\"}}\n\n".to_owned(),
            "data: {\"id\":\"a\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"y\"}}]}\n\n"
                .to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ] {
            assert!(
                transcript(&[text.clone(), spoiler.clone()])
                    .prefill()
                    .is_none(),
                "{spoiler}"
            );
        }
        // Nothing said yet: nothing to continue.
        let role = chunk("a", serde_json::json!({ "role": "assistant" }), None);
        assert!(transcript(&[role]).prefill().is_none());
    }

    #[test]
    fn a_long_answer_is_read_as_it_goes_and_capped() {
        let piece = "x".repeat(1000);
        let event = chunk("a", serde_json::json!({ "content": piece }), None);
        let mut t = Transcript::default();
        for _ in 0..200 {
            t.record(event.as_bytes());
            assert!(t.raw.len() <= RAW_CAP + event.len());
        }
        assert_eq!(t.prefill().unwrap().text.len(), 200_000);
        let mut t = Transcript::default();
        for _ in 0..(TEXT_CAP / 1000 + 1) {
            t.record(event.as_bytes());
        }
        assert!(t.prefill().is_none(), "over the text cap");
        assert!(t.raw.is_empty() && t.text.is_empty());
    }

    #[test]
    fn the_prefill_is_the_last_message() {
        let body = Bytes::from(
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.2,"model":"b"}"#,
        );
        let out: serde_json::Value =
            serde_json::from_slice(&with_prefill(&body, "Hel").unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "messages": [
                    { "role": "user", "content": "hi" },
                    { "role": "assistant", "content": "Hel" },
                ],
                "stream": true, "temperature": 0.2, "model": "b",
            })
        );
        assert!(with_prefill(&Bytes::from(r#"{"messages":"hi"}"#), "x").is_none());
        assert!(with_prefill(&Bytes::from("[]"), "x").is_none());
    }

    #[test]
    fn the_continuation_is_spliced_into_the_first_answer() {
        let prefill = Prefill {
            text: "Hel".into(),
            id: Some("first".into()),
            created: Some(1),
        };
        let mut splice = Splice::new(prefill, "b\nmodel");
        let events = format!(
            "{}{}data: [DONE]\n\n",
            chunk(
                "second",
                serde_json::json!({ "role": "assistant", "content": "lo" }),
                None
            ),
            chunk("second", serde_json::json!({}), Some("stop")),
        );
        let out = splice.rewrite(events.as_bytes());
        let text = std::str::from_utf8(&out).unwrap();
        let chunks: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        assert_eq!(chunks.len(), 2);
        for c in &chunks {
            assert_eq!(c["id"], "first");
            assert_eq!(c["created"], 1);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            serde_json::json!({ "content": "lo" })
        );
        assert!(
            text.ends_with(": x-sentinel-continued-model: bmodel\n\ndata: [DONE]\n\n"),
            "{text}"
        );
        // The comment goes once.
        assert!(!splice.rewrite(b"data: [DONE]\n\n").starts_with(b":"));
        assert!(splice.comment.is_none());
    }
}
