//! The proxy's metrics: its own names, and the Prometheus recorder.
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `sentinel_tokens_total` | counter | `tier`, `model`, `provider`, `kind` (`input`, `output`) | tokens reported in `usage` by successful responses |
//! | `sentinel_cost_micro_usd_total` | counter | `tier`, `model`, `provider` | cost of those tokens from the tier config's prices, in millionths of a US dollar |
//! | `sentinel_usage_missing_total` | counter | `tier`, `model`, `provider` | successful responses without a readable `usage` (an upstream that does not report it, or a body over 4 MiB) |
//! | `sentinel_stream_errors_total` | counter | `reason` (`broken`, `idle_timeout`) | upstream bodies that broke or stalled mid-way |
//! | `sentinel_stream_continuations_total` | counter | `tier`, `model`, `provider` (the continuing model; `none` when there was none), `outcome` (`continued`, `refused`, `failed`, `unavailable`) | broken chat streams Sentinel tried to continue on the next model |
//! | `sentinel_unknown_provider_models_total` | counter | `provider` | models left out of routing because the proxy does not know their provider |
//! | `sentinel_http_requests_total` | counter | `status` (`2xx`, `4xx`, `5xx`, ...) | every HTTP request the proxy answered |
//! | `sentinel_request_duration_seconds` | histogram | `tier`, `model`, `provider`, `status` | routed requests, from arrival to the last byte sent (streams included; a client that leaves ends it); `none` labels for a request no model answered |
//! | `sentinel_upstream_first_byte_seconds` | histogram | `model`, `provider` | each attempt, from sending the request to the provider's response head |
//! | `sentinel_time_to_first_token_seconds` | histogram | `tier`, `model`, `provider` | streamed answers, from arrival to the first content chunk handed to the client |
//! | `sentinel_untranslated_route_total` | counter | `provider` | `/v1/responses` requests whose chosen model's provider does not take them (Anthropic), answered `400` |
//! | `sentinel_trace_spans_exported_total` | counter | | spans sent to the OpenTelemetry collector (tracing on) |
//! | `sentinel_trace_spans_dropped_total` | counter | `reason` (`queue_full`, `export_failed`, `shutdown`) | spans lost: the export queue was full when they ended, their batch's export failed or timed out, or they ended after the exporter stopped |
//! | `sentinel_overhead_seconds` | histogram | `tier` | routed requests, time spent in Sentinel itself: arrival to the response head going out, minus the time spent waiting on providers for the attempts' heads (and a stream's first token) |
//!
//! The layer's and the cache's metrics are documented in
//! `sentinel_layer::metrics` and `sentinel_zion::metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Tokens by kind.
pub const TOKENS: &str = "sentinel_tokens_total";
/// Cost in micro-USD.
pub const COST_MICRO_USD: &str = "sentinel_cost_micro_usd_total";
/// Responses without usage.
pub const USAGE_MISSING: &str = "sentinel_usage_missing_total";
/// Broken or stalled upstream bodies.
pub const STREAM_ERRORS: &str = "sentinel_stream_errors_total";
/// Broken chat streams continued on the next model, by outcome.
pub const STREAM_CONTINUATIONS: &str = "sentinel_stream_continuations_total";
/// Models left out for an unknown provider.
pub const UNKNOWN_PROVIDER_MODELS: &str = "sentinel_unknown_provider_models_total";
/// Every HTTP request answered.
pub const HTTP_REQUESTS: &str = "sentinel_http_requests_total";
/// Tokens spent by background model probes (early recovery).
pub const PROBE_TOKENS: &str = "sentinel_probe_tokens_total";
/// Cost of the tokens spent by background model probes, in micro-USD.
pub const PROBE_COST_MICRO_USD: &str = "sentinel_probe_cost_micro_usd_total";
/// Client connections open right now.
pub const CONNECTIONS_OPEN: &str = "sentinel_connections_open";
/// Requests shed at once because the in-flight cap was reached.
pub const REQUESTS_SHED: &str = "sentinel_requests_shed_total";
/// Routed requests, arrival to the last byte sent.
pub const REQUEST_DURATION: &str = "sentinel_request_duration_seconds";
/// Each attempt, request sent to the provider's response head.
pub const UPSTREAM_FIRST_BYTE: &str = "sentinel_upstream_first_byte_seconds";
/// Streamed answers, arrival to the first content chunk sent.
pub const TIME_TO_FIRST_TOKEN: &str = "sentinel_time_to_first_token_seconds";
/// Time spent in Sentinel itself per routed request.
pub const OVERHEAD: &str = "sentinel_overhead_seconds";
/// Requests of a route not translated for the chosen model's provider.
pub const UNTRANSLATED_ROUTE: &str = "sentinel_untranslated_route_total";
/// Spans sent to the collector.
pub const TRACE_SPANS_EXPORTED: &str = "sentinel_trace_spans_exported_total";
/// Spans lost, by reason.
pub const TRACE_SPANS_DROPPED: &str = "sentinel_trace_spans_dropped_total";

/// Buckets of the latency histograms, in seconds: LLM traffic spans a
/// millisecond of Sentinel's own time to minutes of generation.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder: installed on first call (the recorder
/// is global), with an upkeep task for histograms when inside a runtime.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                sentinel_layer::metrics::describe();
                sentinel_zion::metrics::describe();
                describe();
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        upkeep.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        TOKENS,
        "Tokens reported in usage, by tier, model, provider and kind."
    );
    describe_counter!(
        COST_MICRO_USD,
        "Cost of the reported tokens in millionths of a US dollar."
    );
    describe_counter!(
        USAGE_MISSING,
        "Successful responses without a readable usage object."
    );
    describe_counter!(
        STREAM_ERRORS,
        "Upstream bodies that broke or stalled mid-way."
    );
    describe_counter!(
        STREAM_CONTINUATIONS,
        "Broken chat streams continued on the next model, by continuing model and outcome."
    );
    describe_counter!(
        UNKNOWN_PROVIDER_MODELS,
        "Models left out of routing for an unknown provider."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered by the proxy, by status class."
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Client connections open right now.");
    describe_counter!(
        PROBE_COST_MICRO_USD,
        "Cost of the tokens spent by background model probes, in millionths of a US dollar."
    );
    describe_counter!(
        PROBE_TOKENS,
        "Tokens spent by background probes of open models, by provider, model and kind."
    );
    use metrics::{Unit, describe_histogram};
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Routed requests from arrival to the last byte sent, by tier, model, provider and status class."
    );
    describe_histogram!(
        UPSTREAM_FIRST_BYTE,
        Unit::Seconds,
        "Each attempt from sending the request to the provider's response head."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Streamed answers from arrival to the first content chunk sent to the client."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Time spent in Sentinel itself per routed request: to the response head, minus provider waits."
    );
    describe_counter!(
        REQUESTS_SHED,
        "Requests answered 503 overloaded because the in-flight cap was reached."
    );
    describe_counter!(
        TRACE_SPANS_EXPORTED,
        "Spans sent to the OpenTelemetry collector."
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans lost: the export queue was full, or their batch's export failed."
    );
}
