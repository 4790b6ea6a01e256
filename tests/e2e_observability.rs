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
