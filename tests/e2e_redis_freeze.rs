//! End to end, the proxy in process over a real `redis-server` that hangs
//! (`SIGSTOP`) for 10 s under load and then resumes: requests go on without
//! sessions meanwhile, memory stays bounded, and no session is re-pinned
//! (or created) afterwards by a command the proxy had given up on.
//!
//! One test in its own binary, so that the process's RSS is this test's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sentinel_testkit::{MockUpstream, MockZion, RedisServer, RespValue};
use support::{Env, Proxy, Reply, chat_body, unique};

/// Sessions pinned before the freeze.
const PINNED: usize = 40;
/// Concurrent clients during the freeze.
const CLIENTS: usize = 8;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// `POST /v1/chat/completions` for `tier` within `session`.
async fn in_session(proxy: &Proxy, session: &str, tier: &str) -> Reply {
    proxy.chat_in_session(session, &chat_body(Some(tier))).await
}

fn session_value(redis: &RedisServer, session: &str) -> Option<String> {
    match redis
        .query(&["GET", &format!("sentinel:session:{session}")])
        .unwrap()
    {
        RespValue::Bulk(Some(bytes)) => Some(String::from_utf8(bytes).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_ten_seconds_under_load_then_resumed_re_pins_no_session() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let proxy = Arc::new(Proxy::start(&Env::new(&upstream).zion(&zion).redis(&redis)).await);
    assert!(proxy.wait_ready(Duration::from_secs(5)).await);

    // Sessions pinned to a simple model while Redis is healthy.
    let prefix = unique("frozen");
    let mut pinned = Vec::new();
    for i in 0..PINNED {
        let session = format!("{prefix}-old-{i}");
        let reply = in_session(&proxy, &session, "simple").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let value = session_value(&redis, &session).expect("pinned");
        pinned.push((session, value));
    }

    let rss_before = rss_kib();
    redis.pause().unwrap();

    // 10 s of load: each client upgrades the pinned sessions to complex (a
    // replayed pin would move them to `o3`) and opens new ones (a replayed
    // pin would create them). Every request is served, without its session.
    let started = Instant::now();
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let proxy = proxy.clone();
        let prefix = prefix.clone();
        let served = served.clone();
        clients.spawn(async move {
            let mut n = 0_usize;
            while started.elapsed() < Duration::from_secs(10) {
                n += 1;
                let session = if n.is_multiple_of(2) {
                    format!("{prefix}-old-{}", (c + n) % PINNED)
                } else {
                    format!("{prefix}-new-{c}-{n}")
                };
                let reply = in_session(&proxy, &session, "complex").await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert_eq!(reply.model(), Some("o3"));
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    let mut rss_max = rss_before;
    let mut rss_settled = None;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The mock upstream records every request: keep its memory out.
        upstream.clear_requests();
        if rss_settled.is_none() && started.elapsed() >= Duration::from_secs(3) {
            rss_settled = Some(rss_kib());
        }
        rss_max = rss_max.max(rss_kib());
    }
    while let Some(client) = clients.join_next().await {
        client.unwrap();
    }
    let growth_kib = rss_max.saturating_sub(rss_before);
    let late_growth_kib = rss_max.saturating_sub(rss_settled.unwrap());
    eprintln!(
        "{} requests served during the freeze; RSS {rss_before} KiB before, at most \
         +{growth_kib} KiB, +{late_growth_kib} KiB over the last 7 s",
        served.load(Ordering::Relaxed)
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.resume().unwrap();
    // Redis runs what reached its sockets during the freeze; the proxy's
    // sessions work again once its connections are back.
    let probe = format!("{prefix}-after");
    let recovered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            in_session(&proxy, &probe, "moderate").await;
            if session_value(&redis, &probe).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "sessions did not come back after Redis resumed"
    );

    for (session, before) in &pinned {
        assert_eq!(
            session_value(&redis, session).as_ref(),
            Some(before),
            "{session} was re-pinned by a command given up during the freeze"
        );
        // And the proxy keeps it on its model.
        let reply = in_session(&proxy, session, "simple").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            Some(reply.model().unwrap()),
            before.rsplit('\n').next(),
            "{session}"
        );
    }
    let pattern = format!("sentinel:session:{prefix}-new-*");
    let RespValue::Array(Some(created)) = redis.query(&["KEYS", &pattern]).unwrap() else {
        panic!("KEYS");
    };
    assert!(
        created.is_empty(),
        "{} sessions created late",
        created.len()
    );

    // Memory stops growing once the proxy's stalled connections are
    // replaced (about a second in): a generous bound for a whole process
    // under load; the layer's own test measures the store closely.
    assert!(
        late_growth_kib < 8 * 1024,
        "RSS grew by {late_growth_kib} KiB over the last 7 s of the freeze"
    );
}
