//! A fast mock OpenAI upstream.
//!
//! `POST` on any path answers a chat completion: JSON, or SSE when the body
//! has `"stream":true` (then a role chunk, eight content chunks, a finish
//! chunk, a usage-only chunk when the body asks for `include_usage`, and
//! `[DONE]`). A body member `"bench_chunk_delay_ms": N` spaces the SSE
//! chunks that far apart (for the slow-stream check; a body member, since
//! a gateway forwards only the headers it knows, and passes unknown members
//! of the body on). `GET` on a
//! path ending in `/models` lists one model (the proxy's health probe).
//! Everything else is a 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The body member that spaces SSE chunks.
pub(crate) const CHUNK_DELAY_MEMBER: &str = "bench_chunk_delay_ms";

/// The number of content chunks in a streamed answer.
pub(crate) const CONTENT_CHUNKS: usize = 8;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hamlet, prince of Denmark, avenges his father's murder at the cost of nearly everyone, himself included."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":24,"total_tokens":66},"system_fingerprint":"fp_bench"}"#;

type Body = Either<Full<Bytes>, UnsyncBoxBody<Bytes, Infallible>>;

fn chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

/// The SSE events of one streamed answer.
fn events(include_usage: bool) -> Vec<Bytes> {
    let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    for i in 0..CONTENT_CHUNKS {
        events.push(chunk(&format!(r#"{{"content":"word{i} "}}"#), "null"));
    }
    events.push(chunk("{}", r#""stop""#));
    if include_usage {
        events.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":24,\"total_tokens\":66}}\n\n"));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// The `bench_chunk_delay_ms` member of a body, read only when present
/// (the fast path never parses the body).
fn chunk_delay(body: &[u8]) -> Option<Duration> {
    if !contains(body, CHUNK_DELAY_MEMBER.as_bytes()) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get(CHUNK_DELAY_MEMBER)?
        .as_u64()
        .map(Duration::from_millis)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if request.method() == Method::GET && request.uri().path().ends_with("/models") {
        let list = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"bench"}]}"#;
        return Ok(response(
            StatusCode::OK,
            "application/json",
            Either::Left(Full::new(Bytes::from_static(list.as_bytes()))),
        ));
    }
    if request.method() != Method::POST {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "application/json",
            Either::Left(Full::new(Bytes::from_static(b"{}"))),
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let delay = chunk_delay(&body);
    if !contains(&body, b"\"stream\":true") {
        return Ok(response(
            StatusCode::OK,
            "application/json",
            Either::Left(Full::new(Bytes::from_static(COMPLETION.as_bytes()))),
        ));
    }
    let events = events(contains(&body, b"\"include_usage\":true"));
    let stream = futures_util::stream::iter(events).then(move |event| async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(Frame::data(event))
    });
    Ok(response(
        StatusCode::OK,
        "text/event-stream",
        Either::Right(BodyExt::boxed_unsync(StreamBody::new(stream))),
    ))
}

/// Serves the mock upstream on `listen` until the process is killed.
pub(crate) async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_answer_carries_usage_only_when_asked() {
        let with = events(true);
        let without = events(false);
        assert_eq!(with.len(), without.len() + 1);
        assert_eq!(without.len(), CONTENT_CHUNKS + 3);
        assert!(with.iter().any(|e| contains(e, b"\"choices\":[]")));
        assert!(!without.iter().any(|e| contains(e, b"\"usage\"")));
        for event in &with {
            assert!(event.starts_with(b"data: ") && event.ends_with(b"\n\n"));
        }
        let parsed: serde_json::Value = serde_json::from_str(COMPLETION).unwrap();
        assert_eq!(parsed["usage"]["total_tokens"], 66);
    }

    #[test]
    fn the_chunk_delay_is_read_from_the_body() {
        assert_eq!(
            chunk_delay(br#"{"stream":true,"bench_chunk_delay_ms":20}"#),
            Some(Duration::from_millis(20))
        );
        assert_eq!(chunk_delay(br#"{"stream":true}"#), None);
        assert_eq!(chunk_delay(br#"{"bench_chunk_delay_ms":"x"}"#), None);
    }
}
