//! The Zion client against a mock Zion on loopback, with each fault.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use sentinel_core::Tier;
use sentinel_testkit::{MockZion, ZionFault};
use sentinel_zion::{ZionClient, ZionErrorKind, ZionSettings};
use serde_json::json;

const KEY: &str = "zion-secret-key-1234";

fn client(zion: &MockZion) -> ZionClient {
    ZionClient::new(
        ZionSettings::new(zion.url())
            .api_key(KEY)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_millis(400)),
    )
    .unwrap()
}

#[tokio::test]
async fn fetches_and_validates_the_config_with_the_bearer_key() {
    let zion = MockZion::start().await.unwrap();
    let config = client(&zion).get_tier_config().await.unwrap();
    assert_eq!(config.version(), Some("mock-1"));
    assert_eq!(config.tier(Tier::Simple).len(), 2);
    assert_eq!(config.tier(Tier::Complex).models()[0].model(), "o3");
    assert_eq!(zion.calls(), 1);
    assert_eq!(
        zion.last_authorization().as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
}

#[tokio::test]
async fn a_trailing_slash_in_the_base_url_is_fine() {
    let zion = MockZion::start().await.unwrap();
    let client = ZionClient::new(ZionSettings::new(format!("{}/", zion.url()))).unwrap();
    client.get_tier_config().await.unwrap();
    assert_eq!(zion.last_authorization(), None);
}

async fn failure(zion: &MockZion, fault: ZionFault) -> sentinel_zion::ZionError {
    zion.set_fault(fault);
    let err = client(zion).get_tier_config().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
    err
}

#[tokio::test]
async fn a_non_2xx_status_is_a_status_error() {
    let zion = MockZion::start().await.unwrap();
    let err = failure(&zion, ZionFault::Status(500)).await;
    assert_eq!(
        err.kind(),
        ZionErrorKind::Status(http::StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert!(err.to_string().contains("500"), "{err}");
    let err = failure(&zion, ZionFault::Status(401)).await;
    assert_eq!(
        err.kind(),
        ZionErrorKind::Status(http::StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let zion = MockZion::start().await.unwrap();
    let err = failure(&zion, ZionFault::Delay(Duration::from_secs(3))).await;
    assert_eq!(err.kind(), ZionErrorKind::Timeout);
}

#[tokio::test]
async fn an_oversize_answer_is_too_large() {
    let zion = MockZion::start().await.unwrap();
    let err = failure(&zion, ZionFault::Oversize(2 << 20)).await;
    assert_eq!(err.kind(), ZionErrorKind::TooLarge);
    // Just under the cap is fine.
    zion.set_fault(ZionFault::Oversize(1 << 19));
    client(&zion).get_tier_config().await.unwrap();
}

#[tokio::test]
async fn a_body_that_is_not_json_is_not_json() {
    let zion = MockZion::start().await.unwrap();
    let err = failure(&zion, ZionFault::NotJson).await;
    assert_eq!(err.kind(), ZionErrorKind::NotJson);
}

#[tokio::test]
async fn invalid_costs_are_an_invalid_config_naming_the_field() {
    let zion = MockZion::start().await.unwrap();
    let body = json!({ "tiers": { "moderate": { "models": [
        { "provider": "openai", "model": "gpt-4o", "relative_cost": 0 }
    ] } } });
    let err = failure(&zion, ZionFault::RawBody(body.to_string())).await;
    assert_eq!(err.kind(), ZionErrorKind::InvalidConfig);
    let msg = err.to_string();
    assert!(msg.contains("tiers.moderate.models[0]"), "{msg}");
    assert!(msg.contains("relative_cost"), "{msg}");

    // JSON of the wrong shape is an invalid config too, not "not JSON".
    let err = failure(
        &zion,
        ZionFault::RawBody(r#"{"tiers": {"simple": {"models": "none"}}}"#.into()),
    )
    .await;
    assert_eq!(err.kind(), ZionErrorKind::InvalidConfig);
}

#[tokio::test]
async fn a_stopped_zion_is_unreachable_and_a_reset_is_reported() {
    let zion = MockZion::start().await.unwrap();
    zion.stop().await;
    let err = client(&zion).get_tier_config().await.unwrap_err();
    assert_eq!(err.kind(), ZionErrorKind::Unreachable);
    zion.resume().await.unwrap();
    let err = failure(&zion, ZionFault::Reset).await;
    assert_eq!(err.kind(), ZionErrorKind::Unreachable);
}

#[test]
fn bad_settings_are_rejected_without_echoing_the_key() {
    let err = ZionClient::new(ZionSettings::new("ftp://zion")).unwrap_err();
    assert_eq!(err.kind(), ZionErrorKind::Client);
    let err = ZionClient::new(ZionSettings::new("not a url")).unwrap_err();
    assert_eq!(err.kind(), ZionErrorKind::Client);
    let err = ZionClient::new(ZionSettings::new("http://zion").api_key("bad\nkey")).unwrap_err();
    assert!(!err.to_string().contains("bad\nkey"));
    let settings = ZionSettings::new("http://zion").api_key(KEY);
    assert!(!format!("{settings:?}").contains(KEY));
    let client = ZionClient::new(settings).unwrap();
    assert!(!format!("{client:?}").contains(KEY));
}

#[test]
fn debug_forms_never_show_url_credentials_or_the_key() {
    let settings =
        ZionSettings::new("https://zuser:zpass@zion.example/?token=qsecret").api_key(KEY);
    let shown = format!("{settings:?}");
    let client = ZionClient::new(settings).unwrap();
    let shown = format!("{shown} {client:?}");
    assert!(shown.contains("zion.example"), "{shown}");
    for secret in ["zuser", "zpass", "qsecret", KEY] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}
