//! Replicas on a highly available Redis: a Sentinel-managed primary
//! (`REDIS_URL=redis-sentinel://:password@...`, `RedisSentinels`: a
//! primary and a replica with a password, three sentinels without) with
//! the primary killed under traffic, and a
//! Redis over TLS (`rediss://`, `TestCerts`) that asks for a client
//! certificate, a Redis Cluster over TLS (`rediss-cluster://`) and a
//! Sentinel-managed Redis over TLS (`rediss-sentinel://`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{
    MockUpstream, MockZion, RedisCluster, RedisSentinels, RedisServer, TestCerts,
};
use support::{Env, Proxy, chat_body, config_through_redis, eventually, session_shared, unique};

/// Whether a new session pinned through `a` is honoured by `b` and is
/// stored on `redis`.
async fn shared_on(a: &Proxy, b: &Proxy, redis: &RedisServer) -> bool {
    shared_in(a, b, std::slice::from_ref(redis)).await
}

/// Whether a new session pinned through `a` is honoured by `b` and is
/// stored on one of `nodes` (a cluster's: the others answer `MOVED`).
async fn shared_in(a: &Proxy, b: &Proxy, nodes: &[RedisServer]) -> bool {
    let session = unique("shared");
    let key = format!("sentinel:session:{session}");
    session_shared(a, b, &session).await
        && nodes.iter().any(|node| {
            node.query(&["EXISTS", &key])
                .ok()
                .and_then(|n| n.as_integer())
                == Some(1)
        })
}

/// A Sentinel-managed Redis whose data nodes ask for a password (the
/// sentinels ask for none).
async fn sentinels() -> RedisSentinels {
    support::started("a Sentinel-managed Redis", || {
        RedisSentinels::start_with_password("ha-secret")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_sentinel_managed_redis_and_ride_out_a_failover() {
    let group = sentinels().await;
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .set("REDIS_URL", &group.url());

    // A loads the config from Zion and writes it through the sentinels'
    // primary; with Zion gone, B serves from that copy.
    let (a, b) = config_through_redis(&env, &env, &zion).await;
    let primary = group.primary().unwrap();
    let stored = group.data_nodes()[primary]
        .query(&["EXISTS", "sentinel:tier_config"])
        .unwrap();
    assert_eq!(stored.as_integer(), Some(1), "the config is on the primary");
    assert!(
        eventually(Duration::from_secs(10), || shared_on(
            &a,
            &b,
            &group.data_nodes()[primary]
        ))
        .await,
        "a session is shared through the primary"
    );

    // The primary dies under session traffic on both replicas: every
    // request is answered (Redis calls that fail fall back), and once the
    // sentinels promote the replica both proxies share sessions again
    // without a restart.
    let mut group = group;
    let sessions: Vec<String> = (0..6).map(|i| unique(&format!("ha-{i}"))).collect();
    // Rounds go on through the promotion and five rounds past it (at most
    // 300 rounds, some 30 s), so requests made while the proxies reconnect
    // to the new primary are checked too.
    let mut promoted = None;
    let mut after_promotion = 0;
    for round in 0..300 {
        if round == 4 {
            group.stop_data_node(primary);
        }
        for (i, session) in sessions.iter().enumerate() {
            let proxy = if (i + round) % 2 == 0 { &a } else { &b };
            let reply = proxy
                .chat_in_session(session, &chat_body(Some("simple")))
                .await;
            assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        }
        if round >= 4 && promoted.is_none() {
            promoted = tokio::task::block_in_place(|| group.promoted(primary));
        }
        if promoted.is_some() {
            after_promotion += 1;
            if after_promotion > 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = promoted.expect("the sentinels promote the replica");
    assert_ne!(promoted, primary);
    let promoted_node = &group.data_nodes()[promoted];
    assert!(
        eventually(Duration::from_secs(15), || async {
            shared_on(&a, &b, promoted_node).await && shared_on(&b, &a, promoted_node).await
        })
        .await,
        "sessions are shared through the promoted primary"
    );
    a.stop().await;
    b.stop().await;
}

/// A Redis taking TLS with client certificates, and its certificates.
async fn tls_redis() -> (RedisServer, TestCerts) {
    support::started("a TLS Redis", || {
        let certs = TestCerts::generate()?;
        let redis = RedisServer::start_tls(&certs, true)?;
        Ok((redis, certs))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_holds_sessions_with_the_ca_and_the_client_certificate() {
    let (redis, certs) = tls_redis().await;
    let upstream = MockUpstream::start().await.unwrap();
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let env = Env::new(&upstream).set("REDIS_URL", &redis.tls_url().unwrap());
    let trusted = env
        .clone()
        .set("REDIS_TLS_CA_FILE", &path(certs.ca()))
        .set("REDIS_TLS_CERT_FILE", &path(certs.client_cert()))
        .set("REDIS_TLS_KEY_FILE", &path(certs.client_key()));

    // Two replicas over TLS share a session; the pin is in Redis (read
    // back on the plain port), so it went over the TLS connections.
    let a = Proxy::start(&trusted).await;
    let b = Proxy::start(&trusted).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            shared_on(&a, &b, &redis).await && shared_on(&b, &a, &redis).await
        })
        .await,
        "replicas share sessions over TLS, stored in Redis"
    );

    // A replica that does not trust the CA cannot talk to this Redis: it
    // still answers every request (sessions fall back to memory) and
    // writes nothing.
    let before = redis.query(&["DBSIZE"]).unwrap().as_integer().unwrap();
    let untrusted = Proxy::start(&env).await;
    for _ in 0..3 {
        let reply = untrusted
            .chat_in_session(&unique("untrusted"), &chat_body(Some("simple")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let after = redis.query(&["DBSIZE"]).unwrap().as_integer().unwrap();
    assert_eq!(before, after, "nothing was written without TLS trust");
    untrusted.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_redis_cluster_over_tls() {
    let (cluster, certs) = support::started("a TLS Redis cluster", || {
        let certs = TestCerts::generate()?;
        let cluster = RedisCluster::start_tls(3, 0, &certs)?;
        Ok((cluster, certs))
    })
    .await;
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let url = cluster.tls_url().unwrap();
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    let env = Env::new(&upstream)
        .zion(&zion)
        .set("REDIS_URL", &url)
        .set("REDIS_TLS_CA_FILE", &certs.ca().to_string_lossy());

    // A fetches the config and stores it in the cluster over TLS; with
    // Zion gone, B reads it from there; sessions are shared both ways and
    // stored in the cluster (read back on the nodes' plain ports).
    let (a, b) = config_through_redis(&env, &env, &zion).await;
    let nodes = cluster.nodes();
    assert!(
        eventually(Duration::from_secs(10), || async {
            shared_in(&a, &b, nodes).await && shared_in(&b, &a, nodes).await
        })
        .await,
        "replicas share sessions through the cluster over TLS"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_sentinel_managed_redis_over_tls() {
    let (group, certs) = support::started("a Sentinel-managed Redis on TLS", || {
        let certs = TestCerts::generate()?;
        let group = RedisSentinels::start_tls(&certs)?;
        Ok((group, certs))
    })
    .await;
    let upstream = MockUpstream::start().await.unwrap();
    let url = group.url();
    assert!(url.starts_with("rediss-sentinel://"), "{url}");
    let env = Env::new(&upstream)
        .set("REDIS_URL", &url)
        .set("REDIS_TLS_CA_FILE", &certs.ca().to_string_lossy());

    // Both replicas reach the sentinels and the primary over TLS: sessions
    // are shared both ways and stored on the primary (read back on its
    // plain port).
    let a = Proxy::start(&env).await;
    let b = Proxy::start(&env).await;
    let primary = &group.data_nodes()[group.primary().unwrap()];
    assert!(
        eventually(Duration::from_secs(10), || async {
            shared_on(&a, &b, primary).await && shared_on(&b, &a, primary).await
        })
        .await,
        "replicas share sessions through the sentinels over TLS"
    );
    a.stop().await;
    b.stop().await;
}
