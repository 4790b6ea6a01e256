//! Token usage, read from answers on the way to the client and counted
//! per model. (Streams ask for their usage chunk through the layer's
//! `stream_usage` option.)

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use sentinel_core::{Pricing, Tier};
use sentinel_layer::RoutingDecision;
use serde::Deserialize;

use crate::metrics as m;
use crate::sse::contains;

/// The usage counters of one (tier, provider, model), registered once.
pub(super) struct UsageCounters {
    input: Counter,
    output: Counter,
    cost: Counter,
    missing: Counter,
}

/// [`UsageCounters`] by (tier, provider, model): counter handles are looked
/// up once per model instead of once per response (a registry lookup with
/// freshly allocated labels each time). It holds one entry per model the
/// tier configs have named, as the metrics registry itself does.
#[derive(Default)]
pub(super) struct UsageCounterCache(RwLock<HashMap<ModelKey, Arc<UsageCounters>>>);

/// Tier, provider, model.
pub(super) type ModelKey = (Tier, Arc<str>, Arc<str>);

impl UsageCounterCache {
    pub(super) fn get(&self, decision: &RoutingDecision) -> Arc<UsageCounters> {
        let key = (
            decision.tier,
            decision.provider.clone(),
            decision.model.clone(),
        );
        if let Some(counters) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return counters.clone();
        }
        let labels = [
            ("tier", decision.tier.as_str().to_owned()),
            ("model", decision.model.to_string()),
            ("provider", decision.provider.to_string()),
        ];
        let kind = |kind: &'static str| [&labels[..], &[("kind", kind.to_owned())]].concat();
        let counters = Arc::new(UsageCounters {
            input: ::metrics::counter!(m::TOKENS, &kind("input")),
            output: ::metrics::counter!(m::TOKENS, &kind("output")),
            cost: ::metrics::counter!(m::COST_MICRO_USD, &labels),
            missing: ::metrics::counter!(m::USAGE_MISSING, &labels),
        });
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(counters)
            .clone()
    }
}

/// Largest non-streaming body kept for reading `usage`.
pub(super) const USAGE_BODY_CAP: usize = 4 << 20;

/// Token usage read from a response, recorded when the body ends.
pub(super) struct Usage {
    pub(super) counters: Arc<UsageCounters>,
    pub(super) pricing: Option<Pricing>,
    pub(super) sse: bool,
    /// Non-streaming: the body so far. SSE: the incomplete last line.
    pub(super) buffer: BytesMut,
    pub(super) overflow: bool,
    pub(super) found: Option<(u64, u64)>,
    pub(super) finished: bool,
    /// The attempt's client span (tracing on, sampled): it ends with the
    /// body and carries the usage.
    pub(super) trace: Option<crate::trace::AttemptSpan>,
}

impl Usage {
    /// The provider said in band that the answer failed.
    pub(super) fn provider_error(&mut self) {
        if let Some(trace) = self.trace.as_mut() {
            trace.broke("provider_error");
        }
    }

    /// Drops the usage of a body that broke (`reason`): nothing is
    /// recorded, and the attempt's span says why it failed.
    pub(super) fn abandon(&mut self, reason: &'static str) {
        self.finished = true;
        if let Some(trace) = self.trace.as_mut() {
            trace.broke(reason);
        }
    }

    pub(super) fn feed(&mut self, data: &Bytes) {
        if self.sse {
            self.feed_sse(data);
        } else if !self.overflow {
            if self.buffer.len() + data.len() > USAGE_BODY_CAP {
                self.overflow = true;
                self.buffer = BytesMut::new();
            } else {
                self.buffer.extend_from_slice(data);
            }
        }
    }

    /// Reads the whole lines of an SSE stream in place; only an incomplete
    /// last line is copied, to be completed by the next frame.
    fn feed_sse(&mut self, data: &[u8]) {
        let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
            self.carry(data);
            return;
        };
        let (lines, rest) = data.split_at(last_newline + 1);
        if self.buffer.is_empty() {
            self.scan_lines(lines);
        } else {
            self.buffer.extend_from_slice(lines);
            let carried = std::mem::take(&mut self.buffer);
            self.scan_lines(&carried);
        }
        self.carry(rest);
    }

    fn carry(&mut self, partial: &[u8]) {
        if self.buffer.len() + partial.len() > USAGE_BODY_CAP {
            self.buffer.clear();
        } else {
            self.buffer.extend_from_slice(partial);
        }
    }

    fn scan_lines(&mut self, lines: &[u8]) {
        if !contains(lines, b"\"usage\"") {
            return;
        }
        for line in lines.split(|&b| b == b'\n') {
            if let Some(payload) = line.strip_prefix(b"data:")
                && let Some(found) = usage_in_event(payload)
            {
                self.found = Some(found);
            }
        }
    }

    /// Records the usage. Runs when the body ends, or when it is dropped
    /// (a server that stops at `Content-Length` never polls for the end).
    pub(super) fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if !self.sse && !self.overflow {
            self.found = usage_of(&self.buffer);
        }
        let Some((input, output)) = self.found else {
            self.counters.missing.increment(1);
            return;
        };
        if let Some(trace) = self.trace.as_mut() {
            trace.usage(input, output);
        }
        self.counters.input.increment(input);
        self.counters.output.increment(output);
        if let Some(p) = self.pricing {
            let micro = (p.cost_usd(input, output) * 1_000_000.0).round() as u64;
            self.counters.cost.increment(micro);
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The parts of a response (or of an SSE event) that carry usage; every
/// other member is skipped without building a tree.
#[derive(Deserialize)]
pub(super) struct UsageDocument {
    usage: Option<TokenUsage>,
    /// The Responses API's `response.completed` event.
    response: Option<ResponseDocument>,
}

#[derive(Deserialize)]
pub(super) struct ResponseDocument {
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
pub(super) struct TokenUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// `(input, output)` tokens of a usage object: chat completions
/// (`prompt_tokens`, `completion_tokens`) or responses (`input_tokens`,
/// `output_tokens`), at the top level or under `response` (the Responses
/// API's `response.completed` event).
pub(super) fn usage_of(json: &[u8]) -> Option<(u64, u64)> {
    let document: UsageDocument = serde_json::from_slice(json).ok()?;
    let usage = document
        .usage
        .or_else(|| document.response.and_then(|r| r.usage))?;
    Some((
        usage.prompt_tokens.or(usage.input_tokens)?,
        usage.completion_tokens.or(usage.output_tokens)?,
    ))
}

pub(super) fn usage_in_event(payload: &[u8]) -> Option<(u64, u64)> {
    // Only events that mention usage are parsed.
    if !contains(payload, b"\"usage\"") {
        return None;
    }
    usage_of(payload.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_in_sse_lines_split_anywhere() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut usage = noop_usage(true);
            usage.feed(&Bytes::copy_from_slice(&stream.as_bytes()[..split]));
            usage.feed(&Bytes::copy_from_slice(&stream.as_bytes()[split..]));
            assert_eq!(usage.found, Some((4, 6)), "split at {split}");
            usage.abandon("broken");
        }
    }

    fn noop_usage(sse: bool) -> Usage {
        Usage {
            counters: Arc::new(UsageCounters {
                input: Counter::noop(),
                output: Counter::noop(),
                cost: Counter::noop(),
                missing: Counter::noop(),
            }),
            pricing: None,
            sse,
            buffer: BytesMut::new(),
            overflow: false,
            found: None,
            finished: false,
            trace: None,
        }
    }

    proptest::proptest! {
        #![proptest_config(sentinel_testkit::hostile::config())]

        /// The usage scanner over arbitrary bytes cut anywhere: never a
        /// panic, and what it keeps stays under its cap.
        #[test]
        fn the_usage_scanner_takes_any_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
            sse in proptest::prelude::any::<bool>(),
        ) {
            let mut usage = noop_usage(sse);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for end in cuts.into_iter().chain([bytes.len()]) {
                usage.feed(&Bytes::copy_from_slice(&bytes[start..end]));
                start = end;
                proptest::prop_assert!(usage.buffer.len() <= USAGE_BODY_CAP);
            }
            usage.finish();
        }

        /// A stream with content chunks and one usage chunk, cut anywhere
        /// and with any line ends: the usage is found.
        #[test]
        fn the_usage_chunk_is_found_however_the_stream_is_cut(
            contents in proptest::collection::vec("[a-z \"{}:,]{0,30}", 0..5),
            prompt in 0u64..1_000_000,
            completion in 0u64..1_000_000,
            crlf in proptest::prelude::any::<bool>(),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut stream = String::new();
            for text in &contents {
                let chunk = serde_json::json!({ "choices": [{ "delta": { "content": text } }] });
                stream.push_str(&format!("data: {chunk}{end}{end}"));
            }
            stream.push_str(&format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}}}{end}{end}data: [DONE]{end}{end}"
            ));
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut usage = noop_usage(true);
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                usage.feed(&Bytes::copy_from_slice(&bytes[start..cut]));
                start = cut;
            }
            proptest::prop_assert_eq!(usage.found, Some((prompt, completion)));
            usage.abandon("broken");
        }
    }

    #[test]
    fn usage_is_read_from_chat_and_responses_shapes() {
        let chat = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
        assert_eq!(usage_of(chat), Some((10, 5)));
        let responses = br#"{"usage":{"input_tokens":7,"output_tokens":3}}"#;
        assert_eq!(usage_of(responses), Some((7, 3)));
        let completed = br#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":1,"output_tokens":2}}}"#;
        assert_eq!(usage_of(completed), Some((1, 2)));
        assert_eq!(usage_of(br#"{"usage":null}"#), None);
        assert_eq!(usage_of(br#"{"usage":{"prompt_tokens":1}}"#), None);
        assert_eq!(usage_of(b"not json"), None);
        assert_eq!(
            usage_in_event(br#" {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6}}"#),
            Some((4, 6))
        );
        assert_eq!(
            usage_in_event(br#" {"choices":[{"delta":{"content":"usage"}}]}"#),
            None
        );
    }
}
