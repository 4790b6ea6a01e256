//! OpenTelemetry traces, end to end: the proxy exports to an in-process
//! OTLP receiver (`MockCollector`, over HTTP and over gRPC) one server
//! span per routed request and one client span per upstream attempt, with
//! the GenAI attributes and Sentinel's own; the client's `traceparent` is
//! the server span's parent, and each attempt sends the provider its own.
//! A collector that fails or stalls costs requests nothing: its spans are
//! dropped and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{
    CollectedSpan, CollectorFault, MockCollector, MockUpstream, MockZion, UpstreamFault,
};
use support::{Env, Proxy, eventually, metric, unique, zion_config};

/// A client's sampled `traceparent` of a new trace: (header, trace id,
/// span id).
fn client_traceparent() -> (String, String, String) {
    let (trace, span) = (
        format!("{:032x}", fastrand::u128(1..)),
        format!("{:016x}", fastrand::u64(1..)),
    );
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// The spans of `trace` the collector has, once `want` of them came.
async fn spans_of(collector: &MockCollector, trace: &str, want: usize) -> Vec<CollectedSpan> {
    let arrived = eventually(Duration::from_secs(20), || async {
        collector
            .spans()
            .iter()
            .filter(|s| s.trace_id() == trace)
            .count()
            >= want
    })
    .await;
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id() == trace)
        .collect();
    assert!(arrived, "{want} spans of {trace} expected, got {spans:#?}");
    spans
}

/// The proxy's environment for tracing to `collector` quickly.
fn traced(env: Env, collector: &MockCollector) -> Env {
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .set("OTEL_BSP_SCHEDULE_DELAY", "20")
        .set("OTEL_SERVICE_NAME", "sentinel-under-test")
}

#[tokio::test]
async fn a_retried_request_is_one_server_span_and_a_client_span_per_attempt() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let collector = MockCollector::start_http().await.unwrap();
    let (bad, good) = (unique("trace-bad"), unique("trace-good"));
    zion.set_config(zion_config(&[
        ("simple", &[bad.as_str(), good.as_str()]),
        ("moderate", &[good.as_str()]),
        ("complex", &[good.as_str()]),
    ]));
    upstream.set_fault(
        &bad,
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let env = traced(Env::new(&upstream).zion(&zion), &collector)
        // `bad` stays in the rotation however often it fails.
        .set("SENTINEL_FAILURE_THRESHOLD", "1000")
        .set("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test");
    let proxy = Proxy::start(&env).await;

    // The pick is weighted at random: ask until one request met `bad`
    // first and was retried on `good` (each request does with odds 1/2).
    let mut found = None;
    for _ in 0..40 {
        let (traceparent, trace, parent) = client_traceparent();
        let reply = support::Reply::read(
            proxy
                .post_json("/v1/chat/completions", &support::chat_body(Some("simple")))
                .header("traceparent", &traceparent)
                .send()
                .await
                .unwrap(),
        )
        .await;
        reply.assert_served("simple", &good);
        let spans = spans_of(&collector, &trace, 2).await;
        // One server span and one or two client spans: wait for all.
        let server = spans.iter().find(|s| s.is_server()).cloned();
        if let Some(server) = server
            && server.int("sentinel.attempt") == Some(2)
        {
            found = Some((spans_of(&collector, &trace, 3).await, trace, parent));
            break;
        }
    }
    let (spans, trace, client_span) = found.expect("a request met `bad` first within 40");
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let server = spans.iter().find(|s| s.is_server()).unwrap();
    assert_eq!(server.span.name, "chat simple");
    assert_eq!(
        server.parent_span_id(),
        client_span,
        "the client's span is the parent"
    );
    assert_eq!(server.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(server.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(server.str("gen_ai.request.model"), Some("simple"));
    assert_eq!(server.str("gen_ai.response.model"), Some(good.as_str()));
    assert_eq!(server.int("gen_ai.usage.input_tokens"), Some(10));
    assert_eq!(server.int("gen_ai.usage.output_tokens"), Some(5));
    assert_eq!(server.str("sentinel.tier"), Some("simple"));
    assert_eq!(server.str("sentinel.requested_tier"), Some("simple"));
    assert_eq!(server.bool("sentinel.session.pinned"), Some(false));
    assert_eq!(server.str("sentinel.selection_reason"), Some("retry"));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert!(!server.is_error());
    assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);
    assert_eq!(
        server.resource_attribute("service.name"),
        Some("sentinel-under-test")
    );
    assert_eq!(
        server.resource_attribute("deployment.environment"),
        Some("test")
    );

    let mut clients: Vec<_> = spans.iter().filter(|s| s.is_client()).collect();
    clients.sort_by_key(|s| s.int("sentinel.attempt"));
    let (first, second) = (clients[0], clients[1]);
    for (client, attempt) in [(first, 1), (second, 2)] {
        assert_eq!(client.parent_span_id(), server.span_id());
        assert_eq!(client.int("sentinel.attempt"), Some(attempt));
        assert_eq!(client.str("gen_ai.request.model"), Some("simple"));
        assert_eq!(client.str("gen_ai.provider.name"), Some("openai"));
        assert_eq!(client.str("server.address"), Some("127.0.0.1"));
        assert!(client.span.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    }
    assert_eq!(first.str("sentinel.model"), Some(bad.as_str()));
    assert_eq!(first.str("sentinel.selection_reason"), Some("weighted"));
    assert!(first.is_error());
    assert_eq!(first.str("error.type"), Some("500"));
    assert_eq!(
        first.str("gen_ai.response.model"),
        None,
        "it did not answer"
    );
    assert_eq!(second.str("sentinel.model"), Some(good.as_str()));
    assert_eq!(second.str("gen_ai.response.model"), Some(good.as_str()));
    assert_eq!(second.int("gen_ai.usage.output_tokens"), Some(5));
    assert!(!second.is_error());

    // Each attempt sent the provider its own span as the parent.
    let sent: Vec<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_owned())
        .filter(|v| v.contains(&trace))
        .collect();
    assert_eq!(
        sent,
        vec![
            format!("00-{trace}-{}-01", first.span_id()),
            format!("00-{trace}-{}-01", second.span_id()),
        ]
    );
    let text = proxy.metrics().await;
    assert!(metric(&text, "sentinel_trace_spans_exported_total", &[]).unwrap() >= 3.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_stream_is_traced_over_grpc_with_the_collectors_headers_kept_secret() {
    let upstream = MockUpstream::start().await.unwrap();
    let collector = MockCollector::start_grpc().await.unwrap();
    let env = traced(Env::new(&upstream), &collector)
        .set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .set(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20collector-secret-7f3a",
        );
    let proxy = Proxy::start(&env).await;

    // No traceparent from the client: the server span starts a trace.
    let reply = proxy.chat_stream("moderate").await;
    assert_eq!(reply.status, 200);
    let model = reply.model().unwrap().to_owned();
    let sent = upstream.requests();
    let traceparent = sent
        .last()
        .and_then(|r| r.headers.get("traceparent"))
        .expect("the provider got a traceparent")
        .to_str()
        .unwrap()
        .to_owned();
    let trace = traceparent.split('-').nth(1).unwrap().to_owned();
    let spans = spans_of(&collector, &trace, 2).await;
    let server = spans.iter().find(|s| s.is_server()).unwrap();
    let client = spans.iter().find(|s| s.is_client()).unwrap();
    assert_eq!(server.parent_span_id(), "", "a root span");
    assert_eq!(client.parent_span_id(), server.span_id());
    assert_eq!(traceparent, format!("00-{trace}-{}-01", client.span_id()));
    assert_eq!(server.str("gen_ai.request.model"), Some("moderate"));
    assert_eq!(server.str("gen_ai.response.model"), Some(model.as_str()));
    // The stream's usage chunk (asked for by Sentinel) is read on the way.
    assert_eq!(server.int("gen_ai.usage.input_tokens"), Some(10));
    assert_eq!(client.int("gen_ai.usage.output_tokens"), Some(5));
    assert_eq!(server.str("sentinel.selection_reason"), Some("weighted"));
    assert_eq!(server.int("sentinel.attempt"), Some(1));

    let headers = collector.last_headers().unwrap();
    assert_eq!(headers["authorization"], "Bearer collector-secret-7f3a");
    assert_eq!(headers["content-type"], "application/grpc");
    // The collector's key is nowhere in what the proxy shows.
    let metrics = proxy.metrics().await;
    assert!(!metrics.contains("collector-secret"));
    let state = proxy.get("/admin/state").await.text();
    assert!(!state.contains("collector-secret"));
    proxy.stop().await;
}

#[tokio::test]
async fn an_unsampled_parent_is_followed_and_still_propagated() {
    let upstream = MockUpstream::start().await.unwrap();
    let collector = MockCollector::start_http().await.unwrap();
    let proxy = Proxy::start(&traced(Env::new(&upstream), &collector)).await;

    let (_, trace, span) = client_traceparent();
    let unsampled = format!("00-{trace}-{span}-00");
    let reply = support::Reply::read(
        proxy
            .post_json("/v1/chat/completions", &support::chat_body(Some("simple")))
            .header("traceparent", &unsampled)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = upstream.requests();
    let passed = sent.last().unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let fields: Vec<&str> = passed.split('-').collect();
    assert_eq!(fields[1], trace, "the same trace");
    assert_ne!(fields[2], span, "Sentinel's own span id");
    assert_eq!(fields[3], "00", "still unsampled");

    // A sampled request after it is exported: the unsampled one never is.
    let (traceparent, sampled_trace, _) = client_traceparent();
    let reply = support::Reply::read(
        proxy
            .post_json("/v1/chat/completions", &support::chat_body(Some("simple")))
            .header("traceparent", &traceparent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    spans_of(&collector, &sampled_trace, 2).await;
    assert!(collector.spans().iter().all(|s| s.trace_id() != trace));
    proxy.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_the_clients_traceparent_passes_as_it_is() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let (traceparent, _, _) = client_traceparent();
    let reply = support::Reply::read(
        proxy
            .post_json("/v1/chat/completions", &support::chat_body(Some("simple")))
            .header("traceparent", &traceparent)
            .header("tracestate", "vendor=opaque")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = upstream.requests();
    let headers = &sent.last().unwrap().headers;
    assert_eq!(headers["traceparent"], traceparent.as_str());
    assert_eq!(headers["tracestate"], "vendor=opaque");
    proxy.stop().await;
}

#[tokio::test]
async fn a_failing_or_stalled_collector_costs_requests_nothing_and_drops_are_counted() {
    let upstream = MockUpstream::start().await.unwrap();
    let collector = MockCollector::start_http().await.unwrap();
    collector.set_fault(Some(CollectorFault::Status(503)));
    let proxy = Proxy::start(&traced(Env::new(&upstream), &collector)).await;
    let dropped = |text: &str, reason: &str| {
        metric(
            text,
            "sentinel_trace_spans_dropped_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let before = dropped(&proxy.metrics().await, "export_failed");
    for _ in 0..3 {
        assert_eq!(
            proxy.chat(&support::chat_body(Some("simple"))).await.status,
            200
        );
    }
    let counted = eventually(Duration::from_secs(20), || async {
        dropped(&proxy.metrics().await, "export_failed") >= before + 6.0
    })
    .await;
    assert!(counted, "{}", proxy.metrics().await);
    assert!(collector.exports() >= 1);
    assert!(collector.spans().is_empty());
    proxy.stop().await;

    // A collector that stalls, and a queue of 2: the export in flight
    // holds its batch, later spans find the queue full.
    let stalled = MockCollector::start_http().await.unwrap();
    stalled.set_fault(Some(CollectorFault::Delay(Duration::from_secs(30))));
    let env = traced(Env::new(&upstream), &stalled)
        .set("OTEL_BSP_MAX_QUEUE_SIZE", "2")
        .set("OTEL_EXPORTER_OTLP_TIMEOUT", "30000");
    let proxy = Proxy::start(&env).await;
    let before = dropped(&proxy.metrics().await, "queue_full");
    // The first request's spans go into the stalled export.
    assert_eq!(
        proxy.chat(&support::chat_body(Some("simple"))).await.status,
        200
    );
    assert!(eventually(Duration::from_secs(20), || async { stalled.exports() >= 1 }).await);
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(
            proxy.chat(&support::chat_body(Some("simple"))).await.status,
            200
        );
    }
    // Ten requests were answered while the collector held its export: none
    // waited for it (the stall is 30 s).
    assert!(started.elapsed() < Duration::from_secs(25));
    let text = proxy.metrics().await;
    assert!(dropped(&text, "queue_full") >= before + 18.0, "{text}");
    proxy.shutdown();
}

#[tokio::test]
async fn two_traceparents_start_a_new_trace_and_leave_the_tracestate_behind() {
    let upstream = MockUpstream::start().await.unwrap();
    let collector = MockCollector::start_http().await.unwrap();
    let proxy = Proxy::start(&traced(Env::new(&upstream), &collector)).await;
    let (first, first_trace, _) = client_traceparent();
    let (second, second_trace, _) = client_traceparent();
    let reply = support::Reply::read(
        proxy
            .post_json("/v1/chat/completions", &support::chat_body(Some("simple")))
            .header("traceparent", &first)
            .header("traceparent", &second)
            .header("tracestate", "vendor=of-the-parent")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = upstream.requests();
    let headers = &sent.last().unwrap().headers;
    let passed = headers["traceparent"].to_str().unwrap().to_owned();
    let trace = passed.split('-').nth(1).unwrap().to_owned();
    assert_ne!(trace, first_trace);
    assert_ne!(trace, second_trace);
    assert!(headers.get("tracestate").is_none(), "{headers:?}");
    let spans = spans_of(&collector, &trace, 2).await;
    let server = spans.iter().find(|s| s.is_server()).unwrap();
    assert_eq!(server.parent_span_id(), "", "a root span");
    proxy.stop().await;
}
