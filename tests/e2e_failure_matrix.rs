//! The failure matrix: every way a provider fails that the failure-semantics
//! issue lists, end to end over real sockets, one after the other on one
//! proxy. For each: what the client got (the complete answer or a clean
//! error, never a cut answer presented as complete), which attempts the
//! provider saw, and that it all ended within the documented bound (the
//! timeouts here are 300 ms; the bound checked is the sum of the timeouts
//! the scenario may wait out, plus slack for a loaded machine).
//!
//! Each scenario starts on a session pinned to the cheap model `a` (a
//! request with a fresh session id is sent until `a` answers it), so its
//! first attempt is on `a` and a retry or continuation goes to `b`. Run
//! with `--nocapture` to see the matrix as a table.
//!
//! The 60-second outage is in `e2e_failure_semantics.rs`
//! (`a_model_down_for_a_minute_takes_traffic_again_within_a_probe_interval`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use sentinel_testkit::{MockUpstream, MockZion, RetryAfter, UpstreamFault};
use serde_json::{Value, json};
use support::{Env, Proxy, Reply, chat_body, unique};

const A: &str = "a-matrix";
const B: &str = "b-matrix";
/// Slack over the documented bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);

/// What the client must get.
enum Expect {
    /// `200` with the whole answer (`[DONE]` for a stream), from this model
    /// (the head's `X-Sentinel-Model`).
    Answer(&'static str),
    /// `200`, a stream with some content then the SSE error event with this
    /// code (and no `[DONE]`).
    ErrorEvent(&'static str),
    /// This status and error code in the envelope, with `Retry-After` in
    /// seconds when given.
    Error(u16, &'static str, Option<u64>),
    /// The provider's own `400` with this code, passed through.
    ProviderError(&'static str),
    /// `200`, a stream with some content then the provider's own error
    /// event, passed through.
    ProviderErrorEvent,
}

struct Scenario {
    name: &'static str,
    faults: Vec<(&'static str, UpstreamFault)>,
    stream: bool,
    expect: Expect,
    /// The models the provider was asked, in order.
    attempts: &'static [&'static str],
    /// How long the scenario may take at most (before slack).
    bound: Duration,
}

fn config() -> Value {
    let tier = json!({ "models": [
        { "provider": "openai", "model": A, "relative_cost": 1, "context_window": 8000 },
        { "provider": "openai", "model": B, "relative_cost": 10, "context_window": 200000 },
    ] });
    json!({ "version": "matrix", "tiers": { "simple": tier, "moderate": tier, "complex": tier } })
}

/// A fresh session id pinned to `A`.
async fn pinned_to_a(proxy: &Proxy) -> String {
    for _ in 0..40 {
        let session = unique("matrix");
        let reply = proxy
            .chat_in_session(&session, &chat_body(Some("simple")))
            .await;
        assert_eq!(reply.status, 200);
        if reply.model() == Some(A) {
            return session;
        }
    }
    panic!("no session pinned to {A} in 40 tries");
}

/// The last `data:` payload of an SSE body, as JSON.
fn last_event(text: &str) -> Value {
    let last = text
        .trim_end()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    serde_json::from_str(last).unwrap()
}

fn check(scenario: &Scenario, reply: &Reply) -> String {
    let text = reply.text();
    match scenario.expect {
        Expect::Answer(model) => {
            assert_eq!(reply.status, 200, "{}: {text}", scenario.name);
            if scenario.stream {
                assert!(
                    text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\""),
                    "{}: {text}",
                    scenario.name
                );
            } else {
                assert!(reply.json["choices"][0]["message"]["content"].is_string());
            }
            assert_eq!(reply.model(), Some(model), "{}", scenario.name);
            let continued = text
                .lines()
                .find_map(|l| l.strip_prefix(": x-sentinel-continued-model: "));
            match continued {
                Some(by) => format!("`200`, the whole answer: {model}'s start, continued by {by}"),
                None => format!("`200`, the whole answer from {model}"),
            }
        }
        Expect::ErrorEvent(code) => {
            assert_eq!(reply.status, 200, "{}", scenario.name);
            let event = last_event(&text);
            assert_eq!(event["error"]["code"], code, "{}: {text}", scenario.name);
            assert!(!text.contains("[DONE]"), "{}: {text}", scenario.name);
            assert!(text.contains("\"content\""), "{}: {text}", scenario.name);
            format!("`200`, the content so far, then the SSE error event `{code}`")
        }
        Expect::Error(status, code, retry_after) => {
            reply.assert_error(status, code);
            match retry_after {
                Some(secs) => {
                    assert_eq!(reply.retry_after(), secs, "{}", scenario.name);
                    format!("`{status}` `{code}`, `Retry-After: {secs}`")
                }
                None => {
                    assert!(reply.header("retry-after").is_none(), "{}", scenario.name);
                    format!("`{status}` `{code}`")
                }
            }
        }
        Expect::ProviderErrorEvent => {
            assert_eq!(reply.status, 200, "{}", scenario.name);
            let last = last_event(&text);
            assert_eq!(
                last["error"]["message"],
                MockUpstream::SERVER_ERROR_MESSAGE,
                "{}: {text}",
                scenario.name
            );
            assert!(!text.contains("[DONE]"), "{}: {text}", scenario.name);
            "`200`, the content so far, then the provider's own error event".to_owned()
        }
        Expect::ProviderError(code) => {
            assert_eq!(reply.status, 400, "{}", scenario.name);
            assert_eq!(reply.json["error"]["code"], code, "{}", scenario.name);
            format!("the provider's `400` `{code}`, as it is")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_failure_gets_a_documented_answer_within_its_bound() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config());
    let timeout = Duration::from_millis(300);
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            // Breakers stay closed: each scenario meets the same models.
            .set("SENTINEL_FAILURE_THRESHOLD", "1000")
            .set("SENTINEL_FIRST_BYTE_TIMEOUT_MS", "300")
            .set("SENTINEL_FIRST_TOKEN_TIMEOUT_MS", "300")
            .set("SENTINEL_STREAM_IDLE_TIMEOUT_MS", "300"),
    )
    .await;
    let status = |status: u16| UpstreamFault::Status {
        status,
        retry_after: None,
    };
    let quick = Duration::ZERO;
    let scenarios = vec![
        Scenario {
            name: "429 with `Retry-After`, once",
            faults: vec![(A, UpstreamFault::rate_limited(Some(RetryAfter::Seconds(7))))],
            stream: false,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "429 with `Retry-After` on every model",
            faults: vec![
                (A, UpstreamFault::rate_limited(Some(RetryAfter::Seconds(7)))),
                (B, UpstreamFault::rate_limited(Some(RetryAfter::Seconds(7)))),
            ],
            stream: false,
            expect: Expect::Error(429, "rate_limited", Some(7)),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "429 without `Retry-After` on every model",
            faults: vec![
                (A, UpstreamFault::rate_limited(None)),
                (B, UpstreamFault::rate_limited(None)),
            ],
            stream: false,
            expect: Expect::Error(429, "rate_limited", None),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "500 once",
            faults: vec![(A, status(500))],
            stream: false,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "503 persistently, every model",
            faults: vec![(A, status(503)), (B, status(503))],
            stream: false,
            expect: Expect::Error(502, "upstream_failed", None),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "connection reset before the head",
            faults: vec![(A, UpstreamFault::Reset)],
            stream: false,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "never answers (JSON)",
            faults: vec![(A, UpstreamFault::Hold)],
            stream: false,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: timeout,
        },
        Scenario {
            name: "first token delayed past the first-token timeout (stream)",
            faults: vec![(A, UpstreamFault::FirstTokenDelay(Duration::from_secs(5)))],
            stream: true,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: timeout,
        },
        Scenario {
            name: "stream cut after 1 token",
            faults: vec![(A, UpstreamFault::BreakStreamAfter(1))],
            stream: true,
            expect: Expect::Answer(A),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "stream stalls after 1 token",
            faults: vec![(A, UpstreamFault::StallAfter(1))],
            stream: true,
            expect: Expect::Answer(A),
            attempts: &[A, B],
            bound: timeout,
        },
        Scenario {
            name: "stream ends without `[DONE]`",
            faults: vec![(A, UpstreamFault::NoDone(1))],
            stream: true,
            expect: Expect::Answer(A),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "malformed event after 1 token",
            faults: vec![(A, UpstreamFault::MalformedEvent(1))],
            stream: true,
            expect: Expect::Answer(A),
            attempts: &[A],
            bound: quick,
        },
        Scenario {
            name: "provider error event after 1 token",
            faults: vec![(A, UpstreamFault::ErrorEvent(1))],
            stream: true,
            expect: Expect::ProviderErrorEvent,
            attempts: &[A],
            bound: quick,
        },
        Scenario {
            name: "stream cut, and the next model rejects assistant prefill",
            faults: vec![
                (A, UpstreamFault::BreakStreamAfter(1)),
                (B, UpstreamFault::RejectPrefill),
            ],
            stream: true,
            expect: Expect::ErrorEvent("upstream_failed"),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "`400 context_length_exceeded`",
            faults: vec![(A, UpstreamFault::context_length_exceeded())],
            stream: false,
            expect: Expect::Answer(B),
            attempts: &[A, B],
            bound: quick,
        },
        Scenario {
            name: "content-filter `400`",
            faults: vec![(A, UpstreamFault::content_filter())],
            stream: false,
            expect: Expect::ProviderError("content_filter"),
            attempts: &[A],
            bound: quick,
        },
    ];

    let mut table = vec![
        "| scenario | the client got | attempts | time |".to_owned(),
        "| --- | --- | --- | --- |".to_owned(),
    ];
    for scenario in &scenarios {
        upstream.clear_all();
        let session = pinned_to_a(&proxy).await;
        for (model, fault) in &scenario.faults {
            upstream.set_fault(model, fault.clone());
        }
        let mut body = chat_body(Some("simple"));
        body["stream"] = json!(scenario.stream);
        let before = upstream.requests().len();
        let started = Instant::now();
        let reply = proxy.chat_in_session(&session, &body).await;
        let took = started.elapsed();
        if scenario
            .faults
            .iter()
            .any(|(_, f)| matches!(f, UpstreamFault::Hold))
        {
            // Lets the held request go (once: the mock stays released).
            upstream.release_held();
        }
        let got = check(scenario, &reply);
        let asked: Vec<String> = upstream
            .requests()
            .split_off(before)
            .into_iter()
            .filter_map(|r| r.model)
            .collect();
        assert_eq!(asked, scenario.attempts, "{}", scenario.name);
        assert!(
            took <= scenario.bound + SLACK,
            "{}: {took:?}, bound {:?}",
            scenario.name,
            scenario.bound
        );
        table.push(format!(
            "| {} | {got} | {} | {} ms |",
            scenario.name,
            asked.join(", "),
            took.as_millis()
        ));
    }
    upstream.clear_all();
    eprintln!("{}", table.join("\n"));
}
