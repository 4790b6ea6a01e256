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
