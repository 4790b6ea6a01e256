//! One routed request through an axum `Router` with `TierRoutingLayer`, in
//! process: parse the tier, choose a model, rewrite the body, call a handler
//! that answers at once, stamp the headers. With and without a session.
//!
//! Run with: `cargo bench -p sentinel-layer --bench route`

#![allow(clippy::expect_used)] // fixed, valid benchmark inputs

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

mod support;

fn app(sessions: bool) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(|| async { "ok" }))
        .layer(support::layer(sessions))
}

const BODY: &str = r#"{"tier":"simple","temperature":0.2,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Summarise the plot of Hamlet in one sentence."}]}"#;

fn route(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, sessions, header) in [
        ("route_request", false, None),
        ("route_request_with_session", true, Some("bench-session")),
    ] {
        let app = app(sessions);
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut request = http::Request::post("/v1/chat/completions")
                    .header("content-type", "application/json");
                if let Some(session) = header {
                    request = request.header("x-sentinel-session", session);
                }
                let request = request.body(Body::from(BODY)).expect("request");
                let response = rt
                    .block_on(app.clone().oneshot(request))
                    .expect("infallible");
                black_box(response.status())
            })
        });
    }
}

criterion_group!(benches, route);
criterion_main!(benches);
