//! One call through `TierRoutingLayer` over a no-op inner service (answers
//! an empty 200 at once: no network, no axum), against the same inner
//! service called without the layer. The difference is what the layer adds
//! per request: tier and body rewrite, model choice (in-memory breakers),
//! the attempt with its breaker record, response headers; with a session, the
//! in-memory session store too. A chat body of about 1 KiB.
//!
//! Run with: `cargo bench -p sentinel-layer --bench layer`

#![allow(clippy::expect_used)] // fixed, valid benchmark inputs

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body_util::{Empty, Full};
use sentinel_layer::{MODEL_HEADER, RoutedBody};
use support::layer;
use tower::{Layer, ServiceExt, service_fn};

mod support;

/// The inner service: an empty 200 at once, whatever the request body.
fn answer<B>(_request: Request<B>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    ready(Ok(Response::new(Empty::new())))
}

/// A chat body of about 1 KiB: user and assistant turns of plain text.
fn chat_body() -> Bytes {
    let turn = |role: &str, i: usize| {
        serde_json::json!({
            "role": role,
            "content": format!("Turn {i}: please summarise the previous answer in plain words, keeping the key points and dropping the rest."),
        })
    };
    let messages: Vec<_> = (0..7)
        .map(|i| turn(if i % 2 == 0 { "user" } else { "assistant" }, i))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "tier": "simple",
        "messages": messages,
        "temperature": 0.7,
        "stream": false,
    }))
    .expect("serializable");
    assert!(
        (1000..=1100).contains(&body.len()),
        "body of {} bytes is not about 1 KiB",
        body.len()
    );
    Bytes::from(body)
}

fn request(body: &Bytes, session: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(session) = session {
        request = request.header("x-sentinel-session", session);
    }
    request.body(Full::new(body.clone())).expect("request")
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = chat_body();
    let mut group = c.benchmark_group("layer");

    // `ServiceFn` over a fn item is `Copy`: each `oneshot` gets a fresh copy,
    // as the routed variants get a clone.
    let direct = service_fn(answer::<Full<Bytes>>);
    group.bench_function("no_layer", |b| {
        b.iter_batched(
            || request(&body, None),
            |request| {
                let response = rt.block_on(direct.oneshot(request)).expect("infallible");
                let (head, _body) = response.into_parts();
                black_box(head)
            },
            BatchSize::SmallInput,
        )
    });

    for (name, sessions, session) in [
        ("with_layer", false, None),
        ("with_layer_and_session", true, Some("bench-session")),
    ] {
        let routed = layer(sessions).layer(service_fn(answer::<RoutedBody<Full<Bytes>>>));
        // The layer routed it: a model was chosen and stamped.
        let response = rt
            .block_on(routed.clone().oneshot(request(&body, session)))
            .expect("infallible");
        assert!(response.status().is_success(), "{}", response.status());
        assert!(response.headers().contains_key(MODEL_HEADER));

        group.bench_function(name, |b| {
            b.iter_batched(
                || request(&body, session),
                |request| {
                    let response = rt
                        .block_on(routed.clone().oneshot(request))
                        .expect("infallible");
                    let (head, _body) = response.into_parts();
                    black_box(head)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
