//! The soak's mock OpenAI upstream: answers like `upstream.rs`, but draws a
//! fault for every completion request.
//!
//! It runs inside the soak driver's runtime (it is not the process being
//! measured), on a port the OS picks. Each `POST` draws one [`Fault`] with
//! the rates of [`Fault::draw`]; `GET …/models` (the proxy's health probe)
//! always answers. Every answer names the model the request asked for, so
//! retries on the next model of a tier are visible in the proxy's metrics.
//!
//! `upstream.rs` stays as it is: it is the benchmark's fast path, with no
//! per-request draw, no JSON parsing and no counters.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Content pieces in a normal streamed answer.
const CONTENT_CHUNKS: usize = 8;
/// Pause between two SSE events of a streamed answer.
const CHUNK_DELAY: Duration = Duration::from_millis(10);

/// What the upstream does with one completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer normally.
    None,
    /// `500` with an OpenAI error body.
    Status500,
    /// `429` with `Retry-After: 1`.
    RateLimited,
    /// Wait past the proxy's first-byte timeout, then answer normally.
    SlowHead,
    /// Streamed: send a few events, then stall past the proxy's idle
    /// timeout, then go on.
    StallMidStream,
    /// Streamed: send a few events, then break the connection.
    ResetMidStream,
    /// Close the connection without an answer.
    ResetBeforeHead,
}

impl Fault {
    /// Every fault, in report order.
    pub(crate) const ALL: [Fault; 7] = [
        Fault::None,
        Fault::Status500,
        Fault::RateLimited,
        Fault::SlowHead,
        Fault::StallMidStream,
        Fault::ResetMidStream,
        Fault::ResetBeforeHead,
    ];

    /// The fault for one request, from `r` uniform in `[0, 1)`:
    /// 10 % `500`; 2 % timeouts (a late head, or for streams half of them
    /// a stall after the first events); 3 % `429`; for streams 3 % a reset
    /// after the first events; 1 % a reset before the head; the rest
    /// answer normally.
    pub(crate) fn draw(r: f64, stream: bool, coin: bool) -> Fault {
        match r {
            r if r < 0.10 => Fault::Status500,
            r if r < 0.12 => {
                if stream && coin {
                    Fault::StallMidStream
                } else {
                    Fault::SlowHead
                }
            }
            r if r < 0.15 => Fault::RateLimited,
            r if r < 0.16 => Fault::ResetBeforeHead,
            r if stream && r < 0.19 => Fault::ResetMidStream,
            _ => Fault::None,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Fault::None => "normal",
            Fault::Status500 => "500",
            Fault::RateLimited => "429 Retry-After: 1",
            Fault::SlowHead => "head after the first-byte timeout",
            Fault::StallMidStream => "stream stalled past the idle timeout",
            Fault::ResetMidStream => "stream reset mid-way",
            Fault::ResetBeforeHead => "connection reset before the head",
        }
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// What the upstream saw, by fault.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    json: [AtomicU64; Fault::ALL.len()],
    sse: [AtomicU64; Fault::ALL.len()],
    health: AtomicU64,
}

impl Counters {
    /// `(fault, JSON requests, SSE requests)` for every fault.
    pub(crate) fn by_fault(&self) -> Vec<(Fault, u64, u64)> {
        Fault::ALL
            .iter()
            .map(|f| {
                let i = f.index();
                (
                    *f,
                    self.json[i].load(Ordering::Relaxed),
                    self.sse[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Health probes answered.
    pub(crate) fn health(&self) -> u64 {
        self.health.load(Ordering::Relaxed)
    }
}

/// How long the upstream's slow faults last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delays {
    /// [`Fault::SlowHead`]'s wait.
    pub(crate) head: Duration,
    /// [`Fault::StallMidStream`]'s wait.
    pub(crate) stall: Duration,
}

/// The running upstream; dropping it stops accepting (open connections end
/// with the runtime).
pub(crate) struct SoakUpstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl SoakUpstream {
    /// Binds `127.0.0.1:0` and serves from a task on the current runtime.
    pub(crate) async fn start(delays: Delays) -> io::Result<SoakUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept(listener, Arc::clone(&counters), delays));
        Ok(SoakUpstream {
            addr,
            counters,
            task,
        })
    }

    /// The base URL for `OPENAI_BASE_URL`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for SoakUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, counters: Arc<Counters>, delays: Delays) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, Arc::clone(&counters), delays));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error_body(message: &str, kind: &str, code: &str) -> Body {
    full(
        serde_json::json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        })
        .to_string(),
    )
}

/// An `Err` from the service makes hyper close the connection without
/// writing a response.
async fn handle(
    request: Request<Incoming>,
    counters: Arc<Counters>,
    delays: Delays,
) -> Result<Response<Body>, io::Error> {
    if request.method() == Method::GET && request.uri().path().ends_with("/models") {
        counters.health.fetch_add(1, Ordering::Relaxed);
        let list = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"soak"}]}"#;
        return Ok(response(StatusCode::OK, "application/json", full(list)));
    }
    if request.method() != Method::POST {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "application/json",
            error_body("not found", "invalid_request_error", "not_found"),
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(io::Error::other(e)),
    };
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = parsed
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("unknown")
        .to_owned();
    let stream = parsed.get("stream").and_then(|s| s.as_bool()) == Some(true);
    let include_usage = parsed
        .pointer("/stream_options/include_usage")
        .and_then(|u| u.as_bool())
        == Some(true);

    let fault = Fault::draw(fastrand::f64(), stream, fastrand::bool());
    let by_kind = if stream {
        &counters.sse
    } else {
        &counters.json
    };
    by_kind[fault.index()].fetch_add(1, Ordering::Relaxed);

    match fault {
        Fault::Status500 => {
            return Ok(response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                error_body("soak: injected 500", "server_error", "server_error"),
            ));
        }
        Fault::RateLimited => {
            let mut answer = response(
                StatusCode::TOO_MANY_REQUESTS,
                "application/json",
                error_body(
                    "soak: injected 429",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                ),
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(answer);
        }
        Fault::ResetBeforeHead => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "soak: reset before the head",
            ));
        }
        Fault::SlowHead => tokio::time::sleep(delays.head).await,
        Fault::None | Fault::StallMidStream | Fault::ResetMidStream => {}
    }

    if !stream {
        return Ok(response(
            StatusCode::OK,
            "application/json",
            full(completion(&model)),
        ));
    }
    let events = events(&model, include_usage);
    // Where a mid-stream fault strikes: after the role event and 1 to 6
    // content pieces.
    let cut = 1 + fastrand::usize(1..=6);
    let stall = delays.stall;
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if i > 0 {
                tokio::time::sleep(CHUNK_DELAY).await;
            }
            if i == cut {
                match fault {
                    Fault::ResetMidStream => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "soak: stream reset mid-way",
                        ));
                    }
                    Fault::StallMidStream => tokio::time::sleep(stall).await,
                    _ => {}
                }
            }
            Ok(Frame::data(event))
        },
    );
    let mut answer = response(
        StatusCode::OK,
        "text/event-stream",
        BodyExt::boxed(StreamBody::new(stream)),
    );
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(answer)
}

fn completion(model: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-soak",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": "A soak test answer." },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26 }
    })
    .to_string()
}

fn chunk(model: &str, delta: serde_json::Value, finish: Option<&str>) -> Bytes {
    let event = serde_json::json!({
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
    });
    Bytes::from(format!("data: {event}\n\n"))
}

/// The SSE events of one streamed answer, `[DONE]` last.
fn events(model: &str, include_usage: bool) -> Vec<Bytes> {
    let mut events = vec![chunk(
        model,
        serde_json::json!({ "role": "assistant", "content": "" }),
        None,
    )];
    for i in 0..CONTENT_CHUNKS {
        events.push(chunk(
            model,
            serde_json::json!({ "content": format!("word{i} ") }),
            None,
        ));
    }
    events.push(chunk(model, serde_json::json!({}), Some("stop")));
    if include_usage {
        let usage = serde_json::json!({
            "id": "chatcmpl-soak",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [],
            "usage": { "prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29 }
        });
        events.push(Bytes::from(format!("data: {usage}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_drawn_at_the_documented_rates() {
        let n = 100_000;
        let mut seen = [0usize; Fault::ALL.len()];
        for i in 0..n {
            let r = i as f64 / n as f64;
            seen[Fault::draw(r, true, i % 2 == 0).index()] += 1;
        }
        let share = |f: Fault| seen[f.index()] as f64 / n as f64;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(close(share(Fault::Status500), 0.10));
        assert!(close(
            share(Fault::SlowHead) + share(Fault::StallMidStream),
            0.02
        ));
        assert!(close(share(Fault::RateLimited), 0.03));
        assert!(close(share(Fault::ResetBeforeHead), 0.01));
        assert!(close(share(Fault::ResetMidStream), 0.03));
        assert!(close(share(Fault::None), 0.81));
        // Non-streamed requests get no stream faults.
        for i in 0..n {
            let f = Fault::draw(i as f64 / n as f64, false, true);
            assert!(!matches!(f, Fault::StallMidStream | Fault::ResetMidStream));
        }
    }

    #[test]
    fn a_streamed_answer_ends_with_done() {
        let with = events("m", true);
        assert_eq!(with.len(), CONTENT_CHUNKS + 4);
        assert_eq!(with.last().map(|b| &b[..]), Some(&b"data: [DONE]\n\n"[..]));
        assert_eq!(events("m", false).len(), CONTENT_CHUNKS + 3);
        let parsed: serde_json::Value = serde_json::from_str(&completion("m")).unwrap();
        assert_eq!(parsed["usage"]["total_tokens"], 26);
    }
}
