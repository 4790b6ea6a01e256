//! A tonic service behind the layer: the tier comes from `x-sentinel-tier`
//! metadata, the body passes through, errors are gRPC statuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_layer::TierRoutingLayer;
use tonic::Code;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn serve() -> (Channel, tokio::task::JoinHandle<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = TierRoutingLayer::builder(support::source())
        .grpc_paths(["/grpc.health.v1.Health/"])
        .rng_seed(2)
        .build()
        .unwrap();
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    (channel, server)
}

fn check(tier: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(tier) = tier {
        request
            .metadata_mut()
            .insert("x-sentinel-tier", tier.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_calls_are_routed_by_metadata_and_answered_by_the_service() {
    let (channel, server) = serve().await;
    let mut client = HealthClient::new(channel);

    let response = client.check(check(Some("complex"))).await.unwrap();
    assert_eq!(response.metadata().get("x-sentinel-model").unwrap(), "big");
    assert_eq!(
        response.metadata().get("x-sentinel-tier").unwrap(),
        "complex"
    );
    assert_eq!(
        response.into_inner().status,
        1,
        "SERVING: the body passed through"
    );

    let response = client.check(check(None)).await.unwrap();
    assert_eq!(
        response.metadata().get("x-sentinel-tier").unwrap(),
        "simple"
    );

    let status = client.check(check(Some("huge"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("invalid_tier"),
        "{}",
        status.message()
    );
    server.abort();
}
