//! Retry on the next model and the circuit-breaking backoff, with a
//! scripted inner service (tower-test) and paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use metrics_util::debugging::DebuggingRecorder;
use proptest::prelude::*;
use sentinel_core::StaticConfig;
use sentinel_layer::{
    BoxError, ResponseBody, RoutedBody, RoutingDecision, SelectionReason, TierRoutingLayer,
    UpstreamError,
};
use sentinel_testkit::metrics::Counters;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};
use tower_test::mock::{self, Handle, SendResponse};

type Inner = Request<RoutedBody<Full<Bytes>>>;
type Outer = Response<ResponseBody<Full<Bytes>>>;

fn two_models() -> StaticConfig {
    StaticConfig::new(support::config_from(json!({ "tiers": {
        "simple": { "models": [
            { "provider": "openai", "model": "a", "relative_cost": 1 },
            { "provider": "other", "model": "b", "relative_cost": 1 }
        ] },
        "moderate": { "models": [ { "provider": "openai", "model": "solo", "relative_cost": 1 } ] }
    } })))
}

struct Harness {
    handle: Handle<Inner, Response<Full<Bytes>>>,
    layer: TierRoutingLayer,
    service: sentinel_layer::TierRouting<mock::Mock<Inner, Response<Full<Bytes>>>>,
}

impl Harness {
    fn new(layer: TierRoutingLayer) -> Self {
        let (mock, handle) = mock::pair::<Inner, Response<Full<Bytes>>>();
        let service = layer.layer(mock);
        Harness {
            handle,
            layer,
            service,
        }
    }

    fn send(&self, tier: &str) -> JoinHandle<Outer> {
        let request = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(
                json!({ "tier": tier, "messages": [] }).to_string(),
            )))
            .unwrap();
        let service = self.service.clone();
        tokio::spawn(async move { service.oneshot(request).await.unwrap() })
    }

    /// The next attempt reaching the inner service.
    async fn attempt(&mut self) -> (RoutingDecision, Value, SendResponse<Response<Full<Bytes>>>) {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("an attempt should reach the inner service")
                .unwrap();
        let decision = request
            .extensions()
            .get::<RoutingDecision>()
            .cloned()
            .unwrap();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        (decision, serde_json::from_slice(&body).unwrap(), respond)
    }

    /// Asserts no attempt is waiting.
    async fn no_attempt(&mut self) {
        tokio::task::yield_now().await;
        let next =
            tokio::time::timeout(Duration::from_millis(10), self.handle.next_request()).await;
        assert!(next.is_err(), "unexpected attempt");
    }

    /// One request of `tier` that reaches the inner service, which answers
    /// `code`; returns the status the client got.
    async fn answer(&mut self, tier: &str, code: u16) -> StatusCode {
        let task = self.send(tier);
        let (_, _, respond) = self.attempt().await;
        respond.send_response(status(code));
        finish(task).await.0
    }

    /// One request of `tier` that every model of the tier refuses: asserts
    /// the 503 `all_models_backing_off` made without calling the inner
    /// service, and returns its `Retry-After` (seconds).
    async fn refused(&mut self, tier: &str) -> u64 {
        let task = self.send(tier);
        let (code, headers, body) = finish(task).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "all_models_backing_off");
        self.no_attempt().await;
        headers["retry-after"].to_str().unwrap().parse().unwrap()
    }
}

/// `simple`: three models of three providers, all of cost 1.
fn three_models() -> StaticConfig {
    StaticConfig::new(support::config_from(json!({ "tiers": {
        "simple": { "models": [
            { "provider": "openai", "model": "a", "relative_cost": 1 },
            { "provider": "other", "model": "b", "relative_cost": 1 },
            { "provider": "third", "model": "c", "relative_cost": 1 }
        ] } } })))
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::from("{}")))
        .unwrap()
}

/// The client's response. Fails (rather than hang: time is paused) when
/// the request is still waiting after 5 s, such as for an attempt the test
/// did not expect and so never answers.
async fn finish(task: JoinHandle<Outer>) -> (StatusCode, http::HeaderMap, Value) {
    let response = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the request did not finish: an attempt nobody answers?")
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_is_retried_once_on_the_other_model() {
    for failing in [429, 500, 502, 503, 504] {
        let mut h = Harness::new(
            TierRoutingLayer::builder(two_models())
                .rng_seed(3)
                .build()
                .unwrap(),
        );
        let task = h.send("simple");
        let (first, body, respond) = h.attempt().await;
        assert_eq!(first.attempt, 1);
        assert_eq!(body["model"], *first.model);
        respond.send_response(status(failing));

        let (second, body, respond) = h.attempt().await;
        assert_ne!(
            second.model, first.model,
            "the retry goes to the other model"
        );
        assert_eq!((second.attempt, second.reason), (2, SelectionReason::Retry));
        assert_eq!(body["model"], *second.model, "the body is rewritten again");
        respond.send_response(status(200));

        let (code, headers, _) = finish(task).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            headers["x-sentinel-model"], &*second.model,
            "names the model that answered"
        );
        h.no_attempt().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_tier_of_three_failing_models_gets_exactly_two_attempts() {
    // The default threshold (3): no model opens after one failure, so a
    // third model is there to be tried, and must not be.
    let mut h = Harness::new(TierRoutingLayer::builder(three_models()).build().unwrap());
    for round in 0..2 {
        let task = h.send("simple");
        let (first, _, respond) = h.attempt().await;
        assert_eq!(first.attempt, 1);
        if round == 0 {
            respond.send_response(status(500));
        } else {
            respond.send_error(UpstreamError::connect("refused"));
        }
        let (second, _, respond) = h.attempt().await;
        assert_eq!((second.attempt, second.reason), (2, SelectionReason::Retry));
        assert_ne!(second.model, first.model);
        if round == 0 {
            respond.send_response(status(503));
        } else {
            respond.send_error(UpstreamError::timeout("slow"));
        }
        let (code, headers, body) = finish(task).await;
        let expected = if round == 0 {
            (StatusCode::BAD_GATEWAY, "upstream_failed")
        } else {
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        };
        assert_eq!((code, body["error"]["code"].as_str().unwrap()), expected);
        assert_eq!(headers["x-sentinel-model"], &*second.model);
        h.no_attempt().await;
    }
}

#[tokio::test(start_paused = true)]
async fn other_4xx_pass_through_without_a_retry() {
    let mut h = Harness::new(TierRoutingLayer::builder(two_models()).build().unwrap());
    for code in [400, 401, 404, 422] {
        let task = h.send("simple");
        let (first, _, respond) = h.attempt().await;
        respond.send_response(status(code));
        let (got, headers, _) = finish(task).await;
        assert_eq!(got.as_u16(), code);
        assert_eq!(headers["x-sentinel-model"], &*first.model);
        h.no_attempt().await;
    }
}

#[tokio::test(start_paused = true)]
async fn connect_errors_and_timeouts_are_retried_and_a_final_timeout_is_504() {
    let mut h = Harness::new(TierRoutingLayer::builder(two_models()).build().unwrap());
    let task = h.send("simple");
    let (_, _, respond) = h.attempt().await;
    respond.send_error(UpstreamError::connect("refused"));
    let (_, _, respond) = h.attempt().await;
    respond.send_error(UpstreamError::timeout("slow"));
    let (code, _, body) = finish(task).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["code"], "upstream_timeout");

    let task = h.send("simple");
    let (_, _, respond) = h.attempt().await;
    respond.send_error(UpstreamError::timeout("slow"));
    let (_, _, respond) = h.attempt().await;
    respond.send_response(status(503));
    let (code, _, body) = finish(task).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "upstream_failed");
}

#[tokio::test(start_paused = true)]
async fn a_tier_with_one_model_gets_no_second_attempt() {
    let mut h = Harness::new(TierRoutingLayer::builder(two_models()).build().unwrap());
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    respond.send_response(status(500));
    let (code, headers, body) = finish(task).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "upstream_failed");
    assert_eq!(headers["x-sentinel-model"], "solo");
    h.no_attempt().await;
}

/// A streamed response body the test feeds frame by frame (or fails).
type Streamed = UnsyncBoxBody<Bytes, BoxError>;

#[tokio::test(start_paused = true)]
async fn a_started_stream_is_never_retried() {
    let (mock, mut handle) = mock::pair::<Inner, Response<Streamed>>();
    let service = TierRoutingLayer::builder(two_models())
        .build()
        .unwrap()
        .layer(mock);
    let request = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(
            json!({ "tier": "simple", "stream": true, "messages": [] }).to_string(),
        )))
        .unwrap();
    // The service stays alive (so the mock stays open) to the end.
    let task = tokio::spawn(service.clone().oneshot(request));
    let (attempt, respond) = handle.next_request().await.unwrap();
    let first = attempt
        .extensions()
        .get::<RoutingDecision>()
        .cloned()
        .unwrap();

    // The head says 200 and the first event goes out ...
    let (frames, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    respond.send_response(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync())
            .unwrap(),
    );
    let response = task.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-sentinel-model"], &*first.model);
    let mut body = response.into_body();
    let event = Bytes::from_static(b"data: {\"choices\":[]}\n\n");
    frames.send(Ok(Frame::data(event.clone()))).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), event);

    // ... then the stream breaks: the client sees the failure, and no other
    // model is asked, whatever the body did.
    frames
        .send(Err(BoxError::from("upstream went away mid-stream")))
        .await
        .unwrap();
    let broken = body.frame().await.unwrap();
    assert!(broken.is_err(), "the break reaches the client: {broken:?}");
    drop(frames);
    tokio::task::yield_now().await;
    let next = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
    assert!(next.is_err(), "a started stream was retried");
    drop(service);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_backs_off_doubles_and_resets() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = TierRoutingLayer::builder(two_models())
        .failure_threshold(3)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    // Three failures in a row open `solo` (the tier's only model).
    for _ in 0..3 {
        let task = h.send("moderate");
        let (_, _, respond) = h.attempt().await;
        respond.send_response(status(500));
        assert_eq!(finish(task).await.0, StatusCode::BAD_GATEWAY);
    }
    let task = h.send("moderate");
    let (code, headers, body) = finish(task).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "all_models_backing_off");
    assert_eq!(headers["retry-after"], "30");
    h.no_attempt().await;

    // 30 s later one probe goes through; it fails: 60 s this time.
    tokio::time::advance(Duration::from_secs(30)).await;
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    let blocked = h.send("moderate");
    let (code, _, _) = finish(blocked).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "one probe at a time");
    respond.send_response(status(503));
    finish(task).await;
    let (code, headers, _) = finish(h.send("moderate")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "60");

    // The next probe succeeds: closed, and the count starts over.
    tokio::time::advance(Duration::from_secs(60)).await;
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    respond.send_response(status(200));
    assert_eq!(finish(task).await.0, StatusCode::OK);
    for _ in 0..2 {
        let task = h.send("moderate");
        let (_, _, respond) = h.attempt().await;
        respond.send_response(status(500));
        finish(task).await;
    }
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    respond.send_response(status(200));
    assert_eq!(
        finish(task).await.0,
        StatusCode::OK,
        "two failures do not open it"
    );

    let counters = Counters::take(&snapshotter);
    let transitions = "sentinel_breaker_transitions_total";
    let name = ("name", "openai/solo");
    assert_eq!(
        counters.get(transitions, &[("scope", "model"), name, ("to", "open")]),
        1
    );
    assert_eq!(
        counters.get(transitions, &[("scope", "model"), name, ("to", "closed")]),
        1
    );
    assert_eq!(
        counters.get(
            "sentinel_errors_total",
            &[("code", "all_models_backing_off")]
        ),
        3
    );
    drop(h.layer);
}

#[tokio::test(start_paused = true)]
async fn the_default_schedule_doubles_from_30s_to_a_300s_cap_and_a_success_starts_it_over() {
    // Nothing configured: the defaults the proxy runs with too (3 failures
    // in a row, 30 s doubling up to 300 s).
    let mut h = Harness::new(TierRoutingLayer::builder(two_models()).build().unwrap());
    for _ in 0..2 {
        assert_eq!(h.answer("moderate", 500).await, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        h.answer("moderate", 500).await,
        StatusCode::BAD_GATEWAY,
        "two failures do not open it"
    );

    // Open: each wait ends with one probe, which fails and doubles it.
    let mut waits = Vec::new();
    for _ in 0..7 {
        let wait = h.refused("moderate").await;
        waits.push(wait);
        tokio::time::advance(Duration::from_secs(wait - 1)).await;
        assert_eq!(h.refused("moderate").await, 1, "open until the wait ends");
        tokio::time::advance(Duration::from_secs(1)).await;
        if waits.len() < 7 {
            assert_eq!(h.answer("moderate", 500).await, StatusCode::BAD_GATEWAY);
        }
    }
    assert_eq!(waits, [30, 60, 120, 240, 300, 300, 300]);

    // The probe succeeds: closed, and the next opening waits 30 s again.
    assert_eq!(h.answer("moderate", 200).await, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(h.answer("moderate", 500).await, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(h.refused("moderate").await, 30);
}

#[tokio::test(start_paused = true)]
async fn an_open_model_is_left_out_and_its_tier_goes_on_with_the_others() {
    let layer = TierRoutingLayer::builder(two_models())
        .failure_threshold(1)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    // Fail `a` once (threshold 1), wherever the first pick lands.
    let task = h.send("simple");
    let (first, _, respond) = h.attempt().await;
    respond.send_response(status(500));
    let (second, _, respond) = h.attempt().await;
    respond.send_response(status(200));
    finish(task).await;
    assert_ne!(first.model, second.model);
    for _ in 0..20 {
        let task = h.send("simple");
        let (d, _, respond) = h.attempt().await;
        assert_eq!(
            d.model, second.model,
            "the open model is excluded at selection"
        );
        respond.send_response(status(200));
        finish(task).await;
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_upstream_is_a_floor_for_the_wait() {
    let layer = TierRoutingLayer::builder(two_models())
        .failure_threshold(1)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    respond.send_response(
        Response::builder()
            .status(429)
            .header("retry-after", "120")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    finish(task).await;
    let (code, headers, _) = finish(h.send("moderate")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "120");
}

#[tokio::test(start_paused = true)]
async fn connection_failures_open_the_provider_for_all_its_models() {
    let config = StaticConfig::new(support::config_from(json!({ "tiers": {
        "simple": { "models": [
            { "provider": "down", "model": "x", "relative_cost": 1 },
            { "provider": "down", "model": "y", "relative_cost": 1 },
            { "provider": "up", "model": "z", "relative_cost": 10 }
        ] } } })));
    let layer = TierRoutingLayer::builder(config)
        .failure_threshold(1)
        .rng_seed(5)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    // Keep going until a `down` model is picked and fails to connect.
    loop {
        let task = h.send("simple");
        let (d, _, respond) = h.attempt().await;
        if &*d.provider == "down" {
            respond.send_error(UpstreamError::connect("refused"));
            let (d2, _, respond) = h.attempt().await;
            assert_eq!(
                &*d2.provider, "up",
                "the provider is open: its other model is out too"
            );
            respond.send_response(status(200));
            finish(task).await;
            break;
        }
        respond.send_response(status(200));
        finish(task).await;
    }
    for _ in 0..10 {
        let task = h.send("simple");
        let (d, _, respond) = h.attempt().await;
        assert_eq!(&*d.provider, "up");
        respond.send_response(status(200));
        finish(task).await;
    }
}

/// A model probe client that answers as told and remembers its calls.
#[derive(Clone, Default)]
struct Probe {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, tokio::time::Instant)>>>,
}

impl sentinel_layer::recovery::ModelProbeClient for Probe {
    fn probe(&self, _provider: &str, model: &str) -> sentinel_layer::recovery::ProbeFuture {
        self.calls
            .lock()
            .unwrap()
            .push((model.to_owned(), tokio::time::Instant::now()));
        let up = self.up.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Ok(if up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_model_is_probed_every_interval_and_closes_on_the_first_success() {
    let probe = Probe::default();
    let layer = TierRoutingLayer::builder(two_models())
        .failure_threshold(1)
        .model_probes(
            sentinel_layer::recovery::ModelProbes::new(probe.clone())
                .interval(Duration::from_secs(4)),
        )
        .rng_seed(1)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.layer.start_background_tasks();

    // `solo` fails once: open for 30 s.
    let task = h.send("moderate");
    let (_, _, respond) = h.attempt().await;
    let opened = tokio::time::Instant::now();
    respond.send_response(status(500));
    let (code, _, body) = finish(task).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    let (code, _, body) = finish(h.send("moderate")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // No probe before one interval (4 s); then one every interval (give or
    // take the task's 1 s tick) while it fails.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(probe.calls.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(9_500)).await; // 13 s
    let calls = probe.calls.lock().unwrap().clone();
    assert!((2..=3).contains(&calls.len()), "{calls:?}");
    assert!(calls.iter().all(|(m, _)| m == "solo"));
    assert!(calls[0].1 >= opened + Duration::from_secs(4));
    for pair in calls.windows(2) {
        assert!(pair[1].1 >= pair[0].1 + Duration::from_secs(4), "{calls:?}");
    }
    // A failed probe changes nothing: still open.
    let (code, _, _) = finish(h.send("moderate")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);

    // It recovers: the next probe closes the breaker at once, well before
    // the 30 s backoff would have let a request through.
    probe.up.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await; // 19 s
    assert!(tokio::time::Instant::now() < opened + Duration::from_secs(30));
    let task = h.send("moderate");
    let (decision, _, respond) = h.attempt().await;
    assert_eq!(
        &*decision.model, "solo",
        "traffic is back before the backoff ended"
    );
    respond.send_response(status(200));
    assert_eq!(finish(task).await.0, StatusCode::OK);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the threshold and the run of outcomes, a success resets
    /// both counts the breaker keeps: the failures in a row that open it
    /// (at the threshold) and the openings that double its wait (30 s,
    /// doubling, capped at 300 s). So after a success, `threshold` failures
    /// are needed to open it again, and it opens for 30 s.
    #[test]
    fn a_success_resets_the_breakers_backoff(
        threshold in 1u32..=3,
        outcomes in proptest::collection::vec(any::<bool>(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let layer = TierRoutingLayer::builder(two_models())
                .failure_threshold(threshold)
                .build()
                .unwrap();
            let mut h = Harness::new(layer);
            // What the breaker should hold: failures in a row while closed,
            // and openings in a row (0: closed).
            let (mut failures, mut openings) = (0u32, 0u32);
            for ok in outcomes {
                // Closed, or open with its wait over: the request reaches
                // the model (`answer` fails if it does not).
                if ok {
                    assert_eq!(h.answer("moderate", 200).await, StatusCode::OK);
                    (failures, openings) = (0, 0);
                    continue;
                }
                assert_eq!(h.answer("moderate", 500).await, StatusCode::BAD_GATEWAY);
                if openings > 0 {
                    openings += 1;
                } else {
                    failures += 1;
                    if failures == threshold {
                        openings = 1;
                    }
                }
                if openings > 0 {
                    let expected = (30u64 << (openings - 1).min(4)).min(300);
                    let wait = h.refused("moderate").await;
                    assert_eq!(wait, expected, "opening {openings} in a row");
                    // The next request is the probe.
                    tokio::time::advance(Duration::from_secs(wait)).await;
                }
            }
        });
    }
}
