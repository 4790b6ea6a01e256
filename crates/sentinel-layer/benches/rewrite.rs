//! Tier extraction and body rewrite, the per-request work the layer does on a
//! routed body: read `X-Sentinel-Tier`, parse the body, resolve the tier,
//! build the body template and render it for a model. Chat bodies of about
//! 1 KiB, 16 KiB and 256 KiB; throughput in body bytes.
//!
//! Run with: `cargo bench -p sentinel-layer --bench rewrite`

#![allow(clippy::expect_used)] // fixed, valid benchmark inputs, checked before measuring

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use sentinel_layer::__bench::extract_and_rewrite;
use serde_json::{Value, json};

/// The model the body is rendered for.
const MODEL: &str = "gpt-4o-mini";

/// Plain-text words the messages are made of.
const WORDS: [&str; 16] = [
    "the", "service", "routes", "each", "request", "to", "a", "model", "of", "its", "tier,",
    "keeps", "sessions", "sticky", "and", "retries.",
];

/// `len` bytes of plain text (ASCII words, no escapes), starting at word `seed`.
fn text(len: usize, seed: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    let mut i = seed;
    while out.len() < len {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[i % WORDS.len()]);
        i += 1;
    }
    out.truncate(len);
    out
}

/// A chat body of `target` bytes (serialized): a system prompt, then user and
/// assistant turns of plain text, the last user turn padded to the size, plus
/// `tier`, `temperature` and `stream`.
fn chat_body(target: usize) -> Vec<u8> {
    // Per-message text: a few turns for 1 KiB, many for 256 KiB.
    let turn = (target / 12).clamp(40, 600);
    let mut messages = vec![json!({ "role": "system", "content": "You are a helpful assistant." })];
    let body = |messages: &[Value]| {
        serde_json::to_vec(&json!({
            "tier": "simple",
            "messages": messages,
            "temperature": 0.7,
            "stream": false,
        }))
        .expect("serializable")
    };
    // Whole turns while there is room for one more, then the last user turn
    // sized to reach the target.
    let overhead = r#",{"content":"","role":"user"}"#.len();
    let mut i = 0;
    loop {
        let len = body(&messages).len();
        if len + 2 * (turn + overhead) > target {
            let room = target.saturating_sub(len + overhead);
            messages.push(json!({ "role": "user", "content": text(room, i) }));
            break;
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({ "role": role, "content": text(turn, i) }));
        i += 1;
    }
    let bytes = body(&messages);
    let off = bytes.len().abs_diff(target);
    assert!(
        off * 100 <= target,
        "body of {} bytes is not within 1% of {target}",
        bytes.len()
    );
    bytes
}

/// The rewritten body must be the original minus `tier`, plus `model`.
fn check(headers: &HeaderMap, body: &[u8]) {
    let rewritten = extract_and_rewrite(headers, body, MODEL).expect("valid body");
    let rewritten: Value = serde_json::from_slice(&rewritten).expect("valid JSON");
    let mut expected: Value = serde_json::from_slice(body).expect("valid JSON");
    let map = expected.as_object_mut().expect("an object");
    map.remove("tier");
    map.insert("model".into(), json!(MODEL));
    assert_eq!(rewritten, expected, "the rewrite changed the body");
}

fn rewrite(c: &mut Criterion) {
    // A typical routed request's headers: the tier is in the body.
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer sk-bench"),
    );

    let mut group = c.benchmark_group("rewrite");
    for (name, target) in [
        ("1KiB", 1 << 10),
        ("16KiB", 16 << 10),
        ("256KiB", 256 << 10),
    ] {
        let body = chat_body(target);
        check(&headers, &body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                extract_and_rewrite(black_box(&headers), black_box(body), black_box(MODEL))
                    .expect("valid body")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
