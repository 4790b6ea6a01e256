//! Active health checks, on paused time with a scripted probe client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use sentinel_layer::TierRoutingLayer;
use sentinel_layer::health::{HealthChecks, HealthClient, HealthFuture, HealthTarget};
use serde_json::json;
use support::{chat, echo_app, send, source};

/// The probes seen: URI and Authorization.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Clone, Default)]
struct Probe {
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    seen: Seen,
}

impl HealthClient for Probe {
    fn get(&self, request: http::Request<()>) -> HealthFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let auth = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        self.seen
            .lock()
            .unwrap()
            .push((request.uri().to_string(), auth));
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                Ok(StatusCode::SERVICE_UNAVAILABLE)
            } else {
                Ok(StatusCode::OK)
            }
        })
    }
}

fn layer(probe: &Probe) -> TierRoutingLayer {
    let target = HealthTarget::new("openai", "https://provider.test/v1/", Some("sk-test")).unwrap();
    TierRoutingLayer::builder(source())
        .failure_threshold(1)
        .health_checks(HealthChecks::new(vec![target], probe.clone()))
        .build()
        .unwrap()
}

/// Lets the probe tasks run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn probes_start_with_the_layer_then_run_every_interval_with_the_key() {
    let probe = Probe::default();
    // Built inside a runtime: the tasks start with the layer, not with a
    // request (no request is sent before the first probe).
    let layer = layer(&probe);
    settle().await;
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        1,
        "the first probe at start-up"
    );
    let app = echo_app(layer);
    assert_eq!(send(&app, chat(json!({}))).await.status, StatusCode::OK);
    settle().await;
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        1,
        "a request starts nothing"
    );
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "https://provider.test/v1/models");
    assert_eq!(seen[0].1.as_deref(), Some("Bearer sk-test"));

    tokio::time::advance(Duration::from_secs(15)).await;
    settle().await;
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(15)).await;
    settle().await;
    assert_eq!(probe.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_layer_built_outside_a_runtime_starts_its_tasks_when_it_wraps_a_service_inside_one() {
    let probe = Probe::default();
    let layer = layer(&probe);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        settle().await;
        assert_eq!(probe.calls.load(Ordering::SeqCst), 0, "no runtime at build");
        let _app = echo_app(layer);
        settle().await;
        assert_eq!(probe.calls.load(Ordering::SeqCst), 1, "started by layer()");
    });
}

#[tokio::test(start_paused = true)]
async fn a_failing_provider_is_left_out_until_a_probe_succeeds() {
    let probe = Probe::default();
    probe.down.store(true, Ordering::SeqCst);
    let layer = layer(&probe);
    layer.start_background_tasks();
    settle().await;
    let app = echo_app(layer);
    let r = send(&app, chat(json!({ "tier": "moderate" }))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), Some("all_models_backing_off"));

    probe.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(15)).await;
    settle().await;
    let r = send(&app, chat(json!({ "tier": "moderate" }))).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a successful probe resets the provider"
    );
}

#[tokio::test(start_paused = true)]
async fn probes_stop_when_the_last_clone_of_the_layer_goes() {
    let probe = Probe::default();
    let layer = layer(&probe);
    let app = echo_app(layer.clone());
    layer.start_background_tasks();
    settle().await;
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    drop(layer);
    tokio::time::advance(Duration::from_secs(15)).await;
    settle().await;
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        2,
        "the router still holds a clone"
    );
    drop(app);
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(15)).await;
        settle().await;
    }
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn settings_are_validated() {
    let probe = Probe::default();
    let target = || HealthTarget::new("openai", "http://x/v1", None).unwrap();
    let build = |checks: HealthChecks| {
        TierRoutingLayer::builder(source())
            .health_checks(checks)
            .build()
    };
    assert!(
        build(HealthChecks::new(vec![target()], probe.clone()).interval(Duration::ZERO)).is_err()
    );
    assert!(
        build(HealthChecks::new(vec![target()], probe.clone()).timeout(Duration::ZERO)).is_err()
    );
    assert!(build(HealthChecks::new(vec![target()], probe.clone()).path("models")).is_err());
    assert!(HealthTarget::new("openai", "http://x/v1", Some("bad\nkey")).is_err());
    assert!(
        !format!(
            "{:?}",
            HealthTarget::new("p", "http://x", Some("sk-secret")).unwrap()
        )
        .contains("sk-secret")
    );
}

#[derive(Clone)]
struct Answers(StatusCode);

impl HealthClient for Answers {
    fn get(&self, _request: http::Request<()>) -> HealthFuture {
        let status = self.0;
        Box::pin(async move { Ok(status) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_without_the_probe_path_is_not_taken_down() {
    for (status, served) in [
        (StatusCode::NOT_FOUND, true),
        (StatusCode::UNAUTHORIZED, true),
        (StatusCode::NOT_IMPLEMENTED, true),
        (StatusCode::SERVICE_UNAVAILABLE, false),
        (StatusCode::BAD_GATEWAY, false),
        (StatusCode::TOO_MANY_REQUESTS, false),
    ] {
        let target = HealthTarget::new("openai", "http://provider.test/v1", None).unwrap();
        let layer = TierRoutingLayer::builder(source())
            .failure_threshold(1)
            .health_checks(HealthChecks::new(vec![target], Answers(status)))
            .build()
            .unwrap();
        layer.start_background_tasks();
        settle().await;
        let r = send(&echo_app(layer), chat(json!({}))).await;
        assert_eq!(
            r.status == StatusCode::OK,
            served,
            "probe answered {status}"
        );
    }
}

#[test]
fn probe_targets_never_show_url_credentials_or_the_key() {
    let target = HealthTarget::new(
        "openai",
        "https://puser:ppass@provider.test/v1?api-key=qsecret",
        Some("sk-test-secret"),
    )
    .unwrap();
    let shown = format!("{target:?}");
    assert!(shown.contains("provider.test"), "{shown}");
    for secret in ["puser", "ppass", "qsecret", "sk-test-secret"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}
