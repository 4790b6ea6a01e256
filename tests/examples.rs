//! The examples work: each example file is compiled here as a module and
//! its app is driven in-process (axum, through `oneshot`) or over loopback
//! (tonic, on a free port, with the example's hand-written client).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[allow(dead_code)] // `main` and its helpers run only as the example
#[path = "../examples/axum_app.rs"]
mod axum_app;

#[allow(dead_code)] // `main` and its helpers run only as the example
#[path = "../examples/tonic_app.rs"]
mod tonic_app;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use tower::ServiceExt;

async fn send(app: axum::Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let model = response
        .headers()
        .get("x-sentinel-model")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        model,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn chat(body: &Value) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_axum_app_answers_with_the_model_of_the_requested_tier() {
    let app = axum_app::app().unwrap();

    let request = json!({
        "tier": "moderate",
        "messages": [{ "role": "user", "content": "Summarise this paragraph." }]
    });
    let (status, header, body) = send(app.clone(), chat(&request)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // `gpt-4o` is the only model of the example's moderate tier.
    assert_eq!(header.as_deref(), Some("gpt-4o"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("moderate") && content.contains("Summarise this paragraph."),
        "{content}"
    );

    // A bad tier is the layer's 400, before the handler.
    let (status, header, body) = send(
        app.clone(),
        chat(&json!({ "tier": "huge", "messages": [] })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(header, None);
    assert_eq!(body["error"]["code"], "invalid_tier");

    // Routes the layer does not route pass through.
    let healthz = Request::get("/healthz").body(Body::empty()).unwrap();
    let response = app.oneshot(healthz).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-sentinel-model").is_none());
}

#[tokio::test]
async fn the_tonic_app_answers_with_the_complex_model_and_rejects_a_bad_tier() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(tonic_app::serve(listener, tonic_app::layer().unwrap()));
    let mut client = tonic_app::CompleterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let response = client
        .complete(tonic_app::request("Prove it.", "complex").unwrap())
        .await
        .unwrap();
    // `claude-opus-4-1` is the only model of the example's complex tier.
    assert_eq!(
        response.metadata().get("x-sentinel-model").unwrap(),
        "claude-opus-4-1"
    );
    let reply = response.into_inner();
    assert_eq!(reply.model, "claude-opus-4-1");
    assert_eq!(reply.tier, "complex");
    assert!(reply.text.contains("Prove it."), "{}", reply.text);

    let status = client
        .complete(tonic_app::request("Prove it.", "huge").unwrap())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    server.abort();
}
