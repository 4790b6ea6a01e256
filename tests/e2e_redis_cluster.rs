//! Replicas sharing a real Redis Cluster (`RedisCluster`: three masters,
//! one replica each, `REDIS_URL=redis-cluster://...`): the tier config
//! read from the cluster with Zion down, a session pinned on one replica
//! honoured on the other, a model opened on one replica kept out by the
//! other, and a master killed under traffic (its replica takes over)
//! without a failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{MockUpstream, MockZion, RedisCluster, UpstreamFault};
use support::{Env, Proxy, chat_body, config_through_redis, eventually, session_shared, unique};

/// A cluster of three masters with a replica each.
async fn cluster() -> RedisCluster {
    support::started("a Redis cluster", || RedisCluster::start(3, 1)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_config_sessions_and_breakers_through_a_cluster() {
    let cluster = cluster().await;
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .set("REDIS_URL", &cluster.url())
        .set("SENTINEL_BACKOFF_INITIAL_SECS", "30")
        // Every session call gets its answer even with both cores loaded.
        .set("SENTINEL_SESSION_WAIT_MS", "2000");

    // A loads the config from Zion and writes it to the cluster; Zion
    // goes away; B starts and serves from the cluster's copy.
    let (a, b) = config_through_redis(
        &env.clone().set("SENTINEL_FAILURE_THRESHOLD", "1"),
        &env.set("SENTINEL_FAILURE_THRESHOLD", "100"),
        &zion,
    )
    .await;

    // A session pinned on A holds on B, and one pinned on B holds on A
    // (session keys spread over slots).
    for i in 0..6 {
        let session = unique("cluster-session");
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert!(session_shared(from, to, &session).await, "{session}");
    }

    // A model opened on A: B keeps off it (it would need 100 failures of
    // its own to open it).
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    a.chat(&chat_body(Some("moderate")))
        .await
        .assert_error(502, "upstream_failed");
    let shared = eventually(Duration::from_secs(5), || async {
        b.chat(&chat_body(Some("moderate"))).await.status == 503
    })
    .await;
    assert!(shared, "B kept sending to the model A found failing");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_fails_no_request_and_the_fleet_recovers() {
    let mut cluster = cluster().await;
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .set("REDIS_URL", &cluster.url());
    let a = Proxy::start(&env).await;
    let b = Proxy::start(&env).await;
    assert!(a.wait_ready(Duration::from_secs(10)).await);
    assert!(b.wait_ready(Duration::from_secs(10)).await);

    // Traffic with sessions on both replicas while a master dies and its
    // replica takes over: every request is answered 200 (Redis calls that
    // fail fall back: no pin, the local breaker, the config in memory).
    let sessions: Vec<String> = (0..8).map(|i| unique(&format!("fo-{i}"))).collect();
    let master = cluster.masters().unwrap()[0];
    let mut killed = false;
    for round in 0..30 {
        if round == 5 {
            cluster.stop_node(master);
            killed = true;
        }
        for (i, session) in sessions.iter().enumerate() {
            let proxy = if (i + round) % 2 == 0 { &a } else { &b };
            let reply = proxy
                .chat_in_session(session, &chat_body(Some("simple")))
                .await;
            assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed);
    let cluster =
        tokio::task::spawn_blocking(move || cluster.wait_for_failover(master).map(|()| cluster))
            .await
            .unwrap()
            .expect("the cluster fails over");

    // After the failover, a new session pinned on one replica holds on the
    // other again.
    let pinned_everywhere = eventually(Duration::from_secs(10), || async {
        session_shared(&a, &b, &unique("after-failover")).await
    })
    .await;
    assert!(
        pinned_everywhere,
        "sessions are shared again after the failover"
    );
    drop(cluster);
    a.stop().await;
    b.stop().await;
}
