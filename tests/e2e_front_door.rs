//! The proxy's front door against hostile or careless clients, over real
//! sockets: content types that would skip the rules, slow heads and
//! bodies, idle connections, oversized heads, floods past the in-flight
//! cap, CORS, inbound keys, and what a broken stream looks like.
//!
//! Time limits here are set short (hundreds of milliseconds) and every
//! assertion on them has seconds of margin: the tests check that a limit
//! acts, not how precisely.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use sentinel_testkit::{MockUpstream, MockZion, UpstreamFault, ZionFault};
use serde_json::{Value, json};
use support::{Env, Proxy, Reply, chat_body, eventually, metric, raw_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `within` passes);
/// returns what was read and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_model_never_reaches_an_upstream_by_any_header() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let body = json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "hi" }] });
    for content_type in [
        Some("application/grpc"),
        Some("application/grpc+json"),
        Some("application/grpc+proto"),
        Some("application/grpc-web+json"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json"),
        None,
    ] {
        for extra in [
            &[][..],
            &[("te", "trailers")],
            &[("x-sentinel-tier", "complex")],
            &[("content-encoding", "gzip")],
        ] {
            let mut request = proxy
                .request(reqwest::Method::POST, "/v1/chat/completions")
                .body(body.to_string());
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            for (name, value) in extra {
                request = request.header(*name, *value);
            }
            let reply = Reply::read(request.send().await.unwrap()).await;
            assert!(
                reply.status == 415 || reply.status == 400,
                "{content_type:?} {extra:?}: {} {}",
                reply.status,
                reply.text()
            );
            let code = reply.json["error"]["code"].as_str().unwrap_or_default();
            assert!(
                code == "unsupported_media_type" || code == "model_not_allowed",
                "{content_type:?} {extra:?}: {code}"
            );
        }
    }
    assert_eq!(upstream.total_calls(), 0, "nothing went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_slowly_is_cut_off() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy =
        Proxy::start(&Env::new(&upstream).set("SENTINEL_HEADER_READ_TIMEOUT_MS", "500")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header line every 100 ms, for up to 20 s: the proxy must close first.
    let mut closed = false;
    for i in 0..200 {
        if stream
            .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection stayed open while the head trickled");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy =
        Proxy::start(&Env::new(&upstream).set("SENTINEL_HEADER_READ_TIMEOUT_MS", "300")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "an idle new connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_slowly_gets_408() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy =
        Proxy::start(&Env::new(&upstream).set("SENTINEL_BODY_READ_TIMEOUT_MS", "500")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"tier\":",
        )
        .await
        .unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write_half.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            let mut buf = [0u8; 4096];
            loop {
                match read_half.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        answer
    });
    let answer = String::from_utf8(reader.await.unwrap()).unwrap();
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "request_timeout");
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_but_slow_streams_do_not() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(5);
    upstream.set_chunk_delay(Duration::from_millis(200));
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .set("SENTINEL_KEEPALIVE_IDLE_TIMEOUT_MS", "5000")
            .set("SENTINEL_HEADER_READ_TIMEOUT_MS", "300"),
    )
    .await;

    // A stream longer than both limits finishes.
    let reply = proxy.chat_stream("simple").await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("data: [DONE]"), "{}", reply.text());

    // A kept-alive connection is idle, not reading a head: it outlives the
    // header limit (300 ms) and serves a second request.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(healthz).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    stream.write_all(healthz).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // With nothing more to do, it is closed after the idle limit.
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    assert!(closed, "the idle keep-alive connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_431() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_MAX_HEADER_BYTES", "8192")).await;
    let big = "a".repeat(20_000);
    let (status, _, _) = raw_http(
        proxy.addr(),
        &format!("GET /healthz HTTP/1.1\r\nX-Big: {big}"),
        b"",
    )
    .await;
    assert_eq!(status, 431);
    // A head under the cap is served.
    let (status, _, _) = raw_http(proxy.addr(), "GET /healthz HTTP/1.1\r\nX-Small: a", b"").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_requests_are_shed_at_once() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault_times("gpt-4o-mini", UpstreamFault::Hold, 2);
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_MAX_IN_FLIGHT", "2")).await;
    let shed = |metrics: &str| metric(metrics, "sentinel_requests_shed_total", &[]).unwrap_or(0.0);
    let shed_before = shed(&proxy.metrics().await);
    let held = |proxy: &Proxy| {
        proxy
            .post_json("/v1/chat/completions", &chat_body(Some("simple")))
            .send()
    };
    let first = tokio::spawn(held(&proxy));
    let second = tokio::spawn(held(&proxy));
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream.total_calls() == 2
        })
        .await
    );

    // Both places are taken until the upstream lets go: shed, not queued.
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(503, "overloaded");
    assert_eq!(reply.retry_after(), 1);
    // Only routed requests take a place: the rest is still served.
    assert_eq!(proxy.get("/healthz").await.status, 200);
    assert_eq!(proxy.get("/v1/models").await.status, 200);
    // The recorder is the process's, shared with the other tests that run
    // at the same time (and may shed too): at least this one is counted.
    let metrics = proxy.metrics().await;
    assert!(shed(&metrics) - shed_before >= 1.0);
    assert_eq!(
        upstream.total_calls(),
        2,
        "the shed request never went upstream"
    );

    upstream.release_held();
    for call in [first, second] {
        let reply = Reply::read(call.await.unwrap().unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    assert_eq!(reply.status, 200, "room again once they ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_frees_its_place() {
    let upstream = MockUpstream::start().await.unwrap();
    // A long stream, produced as fast as the upstream can.
    upstream.set_stream_chunks(100_000);
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .set("SENTINEL_SEND_TIMEOUT_MS", "500")
            .set("SENTINEL_MAX_IN_FLIGHT", "1"),
    )
    .await;
    let mut body = chat_body(Some("simple"));
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Read the head, then stop reading: the socket buffers fill up.
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The place it held comes free once the proxy gives up on it.
    assert!(
        eventually(Duration::from_secs(20), || async {
            proxy.chat(&chat_body(Some("simple"))).await.status == 200
        })
        .await,
        "the stalled client kept its place"
    );
    // And its connection was closed: reading on drains what was buffered,
    // then ends.
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_for_listed_origins_only() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .set("SENTINEL_API_KEYS", "k1")
            .set("SENTINEL_CORS_ALLOWED_ORIGINS", "https://app.example"),
    )
    .await;
    let preflight = |origin: &'static str| {
        proxy
            .request(reqwest::Method::OPTIONS, "/v1/chat/completions")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-stainless-os",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        h(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert!(
        h(&allowed, "access-control-allow-methods")
            .unwrap()
            .contains("post")
    );
    assert!(
        h(&allowed, "access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert_eq!(h(&other, "access-control-allow-origin"), None);

    // The real request from the page: keyed, and its headers readable.
    let response = proxy
        .post_json("/v1/chat/completions", &chat_body(Some("simple")))
        .header("origin", "https://app.example")
        .header("authorization", "Bearer k1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        h(&response, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert!(
        h(&response, "access-control-expose-headers")
            .unwrap()
            .contains("x-sentinel-model")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_options_is_405() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let response = proxy
        .request(reqwest::Method::OPTIONS, "/v1/chat/completions")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers().get("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_keys_take_bearer_in_any_case_and_nothing_else() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_API_KEYS", "k1,other-key")).await;
    for (authorization, status) in [
        ("Bearer k1", 200),
        ("bearer k1", 200),
        ("BEARER other-key", 200),
        ("Bearer   k1  ", 200),
        ("Bearer k1x", 401),
        ("Bearer k", 401),
        ("Basic k1", 401),
        ("Bearer", 401),
        ("k1", 401),
    ] {
        let reply = Reply::read(
            proxy
                .post_json("/v1/chat/completions", &chat_body(Some("simple")))
                .header("authorization", authorization)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, status, "{authorization:?}");
    }
    // `/v1/models/{id}` is guarded like the rest of `/v1/`.
    assert_eq!(proxy.get("/v1/models/simple").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_client_names_in_connection_stay_behind() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let reply = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &chat_body(Some("simple")))
            .header("connection", "keep-alive, Idempotency-Key, traceparent")
            .header("idempotency-key", "hop-only")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("user-agent", "kept-agent")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = &upstream.requests()[0];
    assert_eq!(sent.headers.get("idempotency-key"), None);
    assert_eq!(sent.headers.get("traceparent"), None);
    assert_eq!(sent.headers.get("user-agent").unwrap(), "kept-agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_is_retrieved_like_an_openai_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let reply = proxy.get("/v1/models/moderate").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json,
        json!({ "id": "moderate", "object": "model", "created": 0, "owned_by": "sentinel" })
    );
    proxy
        .get("/v1/models/gpt-4o")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zions_own_error_text_is_logged_not_returned() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    // Not valid JSON that quotes something internal.
    zion.set_fault(ZionFault::RawBody(
        "internal-config-detail: db=zion-prod-7 owner=ops".into(),
    ));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(503, "tier_config_unavailable");
    let text = reply.text();
    for leaked in [
        "internal-config-detail",
        "zion-prod-7",
        "ops",
        "JSON",
        "json",
    ] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
    }
    assert!(reply.header("retry-after").is_some());
}

/// The events of an SSE body, split on blank lines.
fn events(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_mid_event_ends_with_whole_events_and_an_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(4);
    upstream.set_fault("gpt-4o", UpstreamFault::BreakMidEvent(2));
    upstream.set_fault("gpt-4.1", UpstreamFault::BreakMidEvent(1));
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    // Chat completions: two whole chunks, then the error event on its own.
    let reply = proxy.chat_stream("moderate").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.ends_with("\n\n"), "{text}");
    let chunks = events(&text);
    assert_eq!(chunks.len(), 3, "{text}");
    for event in &chunks[..2] {
        let data: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["object"], "chat.completion.chunk");
    }
    let error: Value = serde_json::from_str(chunks[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_failed");

    // The Responses API: its own `error` event shape.
    let reply = Reply::read(
        proxy
            .post_json(
                "/v1/responses",
                &json!({ "model": "complex", "input": "Plan a trip.", "stream": true }),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let all = events(&text);
    let last = all.last().unwrap();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("not an error event: {last:?} in {text}"));
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "upstream_failed");
    assert!(error["sequence_number"].is_u64(), "{error}");
    // Every event before it is whole JSON.
    for event in &all[..all.len() - 1] {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        assert!(serde_json::from_str::<Value>(data).is_ok(), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_with_the_same_rules() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(sentinel_zion::tls_config().unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(Some("complex")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let reply = Reply::read(response).await;
    reply.assert_served("complex", "gpt-4.1");

    let response = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/grpc")
        .body(json!({ "model": "gpt-4o" }).to_string())
        .send()
        .await
        .unwrap();
    Reply::read(response)
        .await
        .assert_error(415, "unsupported_media_type");
    assert_eq!(upstream.calls_for("gpt-4o"), 0);
}
