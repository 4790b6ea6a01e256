//! `RedisServer`: a real redis-server that starts, answers, stops and comes
//! back on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::TcpStream;

use sentinel_testkit::{RedisServer, RespValue};

#[test]
fn starts_on_a_free_port_and_answers() {
    let redis = RedisServer::start().unwrap();
    assert_ne!(redis.port(), 0);
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(
        redis.query(&["PING"]).unwrap(),
        RespValue::Simple("PONG".into())
    );
}

#[test]
fn two_servers_share_nothing() {
    let first = RedisServer::start().unwrap();
    let second = RedisServer::start().unwrap();
    assert_ne!(first.port(), second.port());
    first.query(&["SET", "shared", "no"]).unwrap();
    assert!(second.query(&["GET", "shared"]).unwrap().is_nil());
}

#[test]
fn query_reads_values_ttls_and_errors() {
    let redis = RedisServer::start().unwrap();
    assert_eq!(
        redis
            .query(&["SET", "sentinel:tier_config", "{\"a\": 1}", "EX", "1800"])
            .unwrap(),
        RespValue::Simple("OK".into())
    );
    assert_eq!(
        redis
            .query(&["GET", "sentinel:tier_config"])
            .unwrap()
            .as_str(),
        Some("{\"a\": 1}")
    );
    let ttl = redis.query(&["TTL", "sentinel:tier_config"]).unwrap();
    assert!(matches!(ttl, RespValue::Integer(1790..=1800)), "{ttl:?}");
    let pttl = redis.query(&["PTTL", "sentinel:tier_config"]).unwrap();
    assert!(pttl.as_integer().unwrap() > 1_700_000);

    redis.query(&["SET", "forever", "x"]).unwrap();
    assert_eq!(
        redis.query(&["TTL", "forever"]).unwrap(),
        RespValue::Integer(-1)
    );
    assert_eq!(
        redis.query(&["TTL", "missing"]).unwrap(),
        RespValue::Integer(-2)
    );
    assert_eq!(
        redis.query(&["GET", "missing"]).unwrap(),
        RespValue::Bulk(None)
    );

    redis.query(&["RPUSH", "list", "a", "b"]).unwrap();
    assert_eq!(
        redis.query(&["LRANGE", "list", "0", "-1"]).unwrap(),
        RespValue::Array(Some(vec![
            RespValue::Bulk(Some(b"a".to_vec())),
            RespValue::Bulk(Some(b"b".to_vec())),
        ]))
    );
    assert!(matches!(
        redis.query(&["NOSUCHCOMMAND"]).unwrap(),
        RespValue::Error(message) if message.starts_with("ERR")
    ));

    assert_eq!(
        redis.query(&["DEL", "forever"]).unwrap(),
        RespValue::Integer(1)
    );
    assert_eq!(
        redis.query(&["FLUSHALL"]).unwrap(),
        RespValue::Simple("OK".into())
    );
    assert_eq!(redis.query(&["DBSIZE"]).unwrap(), RespValue::Integer(0));
}

#[test]
fn stop_refuses_connections_and_restart_comes_back_empty_on_the_same_port() {
    let mut redis = RedisServer::start().unwrap();
    let port = redis.port();
    redis.query(&["SET", "k", "v"]).unwrap();

    redis.stop();
    assert!(!redis.is_running());
    assert!(TcpStream::connect(redis.addr()).is_err());
    assert!(redis.query(&["PING"]).is_err());
    redis.stop(); // stopping twice is harmless

    redis.restart().unwrap();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.query(&["PING"]).unwrap().as_str(), Some("PONG"));
    assert!(
        redis.query(&["GET", "k"]).unwrap().is_nil(),
        "nothing is persisted"
    );
}

#[test]
fn restart_while_a_client_holds_a_connection() {
    let mut redis = RedisServer::start().unwrap();
    let held = TcpStream::connect(redis.addr()).unwrap();
    redis.restart().unwrap();
    assert_eq!(redis.query(&["PING"]).unwrap().as_str(), Some("PONG"));
    drop(held);
}

#[test]
fn drop_kills_the_server() {
    let redis = RedisServer::start().unwrap();
    let addr = redis.addr();
    drop(redis);
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn ports_are_drawn_below_the_kernels_ephemeral_range_and_never_6379() {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let servers: Vec<_> = (0..4).map(|_| RedisServer::start().unwrap()).collect();
    let mut ports: Vec<_> = servers.iter().map(RedisServer::port).collect();
    for port in &ports {
        assert!(*port < ephemeral, "{port} is in the ephemeral range");
        assert_ne!(*port, 6379);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len(), "two servers on one port");
}

/// A `redis-server` that is not a `RedisServer`, on `port`.
struct Foreign(std::process::Child);

impl Foreign {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let foreign = Foreign(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "no foreign redis");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        foreign
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restart_fails_rather_than_hand_out_another_redis_that_took_the_port() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    // Someone else's Redis takes the port while ours is down: it answers
    // PING there, but it is not ours.
    let foreign = Foreign::start(redis.port());
    let error = redis.restart().unwrap_err();
    assert!(!redis.is_running(), "{error}");
    drop(foreign);
    // Once the port is free again, the server comes back on it.
    redis.restart().unwrap();
    assert_eq!(redis.query(&["PING"]).unwrap().as_str(), Some("PONG"));
}
