//! `MockZion`: serves the tier config, counts calls, records the bearer
//! token, injects faults, stops and resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use sentinel_testkit::zion::{TIERS_CONFIG_PATH, default_config};
use sentinel_testkit::{MockZion, ZionFault};
use serde_json::json;

fn config_url(zion: &MockZion) -> String {
    format!("{}{TIERS_CONFIG_PATH}", zion.url())
}

#[tokio::test]
async fn serves_the_default_config_and_records_the_bearer_token() {
    let zion = MockZion::start().await.unwrap();
    assert_eq!(zion.url(), format!("http://{}", zion.addr()));
    assert!(!zion.url().ends_with('/'));
    assert_eq!(zion.calls(), 0);
    assert_eq!(zion.last_authorization(), None);

    let reply = support::get(&config_url(&zion), &[("authorization", "Bearer zion-key")])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.json(), default_config());
    assert_eq!(zion.calls(), 1);
    assert_eq!(
        zion.last_authorization().as_deref(),
        Some("Bearer zion-key")
    );

    support::get(&config_url(&zion), &[]).await.unwrap();
    assert_eq!(zion.calls(), 2);
    assert_eq!(zion.last_authorization(), None, "the last request had none");
    zion.reset_calls();
    assert_eq!(zion.calls(), 0);

    let other = support::get(&format!("{}/api/v1/other", zion.url()), &[])
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(zion.calls(), 0, "only the config path counts");
}

#[test]
fn the_default_config_has_every_tier_with_costs_and_pricing() {
    let config = default_config();
    let models = |tier: &str| -> Vec<(String, u64)> {
        config["tiers"][tier]["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["provider"], "openai");
                assert!(m["pricing"]["input_per_mtok_usd"].is_f64());
                assert!(m["pricing"]["output_per_mtok_usd"].is_f64());
                (
                    m["model"].as_str().unwrap().to_owned(),
                    m["relative_cost"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let owned = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
        list.iter().map(|(m, c)| ((*m).to_owned(), *c)).collect()
    };
    assert_eq!(
        models("simple"),
        owned(&[("gpt-4o-mini", 1), ("gpt-4.1-mini", 2)])
    );
    assert_eq!(models("moderate"), owned(&[("gpt-4o", 3)]));
    assert_eq!(models("complex"), owned(&[("o3", 8)]));
}

#[tokio::test]
async fn set_config_changes_the_answer() {
    let zion = MockZion::start().await.unwrap();
    let config = json!({ "tiers": { "simple": { "models": [] } } });
    zion.set_config(config.clone());
    assert_eq!(
        support::get(&config_url(&zion), &[]).await.unwrap().json(),
        config
    );
}

#[tokio::test]
async fn status_fault_until_cleared() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Status(503));
    for _ in 0..2 {
        let reply = support::get(&config_url(&zion), &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    zion.clear_fault();
    let reply = support::get(&config_url(&zion), &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(zion.calls(), 3, "faulted calls count too");
}

#[tokio::test]
async fn delay_fault_answers_late_but_normally() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    let reply = support::get(&config_url(&zion), &[]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), default_config());
}

#[tokio::test]
async fn oversize_fault_sends_exactly_that_many_bytes_of_json() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Oversize(3 * 1024 * 1024));
    let reply = support::get(&config_url(&zion), &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 3 * 1024 * 1024);
    assert_eq!(reply.json()["tiers"], default_config()["tiers"]);
}

#[tokio::test]
async fn not_json_and_raw_body_faults() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::NotJson);
    let reply = support::get(&config_url(&zion), &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(serde_json::from_slice::<serde_json::Value>(&reply.body).is_err());

    zion.set_fault(ZionFault::RawBody(r#"{"tiers": 42}"#.into()));
    let reply = support::get(&config_url(&zion), &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), r#"{"tiers": 42}"#);
}

#[tokio::test]
async fn reset_fault_closes_the_connection_without_an_answer() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Reset);
    let error = support::get(&config_url(&zion), &[]).await.unwrap_err();
    let error = error.downcast::<hyper::Error>().unwrap();
    assert!(error.is_incomplete_message(), "{error:?}");
    assert_eq!(zion.calls(), 1);

    zion.clear_fault();
    assert_eq!(
        support::get(&config_url(&zion), &[]).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn stop_refuses_connections_and_closes_open_ones_then_resume_serves_again() {
    let zion = MockZion::start().await.unwrap();
    let addr = zion.addr();
    let url = config_url(&zion);
    zion.set_config(json!({ "version": "kept" }));

    // A kept-alive connection that has already been used.
    let mut kept = support::connect(&url).await.unwrap();
    let first = kept
        .send_request(support::request(
            http::Method::GET,
            &url,
            &[],
            bytes::Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    drop(first);

    zion.stop().await;
    zion.stop().await; // stopping twice is harmless
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(support::get(&url, &[]).await.is_err());
    let on_kept = kept
        .send_request(support::request(
            http::Method::GET,
            &url,
            &[],
            bytes::Bytes::new(),
        ))
        .await;
    assert!(on_kept.is_err(), "open connections are closed too");

    zion.resume().await.unwrap();
    zion.resume().await.unwrap(); // resuming twice is harmless
    assert_eq!(zion.addr(), addr);
    let reply = support::get(&url, &[]).await.unwrap();
    assert_eq!(reply.json(), json!({ "version": "kept" }), "same state");
    assert_eq!(zion.calls(), 2);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let zion = MockZion::start().await.unwrap();
    let addr = zion.addr();
    drop(zion);
    // The abort takes effect when the runtime next runs the task.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_stopped_mock_holds_its_port_so_no_other_server_takes_it() {
    let zion = MockZion::start().await.unwrap();
    let addr = zion.addr();
    let url = config_url(&zion);
    for _ in 0..2 {
        // A connection the stop closes (it lingers in TIME_WAIT on the
        // mock's port).
        let mut kept = support::connect(&url).await.unwrap();
        let reply = kept
            .send_request(support::request(
                http::Method::GET,
                &url,
                &[],
                bytes::Bytes::new(),
            ))
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        drop(reply);

        zion.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        // Neither a plain bind nor one with SO_REUSEADDR (tokio's, Redis's)
        // gets the port while the mock is stopped.
        assert!(std::net::TcpListener::bind(addr).is_err());
        assert!(tokio::net::TcpListener::bind(addr).await.is_err());

        zion.resume().await.unwrap();
        assert_eq!(zion.addr(), addr);
        let reply = support::get(&url, &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
}
