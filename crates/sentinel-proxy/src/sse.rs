//! Server-sent events passed through to the client, whole events at a time.
//!
//! [`Framer`] hands the client only complete events (each ended by a blank
//! line), so that when an upstream stream breaks, the error event Sentinel
//! appends starts on an event boundary: the broken event's partial bytes
//! were never sent and are dropped, never glued to the error line. It also
//! leaves out the usage-only chunk when Sentinel asked for it on the
//! client's behalf. What it holds back is bounded ([`EVENT_CAP`]): an
//! upstream that never ends an event cannot make Sentinel buffer the whole
//! answer. It scans each byte once, carrying its state from one chunk to
//! the next, and a chunk that ends on a blank line (the usual case) passes
//! through without a copy.
//!
//! Line ends follow the SSE spec: CRLF, LF or CR; an empty line ends an
//! event.

use bytes::{Bytes, BytesMut};
use sentinel_layer::SentinelError;

/// The largest event held back while it is incomplete.
pub(crate) const EVENT_CAP: usize = 1 << 20;

/// An event grew past [`EVENT_CAP`] without ending.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventTooLarge;

/// The API a stream belongs to: it decides the shape of the error event.
pub(crate) use sentinel_layer::StreamApi as Api;

/// Cuts an SSE stream into whole events. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Framer {
    /// Bytes after the last whole event.
    pending: BytesMut,
    /// How much of `pending` has been scanned.
    scanned: usize,
    /// The current line has no bytes yet.
    line_empty: bool,
    /// The last byte scanned was a CR (a following LF belongs to it).
    prev_cr: bool,
    /// Ends of the events found in `pending` since the last cut.
    boundaries: Vec<usize>,
    hide_usage: bool,
    cap: usize,
    api: Api,
    /// The Responses API's highest `sequence_number` passed on.
    last_sequence: Option<u64>,
    /// The last cut ended on a CR at the end of what had arrived, so an LF
    /// that comes next belongs to that event; `Some(hidden)` says whether
    /// the event was left out.
    after_cr_cut: Option<bool>,
    /// The stream's own end was passed on: `[DONE]` (chat completions),
    /// `response.completed` / `response.incomplete` / `response.failed`, or
    /// a provider's error event.
    complete: bool,
}

impl Framer {
    /// A framer for a stream of `api`; `hide_usage` leaves out the
    /// usage-only chunk (`"choices":[]` with a `usage`).
    pub(crate) fn new(api: Api, hide_usage: bool) -> Self {
        Self::with_cap(api, hide_usage, EVENT_CAP)
    }

    pub(crate) fn with_cap(api: Api, hide_usage: bool, cap: usize) -> Self {
        Framer {
            pending: BytesMut::new(),
            scanned: 0,
            line_empty: true,
            prev_cr: false,
            boundaries: Vec::new(),
            hide_usage,
            cap,
            api,
            last_sequence: None,
            after_cr_cut: None,
            complete: false,
        }
    }

    /// Whether the stream's own end (its end marker, or a provider's error
    /// event) has been passed on: a stream that ends without it was cut
    /// short, however cleanly it closed.
    pub(crate) fn complete(&self) -> bool {
        self.complete
    }

    /// Takes the next chunk from upstream; returns the whole events it
    /// completes, in order (`None`: nothing to send yet).
    pub(crate) fn push(&mut self, mut data: Bytes) -> Result<Option<Bytes>, EventTooLarge> {
        let mut lf = None;
        if let Some(hidden) = self.after_cr_cut.take()
            && data.first() == Some(&b'\n')
        {
            // The LF of the CRLF that ended the last event goes with it.
            let byte = data.split_to(1);
            self.prev_cr = false;
            if !hidden {
                lf = Some(byte);
            }
        }
        let events = self.push_events(data)?;
        Ok(match (lf, events) {
            (None, events) => events,
            (Some(lf), None) => Some(lf),
            (Some(lf), Some(events)) => {
                let mut out = BytesMut::with_capacity(1 + events.len());
                out.extend_from_slice(&lf);
                out.extend_from_slice(&events);
                Some(out.freeze())
            }
        })
    }

    fn push_events(&mut self, data: Bytes) -> Result<Option<Bytes>, EventTooLarge> {
        if self.pending.is_empty()
            && data.ends_with(b"\n\n")
            && !(self.hide_usage && contains(&data, b"\"usage\""))
        {
            // Everything before ended on a boundary and so does this chunk.
            self.line_empty = true;
            self.prev_cr = false;
            self.note_sequence(&data);
            return Ok(Some(data));
        }
        self.pending.extend_from_slice(&data);
        self.scan();
        let Some(&end) = self.boundaries.last() else {
            return self.check_cap().map(|()| None);
        };
        let whole = self.pending.split_to(end).freeze();
        self.scanned -= end;
        let boundaries = std::mem::take(&mut self.boundaries);
        self.check_cap()?;
        let (out, last_hidden) = if self.hide_usage && contains(&whole, b"\"usage\"") {
            without_usage_only(&whole, &boundaries)
        } else {
            (whole.clone(), false)
        };
        if self.pending.is_empty() && whole.last() == Some(&b'\r') {
            self.after_cr_cut = Some(last_hidden);
        }
        self.note_sequence(&out);
        Ok((!out.is_empty()).then_some(out))
    }

    /// The upstream stream ended cleanly: what is left (an event without
    /// its blank line is passed on as it is; a client drops it).
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        let rest = std::mem::take(&mut self.pending).freeze();
        self.note_sequence(&rest);
        let hidden = self.hide_usage && is_usage_only(&rest);
        (!rest.is_empty() && !hidden).then_some(rest)
    }

    /// The upstream stream broke: the partial event is dropped and the
    /// error event for the client is returned. It starts on an event
    /// boundary, since only whole events were passed on.
    pub(crate) fn fail(&mut self, error: &SentinelError) -> Bytes {
        self.pending.clear();
        error.sse_event(self.api, self.last_sequence.map(|n| n + 1))
    }

    fn check_cap(&self) -> Result<(), EventTooLarge> {
        if self.pending.len() > self.cap {
            Err(EventTooLarge)
        } else {
            Ok(())
        }
    }

    /// Scans the bytes not yet scanned, recording where events end.
    fn scan(&mut self) {
        for at in self.scanned..self.pending.len() {
            match self.pending[at] {
                b'\n' if self.prev_cr => {
                    // The LF of a CRLF: an event that ended at the CR ends after it.
                    self.prev_cr = false;
                    if let Some(end) = self.boundaries.last_mut()
                        && *end == at
                    {
                        *end = at + 1;
                    }
                }
                b @ (b'\r' | b'\n') => {
                    if self.line_empty {
                        self.boundaries.push(at + 1);
                    }
                    self.line_empty = true;
                    self.prev_cr = b == b'\r';
                }
                _ => {
                    self.line_empty = false;
                    self.prev_cr = false;
                }
            }
        }
        self.scanned = self.pending.len();
    }

    /// Remembers what the client has been given: the end marker, and the
    /// last `"sequence_number":N` (Responses API).
    fn note_sequence(&mut self, out: &[u8]) {
        if !self.complete {
            // A provider's error event ends the stream as well: the client
            // knows the answer failed, and nothing follows it.
            self.complete = ends_the_stream(self.api, out) || carries_error(out);
        }
        if self.api == Api::Responses
            && let Some(n) = last_sequence_number(out)
        {
            self.last_sequence = Some(self.last_sequence.map_or(n, |m| m.max(n)));
        }
    }
}

/// Whether events carry the stream's own end: a `data: [DONE]` line (chat
/// completions), or an `event:` line naming `response.completed`,
/// `response.incomplete` or `response.failed` (Responses API). Read line by
/// line, so text that merely quotes a marker does not count.
fn ends_the_stream(api: Api, events: &[u8]) -> bool {
    if !(contains(events, b"[DONE]") || contains(events, b"event:")) {
        return false;
    }
    events
        .split(|&b| b == b'\n' || b == b'\r')
        .any(|line| match api {
            Api::Chat => line
                .strip_prefix(b"data:")
                .is_some_and(|p| p.trim_ascii() == b"[DONE]"),
            Api::Responses => line.strip_prefix(b"event:").is_some_and(|e| {
                matches!(
                    e.trim_ascii(),
                    b"response.completed" | b"response.incomplete" | b"response.failed"
                )
            }),
        })
}

/// The events of `whole` (ending at `boundaries`) minus the usage-only
/// ones, and whether the last one was left out.
fn without_usage_only(whole: &Bytes, boundaries: &[usize]) -> (Bytes, bool) {
    let mut out = BytesMut::with_capacity(whole.len());
    let mut start = 0;
    let mut hidden = false;
    for &end in boundaries {
        let event = &whole[start..end];
        hidden = is_usage_only(event);
        if !hidden {
            out.extend_from_slice(event);
        }
        start = end;
    }
    (out.freeze(), hidden)
}

/// Whether an event is the usage-only chat chunk: `"choices":[]` with a
/// `usage` object.
pub(crate) fn is_usage_only(event: &[u8]) -> bool {
    if !contains(event, b"\"usage\"") {
        return false;
    }
    event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|payload| {
            serde_json::from_slice::<serde_json::Value>(payload.trim_ascii()).ok()
        })
        .any(|v| {
            v.get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(Vec::is_empty)
                && v.get("usage").is_some_and(|u| u.is_object())
        })
}

/// The number after the last `"sequence_number":` in `bytes`, if any.
fn last_sequence_number(bytes: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\":";
    let at = bytes.windows(KEY.len()).rposition(|w| w == KEY)?;
    let digits: Vec<u8> = bytes[at + KEY.len()..]
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// What the first events of a stream say, read until the first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Nothing of the answer yet: comments, the role announcement
    /// (`"delta":{"role":"assistant"}`), `response.created`.
    Preamble,
    /// The answer began: content, a tool call, a refusal, a finish reason,
    /// usage, `[DONE]`, or any Responses API event past the preamble.
    Token,
    /// An error event, or an event that is not JSON.
    Error,
}

/// The data payloads of whole events, in order.
pub(crate) fn payloads(events: &[u8]) -> impl Iterator<Item = &[u8]> {
    events
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(<[u8]>::trim_ascii)
}

/// Reads whole events until one decides how the stream began.
pub(crate) fn first_token(events: &[u8]) -> Start {
    for payload in payloads(events) {
        if payload == b"[DONE]" {
            return Start::Token;
        }
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return Start::Error;
        };
        if is_error(&event) {
            return Start::Error;
        }
        if let Some(kind) = event.get("type").and_then(|t| t.as_str()) {
            // The Responses API names its events.
            if !matches!(
                kind,
                "response.created" | "response.in_progress" | "response.queued"
            ) {
                return Start::Token;
            }
            continue;
        }
        let Some(choices) = event.get("choices").and_then(|c| c.as_array()) else {
            continue;
        };
        if choices.is_empty() && event.get("usage").is_some_and(|u| u.is_object()) {
            return Start::Token;
        }
        let began = choices.iter().any(|choice| {
            let delta = choice.get("delta");
            let field = |name: &str| delta.and_then(|d| d.get(name));
            let non_empty = |v: Option<&serde_json::Value>| match v {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            };
            non_empty(field("content"))
                || non_empty(field("tool_calls"))
                || non_empty(field("function_call"))
                || non_empty(field("refusal"))
                || non_empty(field("reasoning_content"))
                || non_empty(field("reasoning"))
                || non_empty(choice.get("finish_reason"))
        });
        if began {
            return Start::Token;
        }
    }
    Start::Preamble
}

/// Whether an event is a provider's error: a top-level `error` (chat
/// completions), or `"type":"error"` / `"response.failed"` (Responses).
fn is_error(event: &serde_json::Value) -> bool {
    event
        .get("error")
        .is_some_and(|e| !e.is_null() && event.get("choices").is_none())
        || matches!(
            event.get("type").and_then(|t| t.as_str()),
            Some("error" | "response.failed")
        )
}

/// Whether whole events carry a provider's error event.
pub(crate) fn carries_error(events: &[u8]) -> bool {
    (contains(events, b"\"error\"") || contains(events, b"response.failed"))
        && payloads(events).any(|p| {
            serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|event| is_error(&event))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks`, collecting what the client gets.
    fn run(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<u8>, EventTooLarge> {
        let mut out = Vec::new();
        for chunk in chunks {
            if let Some(b) = framer.push(Bytes::copy_from_slice(chunk))? {
                out.extend_from_slice(&b);
            }
        }
        Ok(out)
    }

    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    const CONTENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\n";

    #[test]
    fn a_stream_is_complete_at_its_end_marker_or_a_providers_error_event() {
        let mut f = Framer::new(Api::Chat, false);
        run(&mut f, &[CONTENT.as_bytes()]).unwrap();
        assert!(!f.complete(), "content alone is a cut answer");
        // Quoting the marker in text is not the marker.
        run(
            &mut f,
            &[b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n"],
        )
        .unwrap();
        assert!(!f.complete());
        run(&mut f, &[b"data: [DONE]\n\n"]).unwrap();
        assert!(f.complete());
        let mut f = Framer::new(Api::Chat, false);
        let error = b"data: {\"error\":{\"message\":\"m\",\"type\":\"server_error\"}}\n\n";
        run(&mut f, &[CONTENT.as_bytes(), error]).unwrap();
        assert!(f.complete(), "the provider's error event ends the stream");
        let mut f = Framer::new(Api::Responses, false);
        run(
            &mut f,
            &[b"event: response.output_text.delta\ndata: {}\n\n"],
        )
        .unwrap();
        assert!(!f.complete());
        run(&mut f, &[b"event: response.completed\ndata: {}\n\n"]).unwrap();
        assert!(f.complete());
    }

    #[test]
    fn whole_events_pass_and_a_partial_one_waits() {
        let mut f = Framer::new(Api::Chat, false);
        let out = run(&mut f, &[b"data: a\n\ndata: b", b"c\n", b"\ndata: d"]).unwrap();
        assert_eq!(out, b"data: a\n\ndata: bc\n\n");
        assert_eq!(f.finish().as_deref(), Some(&b"data: d"[..]));
    }

    #[test]
    fn crlf_and_cr_line_ends_end_events() {
        let mut f = Framer::new(Api::Chat, false);
        let out = run(&mut f, &[b"data: a\r\n\r", b"\ndata: b\r\rdata: c"]).unwrap();
        // The event ended at the CR; its LF goes out with the next event.
        assert_eq!(out, b"data: a\r\n\r\ndata: b\r\r");
        let mut f = Framer::new(Api::Chat, false);
        let out = run(&mut f, &[b"data: a\r\n\r\ndata: b\n\r\n"]).unwrap();
        assert_eq!(out, b"data: a\r\n\r\ndata: b\n\r\n");
    }

    #[test]
    fn the_usage_only_chunk_is_hidden_only_when_asked() {
        let stream = format!("{CONTENT}{USAGE}data: [DONE]\n\n");
        let mut f = Framer::new(Api::Chat, true);
        let out = run(&mut f, &[stream.as_bytes()]).unwrap();
        assert_eq!(out, format!("{CONTENT}data: [DONE]\n\n").as_bytes());
        // Split anywhere, the same.
        for split in 0..stream.len() {
            let mut f = Framer::new(Api::Chat, true);
            let (a, b) = stream.as_bytes().split_at(split);
            let out = run(&mut f, &[a, b]).unwrap();
            assert_eq!(
                out,
                format!("{CONTENT}data: [DONE]\n\n").as_bytes(),
                "{split}"
            );
        }
        let mut f = Framer::new(Api::Chat, false);
        assert_eq!(
            run(&mut f, &[stream.as_bytes()]).unwrap(),
            stream.as_bytes()
        );
        // A usage-only event without its blank line at the end: hidden too.
        let mut f = Framer::new(Api::Chat, true);
        assert_eq!(run(&mut f, &[USAGE.trim_end().as_bytes()]).unwrap(), b"");
        assert_eq!(f.finish(), None);
    }

    /// Found by `whole_events_survive_any_cuts`: a hidden usage event
    /// ending in CRLF CRLF, cut between its last CR and LF. The LF belongs
    /// to the hidden event and must not reach the client on its own.
    #[test]
    fn a_hidden_event_cut_inside_its_last_crlf_stays_hidden() {
        let usage = USAGE.replace("\n\n", "\r\n\r\n");
        let stream = format!("data: a\n\n{usage}");
        let (a, b) = stream.as_bytes().split_at(stream.len() - 1);
        let mut f = Framer::new(Api::Chat, true);
        let mut out = run(&mut f, &[a, b]).unwrap();
        out.extend(f.finish().into_iter().flatten());
        assert_eq!(out, b"data: a\n\n");
        // Shown, the same event keeps its LF.
        let mut f = Framer::new(Api::Chat, false);
        let mut out = run(&mut f, &[a, b]).unwrap();
        out.extend(f.finish().into_iter().flatten());
        assert_eq!(out, stream.as_bytes());
    }

    #[test]
    fn an_event_that_never_ends_is_bounded() {
        let mut f = Framer::with_cap(Api::Chat, false, 64);
        assert_eq!(run(&mut f, &[&[b'x'; 60]]), Ok(Vec::new()));
        assert_eq!(run(&mut f, &[&[b'x'; 10]]), Err(EventTooLarge));
        // Whole events before the long one still go out.
        let mut f = Framer::with_cap(Api::Chat, false, 64);
        let mut chunk = b"data: a\n\n".to_vec();
        chunk.extend_from_slice(&[b'y'; 100]);
        assert_eq!(f.push(Bytes::from(chunk)), Err(EventTooLarge));
    }

    #[test]
    fn the_error_event_follows_whole_events_only() {
        let mut f = Framer::new(Api::Chat, false);
        let out = run(&mut f, &[b"data: {\"a\":1}\n\ndata: {\"trunc"]).unwrap();
        let error = f.fail(&SentinelError::new(
            sentinel_layer::ErrorCode::UpstreamFailed,
            "broke",
        ));
        let mut all = out.clone();
        all.extend_from_slice(&error);
        let text = String::from_utf8(all).unwrap();
        assert_eq!(
            text,
            "data: {\"a\":1}\n\ndata: {\"error\":{\"code\":\"upstream_failed\",\"message\":\"broke\",\"param\":null,\"type\":\"server_error\"}}\n\n"
        );
    }

    #[test]
    fn responses_streams_get_an_error_event_with_the_next_sequence_number() {
        let mut f = Framer::new(Api::Responses, false);
        run(
            &mut f,
            &[b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\": 7}\n\nevent: x\ndata: {\"sequence_number\":9"],
        )
        .unwrap();
        let error = f.fail(&SentinelError::new(
            sentinel_layer::ErrorCode::UpstreamTimeout,
            "stalled",
        ));
        let text = std::str::from_utf8(&error).unwrap();
        let data = text
            .strip_prefix("event: error\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "type": "error", "code": "upstream_timeout", "message": "stalled", "param": null, "sequence_number": 8 })
        );
    }

    /// An SSE stream of whole events, built from parts.
    fn sse_event() -> impl Strategy<Value = Vec<u8>> {
        let line_end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])];
        (
            prop::collection::vec("[ -~]{0,40}", 1..4),
            line_end.clone(),
            any::<bool>(),
        )
            .prop_map(|(lines, end, usage)| {
                let mut event = Vec::new();
                for line in lines {
                    // A line's bytes never hold a line end of their own.
                    event.extend_from_slice(b"data: ");
                    event.extend_from_slice(line.as_bytes());
                    event.extend_from_slice(end);
                }
                if usage {
                    event.extend_from_slice(USAGE.trim_end().as_bytes());
                    event.extend_from_slice(end);
                }
                event.extend_from_slice(end);
                event
            })
    }

    /// Every offset at which an event of `bytes` ends, read in one go:
    /// after an empty line's terminator, and, for a CRLF, after its CR too
    /// (what an incremental reader cut between them sends).
    fn event_ends(bytes: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut line_empty = true;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\r' | b'\n' => {
                    let crlf = bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n');
                    if line_empty {
                        ends.push(i + 1);
                        if crlf {
                            ends.push(i + 2);
                        }
                    }
                    line_empty = true;
                    i += if crlf { 2 } else { 1 };
                }
                _ => {
                    line_empty = false;
                    i += 1;
                }
            }
        }
        ends
    }

    proptest! {
        #![proptest_config(sentinel_testkit::hostile::config())]

        /// Arbitrary bytes cut anywhere: never a panic, the output is a
        /// prefix of the input (nothing added, nothing reordered), and a
        /// failure's error event starts right after a whole event.
        #[test]
        fn arbitrary_bytes_pass_in_order_and_errors_start_on_a_boundary(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            cuts in prop::collection::vec(0usize..400, 0..8),
            cap in 1usize..200,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut f = Framer::with_cap(Api::Chat, false, cap);
            let mut out = Vec::new();
            let mut start = 0;
            let mut too_large = false;
            for end in cuts.into_iter().chain([bytes.len()]) {
                match f.push(Bytes::copy_from_slice(&bytes[start..end])) {
                    Ok(Some(b)) => out.extend_from_slice(&b),
                    Ok(None) => {}
                    Err(EventTooLarge) => { too_large = true; break; }
                }
                prop_assert!(f.pending.len() <= cap, "held back {} over {cap}", f.pending.len());
                start = end;
            }
            prop_assert!(bytes.starts_with(&out));
            if !too_large {
                // What was passed on ends at an event boundary (or is empty).
                let ends = event_ends(&bytes);
                prop_assert!(
                    out.is_empty() || ends.contains(&out.len()),
                    "{:?} not in {:?}", out.len(), ends
                );
                let mut whole = out.clone();
                let mut failed = f.clone();
                if let Some(rest) = f.finish() { whole.extend_from_slice(&rest); }
                prop_assert_eq!(whole, bytes);
                // Had it broken here instead, the error event would follow
                // what was passed on, whole, with nothing of the partial
                // event in between.
                let error = failed.fail(&SentinelError::new(sentinel_layer::ErrorCode::UpstreamFailed, "x"));
                let expected_start: &[u8] = b"data: {\"error\"";
                prop_assert!(error.starts_with(expected_start), "{:?}", error);
                prop_assert!(failed.pending.is_empty());
            }
        }

        /// Whole events cut anywhere come out exactly, minus the usage-only
        /// chunk when it is hidden; an error after any prefix starts on a
        /// boundary.
        #[test]
        fn whole_events_survive_any_cuts(
            events in prop::collection::vec(sse_event(), 1..6),
            cuts in prop::collection::vec(0usize..2000, 0..8),
            hide in any::<bool>(),
            fail_at in prop::option::of(0usize..2000),
        ) {
            let stream: Vec<u8> = events.concat();
            let expected: Vec<u8> = events
                .iter()
                .filter(|e| !(hide && is_usage_only(e)))
                .flatten()
                .copied()
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let end = fail_at.map_or(stream.len(), |f| f.min(stream.len()));
            let mut f = Framer::new(Api::Chat, hide);
            let mut out = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().filter(|&c| c <= end).chain([end]) {
                if let Some(b) = f.push(Bytes::copy_from_slice(&stream[start..cut])).unwrap() {
                    out.extend_from_slice(&b);
                }
                start = cut;
            }
            if fail_at.is_some() {
                let error = f.fail(&SentinelError::new(sentinel_layer::ErrorCode::UpstreamFailed, "x"));
                // Everything passed on is whole events of the stream.
                prop_assert!(expected.starts_with(&out));
                out.extend_from_slice(&error);
                let text = String::from_utf8_lossy(&out).into_owned();
                let error_text = String::from_utf8_lossy(&error).into_owned();
                let before = &text[..text.len() - error_text.len()];
                prop_assert!(
                    before.is_empty() || before.ends_with('\n') || before.ends_with('\r'),
                    "{:?}", before
                );
            } else {
                if let Some(rest) = f.finish() { out.extend_from_slice(&rest); }
                prop_assert_eq!(out, expected);
            }
        }
    }
}
