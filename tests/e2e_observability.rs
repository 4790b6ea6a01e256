//! The operator's view, end to end: the latency histograms and the breaker
//! states in `/metrics`, after real traffic through the proxy, and the
//! exposition checked by the real `promtool` (Debian's `prometheus`
//! package; `scripts/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use sentinel_testkit::{MockUpstream, MockZion};
use support::{Env, Proxy, metric, unique, zion_config};

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (install Debian's `prometheus` package; scripts/test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn metrics_carry_latency_histograms_and_breaker_states_and_pass_promtool() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    // Models of this test only: the recorder is the process's.
    let (a, b) = (unique("obs-a"), unique("obs-b"));
    zion.set_config(zion_config(&[
        ("simple", &[a.as_str(), b.as_str()]),
        ("moderate", &[a.as_str()]),
        ("complex", &[b.as_str()]),
    ]));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    for _ in 0..3 {
        let reply = proxy.chat(&support::chat_body(Some("simple"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    for _ in 0..2 {
        let reply = proxy.chat_stream("simple").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let text = proxy.metrics().await;

    let ours = |name: &str, extra: &[(&str, &str)]| -> f64 {
        [&a, &b]
            .iter()
            .filter_map(|m| {
                let mut labels = vec![("model", m.as_str()), ("provider", "openai")];
                labels.extend_from_slice(extra);
                metric(&text, name, &labels)
            })
            .sum()
    };
    let simple_2xx = [("tier", "simple"), ("status", "2xx")];
    assert_eq!(
        ours("sentinel_request_duration_seconds_count", &simple_2xx),
        5.0,
        "every routed request, streams included"
    );
    assert_eq!(
        ours(
            "sentinel_request_duration_seconds_bucket",
            &[("tier", "simple"), ("status", "2xx"), ("le", "+Inf")]
        ),
        5.0
    );
    assert_eq!(
        ours(
            "sentinel_time_to_first_token_seconds_count",
            &[("tier", "simple")]
        ),
        2.0,
        "streams only"
    );
    assert_eq!(
        ours("sentinel_upstream_first_byte_seconds_count", &[]),
        5.0,
        "one per attempt"
    );
    let overhead = metric(
        &text,
        "sentinel_overhead_seconds_count",
        &[("tier", "simple")],
    );
    assert!(overhead.is_some_and(|n| n >= 5.0), "{overhead:?}");
    // A stream's whole time is at least its time to the first token.
    let sum = |name: &str| ours(name, &[("tier", "simple")]);
    let first_tokens = sum("sentinel_time_to_first_token_seconds_sum");
    assert!(first_tokens > 0.0);
    assert!(sum("sentinel_request_duration_seconds_sum") >= first_tokens);

    // Every model of the config has a breaker state, closed; so does the provider.
    for m in [&a, &b] {
        assert_eq!(
            metric(
                &text,
                "sentinel_breaker_state",
                &[("scope", "model"), ("provider", "openai"), ("model", m)]
            ),
            Some(0.0),
            "{m}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "sentinel_breaker_state",
            &[("scope", "provider"), ("provider", "openai"), ("model", "")]
        ),
        Some(0.0)
    );

    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{said}");
    proxy.stop().await;
}

/// The `/admin/state` document, with its status.
async fn admin_state(proxy: &Proxy, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = proxy.request(reqwest::Method::GET, "/admin/state");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let reply = support::Reply::read(request.send().await.unwrap()).await;
    let body = serde_json::from_str(&reply.text()).unwrap_or(serde_json::Value::Null);
    (reply.status, body)
}

#[tokio::test]
async fn the_state_api_shows_shares_breakers_and_the_config_in_use() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let (a, b) = (unique("state-a"), unique("state-b"));
    let config = zion_config(&[
        ("simple", &[a.as_str(), b.as_str()]),
        ("moderate", &[a.as_str()]),
        ("complex", &[b.as_str()]),
    ]);
    let version = config["version"].as_str().unwrap().to_owned();
    zion.set_config(config);
    // `a` always fails, and one failure opens it.
    upstream.set_fault(
        &a,
        sentinel_testkit::UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            .set("SENTINEL_FAILURE_THRESHOLD", "1"),
    )
    .await;

    // Before any failure: equal costs, equal shares, everything closed.
    let reply = proxy.chat(&support::chat_body(Some("complex"))).await;
    assert_eq!(reply.status, 200);
    let (status, state) = admin_state(&proxy, None).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["tier_config"]["version"], version.as_str());
    assert_eq!(state["tier_config"]["source"], "zion");
    assert_eq!(state["tier_config"]["stale"], false);
    assert!(state["tier_config"]["age_seconds"].as_f64().unwrap() >= 0.0);
    let simple = state["tiers"]["simple"]["models"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(simple.len(), 2);
    for m in &simple {
        assert_eq!(m["share"], 0.5, "{m}");
        assert_eq!(m["breaker"], "closed");
        assert_eq!(m["retry_in_seconds"], serde_json::Value::Null);
        assert_eq!(m["provider"], "openai");
        assert_eq!(m["relative_cost"], 1);
    }
    assert_eq!(state["providers"]["openai"]["health"], "unknown");
    assert_eq!(state["providers"]["openai"]["breaker"], "closed");

    // `a` fails once: open, out of the shares; `b` takes all of `simple`.
    let reply = proxy.chat(&support::chat_body(Some("moderate"))).await;
    assert_eq!(reply.status, 502);
    let (_, state) = admin_state(&proxy, None).await;
    let model = |tier: &str, name: &str| {
        state["tiers"][tier]["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .cloned()
            .unwrap()
    };
    let open = model("simple", &a);
    assert_eq!(
        (open["share"].clone(), open["breaker"].clone()),
        (0.0.into(), "open".into())
    );
    let wait = open["retry_in_seconds"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 30.0, "{wait}");
    assert_eq!(model("simple", &b)["share"], 1.0);
    assert_eq!(model("moderate", &a)["share"], 0.0, "nothing left to give");
    assert_eq!(model("complex", &b)["share"], 1.0);
    proxy.stop().await;
}

#[tokio::test]
async fn the_state_api_is_guarded_by_the_inbound_keys() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_API_KEYS", "admin-key")).await;
    let (status, body) = admin_state(&proxy, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, _) = admin_state(&proxy, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, state) = admin_state(&proxy, Some("admin-key")).await;
    assert_eq!(status, 200, "{state}");
    // Without Zion or a file: the built-in tiers.
    assert_eq!(state["tier_config"]["source"], "builtin");
    assert_eq!(state["tier_config"]["age_seconds"], serde_json::Value::Null);
    assert_eq!(state["tiers"]["simple"]["models"][0]["share"], 1.0);
    proxy.stop().await;
}
