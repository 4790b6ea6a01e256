//! A mock OpenTelemetry collector: an OTLP trace receiver over HTTP
//! (`POST /v1/traces`, protobuf bodies) or over gRPC (tonic's
//! `TraceService`, from the `opentelemetry-proto` crate), keeping every
//! span it receives, with faults.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::server::{self, Server, lock};

/// The OTLP/HTTP path of traces.
pub const TRACES_PATH: &str = "/v1/traces";

/// A failure [`MockCollector`] injects into its answers until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectorFault {
    /// Answer with this HTTP status (gRPC: `UNAVAILABLE`), keeping nothing.
    Status(u16),
    /// Sleep this long, then take the spans.
    Delay(Duration),
}

/// A received span, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// The resource's attributes, as strings.
    pub resource: Vec<(String, String)>,
    /// The span as it came.
    pub span: Span,
}

impl CollectedSpan {
    fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attribute(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attribute(key)? {
            any_value::Value::IntValue(n) => Some(*n),
            _ => None,
        }
    }

    /// A boolean attribute.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.attribute(key)? {
            any_value::Value::BoolValue(b) => Some(*b),
            _ => None,
        }
    }

    /// A server span.
    pub fn is_server(&self) -> bool {
        self.span.kind == SpanKind::Server as i32
    }

    /// A client span.
    pub fn is_client(&self) -> bool {
        self.span.kind == SpanKind::Client as i32
    }

    /// The span failed (status `ERROR`).
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }

    /// The trace id, hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id, hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id, hex (empty for a root span).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The resource's `key`.
    pub fn resource_attribute(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Default)]
struct CollectorState {
    spans: Mutex<Vec<CollectedSpan>>,
    fault: Mutex<Option<CollectorFault>>,
    exports: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
}

impl CollectorState {
    /// Keeps the spans of `request`.
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = lock(&self.spans);
        for rs in request.resource_spans {
            let resource: Vec<(String, String)> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .into_iter()
                        .map(|kv| {
                            let value = match kv.value.and_then(|v| v.value) {
                                Some(any_value::Value::StringValue(s)) => s,
                                other => format!("{other:?}"),
                            };
                            (kv.key, value)
                        })
                        .collect()
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(CollectedSpan {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn fault(&self) -> Option<CollectorFault> {
        lock(&self.fault).clone()
    }
}

enum Serving {
    Http(#[allow(dead_code)] Server),
    Grpc(tokio::task::JoinHandle<()>),
}

/// A mock collector on `127.0.0.1`, on a port of its own; dropping it
/// stops it.
pub struct MockCollector {
    addr: SocketAddr,
    state: Arc<CollectorState>,
    serving: Serving,
}

impl std::fmt::Debug for MockCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockCollector")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockCollector {
    fn drop(&mut self) {
        if let Serving::Grpc(task) = &self.serving {
            task.abort();
        }
    }
}

impl MockCollector {
    /// An OTLP/HTTP receiver (`POST /v1/traces`, `application/x-protobuf`).
    pub async fn start_http() -> io::Result<Self> {
        let listener = server::bind_any().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(CollectorState::default());
        let router = Router::new()
            .route(TRACES_PATH, post(http_export))
            .with_state(state.clone());
        Ok(MockCollector {
            addr,
            state,
            serving: Serving::Http(Server::spawn(listener, router)),
        })
    }

    /// An OTLP/gRPC receiver (a tonic server).
    pub async fn start_grpc() -> io::Result<Self> {
        let listener = server::bind_any().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(CollectorState::default());
        let service = TraceServiceServer::new(GrpcReceiver(state.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(MockCollector {
            addr,
            state,
            serving: Serving::Grpc(task),
        })
    }

    /// `http://127.0.0.1:PORT`: the base for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.state.spans).clone()
    }

    /// Export requests received (failed ones included).
    pub fn exports(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// The headers of the last export request.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        lock(&self.state.last_headers).clone()
    }

    /// Fails or delays answers from now on (`None`: answer normally).
    pub fn set_fault(&self, fault: Option<CollectorFault>) {
        *lock(&self.state.fault) = fault;
    }
}

async fn http_export(
    State(state): State<Arc<CollectorState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.exports.fetch_add(1, Ordering::SeqCst);
    *lock(&state.last_headers) = Some(headers.clone());
    match state.fault() {
        Some(CollectorFault::Status(status)) => {
            return StatusCode::from_u16(status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                .into_response();
        }
        Some(CollectorFault::Delay(wait)) => tokio::time::sleep(wait).await,
        None => {}
    }
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if !protobuf {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "protobuf only").into_response();
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    state.take(request);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

struct GrpcReceiver(Arc<CollectorState>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let state = &self.0;
        state.exports.fetch_add(1, Ordering::SeqCst);
        *lock(&state.last_headers) = Some(request.metadata().clone().into_headers());
        match state.fault() {
            Some(CollectorFault::Status(_)) => {
                return Err(tonic::Status::unavailable("the mock collector is failing"));
            }
            Some(CollectorFault::Delay(wait)) => tokio::time::sleep(wait).await,
            None => {}
        }
        state.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_http_receiver_keeps_spans_and_refuses_what_is_not_otlp() {
        let collector = MockCollector::start_http().await.unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: vec![Span {
                        name: "chat simple".into(),
                        span_id: vec![1; 8],
                        kind: SpanKind::Server as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let post = |content_type: &'static str, body: Vec<u8>| {
            let addr = collector.addr;
            async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let request = http::Request::post(TRACES_PATH)
                    .header("host", "collector")
                    .header("content-type", content_type)
                    .body(http_body_util::Full::new(Bytes::from(body)))
                    .unwrap();
                sender.send_request(request).await.unwrap().status()
            }
        };
        assert_eq!(
            post("application/x-protobuf", request.encode_to_vec()).await,
            200
        );
        assert_eq!(post("application/json", b"{}".to_vec()).await, 415);
        assert_eq!(post("application/x-protobuf", vec![0xff, 0xff]).await, 400);
        collector.set_fault(Some(CollectorFault::Status(503)));
        assert_eq!(
            post("application/x-protobuf", request.encode_to_vec()).await,
            503
        );
        let spans = collector.spans();
        assert_eq!(spans.len(), 1);
        assert!(spans[0].is_server());
        assert_eq!(spans[0].span_id(), "0101010101010101");
        assert_eq!(collector.exports(), 4);
    }
}
