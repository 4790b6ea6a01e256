//! The Redis session store while Redis hangs (`SIGSTOP`) under load, then
//! resumes: memory stays flat and no call given up takes effect afterwards.
//!
//! One test in its own binary, so that the process's RSS is this test's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::{Duration, Instant};

use sentinel_core::{Pinned, Tier};
use sentinel_layer::session::{RedisSessionStore, SessionStore};
use sentinel_testkit::{RedisServer, RespValue};

/// The routing layer's default session wait.
const WAIT: Duration = Duration::from_millis(50);
/// Sessions pinned before the freeze.
const PINNED: usize = 100;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// Calls of `command` Redis has executed, from `INFO commandstats`
/// (commands run by scripts count too).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let RespValue::Bulk(Some(info)) = redis.query(&["INFO", "commandstats"]).unwrap() else {
        panic!("INFO commandstats");
    };
    let prefix = format!("cmdstat_{command}:calls=");
    String::from_utf8(info)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn get(redis: &RedisServer, key: &str) -> Option<String> {
    match redis.query(&["GET", key]).unwrap() {
        RespValue::Bulk(Some(bytes)) => Some(String::from_utf8(bytes).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_frozen_for_ten_seconds_under_load_leaves_memory_flat_and_replays_nothing() {
    let redis = RedisServer::start().unwrap();
    let pool = sentinel_testkit::redis::fred_pool(&redis.url())
        .await
        .unwrap();
    let store = RedisSessionStore::new(pool, "sentinel:", Duration::from_secs(3600));
    // What the routing layer does when it is built.
    store.set_call_timeout(WAIT);
    assert_eq!(store.call_timeout(), WAIT);

    let simple = Pinned::new(Tier::Simple, "openai", "gpt-4o-mini");
    let complex = Pinned::new(Tier::Complex, "openai", "o3");
    for i in 0..PINNED {
        let id = format!("old-{i}");
        // Generous while Redis is healthy: the machine may be busy.
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(outcome) = store.pin_or_get(&id, Some(&simple)).await {
                    break outcome;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(outcome.current.as_ref(), Some(&simple));
    }

    let sets_before = calls(&redis, "set");
    let rss_before = rss_kib();
    redis.pause().unwrap();

    // 10 s at about 1000 calls a second, each given up after the layer's
    // wait: upgrades of the pinned sessions (a replayed one would re-pin
    // them to `o3`) and new sessions (a replayed one would create them).
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut sent = 0_usize;
    let mut rss_max = rss_before;
    // RSS once the stalled connections have been replaced (about 1 s in).
    let mut rss_settled = None;
    while started.elapsed() < Duration::from_secs(10) {
        if rss_settled.is_none() && started.elapsed() >= Duration::from_secs(3) {
            rss_settled = Some(rss_kib());
        }
        for _ in 0..10 {
            sent += 1;
            let store = store.clone();
            let complex = complex.clone();
            let done = done_tx.clone();
            let id = if sent.is_multiple_of(2) {
                format!("old-{}", sent % PINNED)
            } else {
                format!("new-{sent}")
            };
            tokio::spawn(async move {
                // Fails (fred's timeout, or at once while the connection is
                // replaced) or is given up by this timeout, as in the layer.
                let _ = tokio::time::timeout(WAIT, store.pin_or_get(&id, Some(&complex))).await;
                let _ = done.send(());
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        rss_max = rss_max.max(rss_kib());
    }
    drop(done_tx);
    let mut finished = 0;
    while done_rx.recv().await.is_some() {
        finished += 1;
    }
    assert_eq!(finished, sent);
    let growth_kib = rss_max.saturating_sub(rss_before);
    let late_growth_kib = rss_max.saturating_sub(rss_settled.unwrap());
    eprintln!(
        "{sent} calls during the freeze; RSS {rss_before} KiB before, at most +{growth_kib} KiB, \
         +{late_growth_kib} KiB over the last 7 s"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.resume().unwrap();
    // Whatever reached Redis's sockets during the freeze runs now; then the
    // store works again.
    let recovered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if store.pin_or_get("after", Some(&simple)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the store did not recover after Redis resumed"
    );

    // No call of the freeze took effect: the only SET since is "after"'s.
    assert_eq!(calls(&redis, "set") - sets_before, 1);
    for i in 0..PINNED {
        assert_eq!(
            get(&redis, &format!("sentinel:session:old-{i}")).as_deref(),
            Some("0\nopenai\ngpt-4o-mini"),
            "session old-{i} was re-pinned by a replayed call"
        );
    }
    let RespValue::Array(Some(created)) = redis.query(&["KEYS", "sentinel:session:new-*"]).unwrap()
    else {
        panic!("KEYS");
    };
    assert!(
        created.is_empty(),
        "{} sessions created late",
        created.len()
    );

    // Bounded memory: once the stalled connections are replaced (about a
    // second in), calls fail at once instead of piling up in fred's
    // in-flight buffers, so memory stops growing with the outage. When every
    // call is written to the frozen sockets, it grows by about 1 KiB a call
    // (7 MiB over the last 7 s here).
    assert!(
        late_growth_kib < 2 * 1024,
        "RSS grew by {late_growth_kib} KiB over the last 7 s of the freeze"
    );
    assert!(
        growth_kib < 16 * 1024,
        "RSS grew by {growth_kib} KiB during the freeze"
    );
}
