//! The exporter: one task that takes ended spans from the queue in batches
//! and sends each batch to the collector over OTLP (HTTP with protobuf
//! bodies, or gRPC), one export at a time, each within the export timeout.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::span::{SpanKind, SpanRecord, Value};
use super::{Protocol, TraceSettings, Tracer, Tracing};
use crate::metrics as m;

/// The gRPC method of OTLP's trace export.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The longest a shutdown waits for the last spans to go.
pub(super) const FLUSH_BOUND: Duration = Duration::from_secs(5);
/// The most of a collector's answer that is read.
const ANSWER_CAP: usize = 64 << 10;

/// The exporter's task: [`ExportTask::finish`] sends what is queued and
/// stops it.
#[derive(Debug)]
pub struct ExportTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    timeout: Duration,
}

impl ExportTask {
    /// Sends the spans still queued, within the export timeout and at
    /// most 5 s, and stops the task (aborted past the bound).
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        let bound = self.timeout.min(FLUSH_BOUND);
        if tokio::time::timeout(bound, self.task).await.is_err() {
            abort.abort();
            tracing::warn!("the last trace export did not finish in time; its spans are lost");
        }
    }
}

type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where batches go, and how.
struct Exporter {
    client: ExportClient,
    uri: Uri,
    protocol: Protocol,
    settings: TraceSettings,
    resource: Resource,
    exported: ::metrics::Counter,
    failed: ::metrics::Counter,
}

/// Starts tracing with `settings`: the tracer requests use, and the task
/// that exports their spans.
pub fn start(
    settings: &TraceSettings,
) -> Result<(Tracing, ExportTask), Box<dyn std::error::Error + Send + Sync>> {
    let https = crate::upstream::https_connector(settings.timeout)?;
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(90));
    // gRPC is HTTP/2 only: by ALPN over TLS, by prior knowledge in the clear.
    builder.http2_only(settings.protocol == Protocol::Grpc);
    let client = builder.build(https);
    let uri = match settings.protocol {
        Protocol::HttpProtobuf => settings.endpoint.clone(),
        Protocol::Grpc => format!(
            "{}{GRPC_EXPORT_PATH}",
            settings.endpoint.trim_end_matches('/')
        ),
    };
    let uri = Uri::try_from(uri)?;

    let (queue, rx) = mpsc::channel(settings.max_queue);
    let tracer = Arc::new(Tracer {
        sampler: settings.sampler,
        queue,
        dropped: ::metrics::counter!(m::TRACE_SPANS_DROPPED, "reason" => "queue_full"),
        closed: ::metrics::counter!(m::TRACE_SPANS_DROPPED, "reason" => "shutdown"),
    });
    let exporter = Exporter {
        client,
        uri,
        protocol: settings.protocol,
        resource: resource(settings),
        settings: settings.clone(),
        exported: ::metrics::counter!(m::TRACE_SPANS_EXPORTED),
        failed: ::metrics::counter!(m::TRACE_SPANS_DROPPED, "reason" => "export_failed"),
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(exporter.run(rx, stopped));
    Ok((
        Tracing(Some(tracer)),
        ExportTask {
            stop,
            task,
            timeout: settings.timeout,
        },
    ))
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn resource(settings: &TraceSettings) -> Resource {
    let mut attributes = vec![
        string("service.name", &settings.service_name),
        string("service.version", env!("CARGO_PKG_VERSION")),
    ];
    attributes.extend(settings.resource.iter().map(|(k, v)| string(k, v)));
    Resource {
        attributes,
        ..Default::default()
    }
}

/// A span as OTLP's protobuf message.
fn encode_span(record: SpanRecord) -> opentelemetry_proto::tonic::trace::v1::Span {
    let attributes = record
        .attributes
        .into_iter()
        .map(|(key, value)| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(match value {
                    Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                    Value::Static(s) => any_value::Value::StringValue(s.to_owned()),
                    Value::Int(n) => any_value::Value::IntValue(n),
                    Value::Bool(b) => any_value::Value::BoolValue(b),
                }),
            }),
            ..Default::default()
        })
        .collect();
    let status = record.error.map(|message| Status {
        message,
        code: status::StatusCode::Error as i32,
    });
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: record.context.trace_id.to_vec(),
        span_id: record.context.span_id.to_vec(),
        parent_span_id: record.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // The W3C trace flags: sampled.
        flags: u32::from(record.context.sampled),
        name: record.name,
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: record.start,
        end_time_unix_nano: record.end,
        attributes,
        status,
        ..Default::default()
    }
}

impl Exporter {
    /// Takes batches off the queue until told to stop, then sends what is
    /// left.
    async fn run(self, mut rx: mpsc::Receiver<SpanRecord>, mut stopped: watch::Receiver<bool>) {
        let max = self.settings.max_batch;
        let mut batch = Vec::with_capacity(max);
        loop {
            // The first span of a batch, or the stop.
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                got = rx.recv_many(&mut batch, max) => if got == 0 { break },
            }
            // Then more, until the batch is full or the delay is over.
            let deadline = tokio::time::Instant::now() + self.settings.schedule_delay;
            while batch.len() < max {
                tokio::select! {
                    biased;
                    _ = stopped.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    got = {
                        let room = max - batch.len();
                        rx.recv_many(&mut batch, room)
                    } => if got == 0 { break },
                }
            }
            self.export(std::mem::take(&mut batch)).await;
            if *stopped.borrow() {
                break;
            }
        }
        // Stopping: what is queued now goes, batch by batch.
        rx.close();
        loop {
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            self.export(std::mem::take(&mut batch)).await;
        }
    }

    /// Sends one batch; a failure drops it and is counted and logged
    /// (never the headers, which may carry a key).
    async fn export(&self, batch: Vec<SpanRecord>) {
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "sentinel-proxy".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans: batch.into_iter().map(encode_span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match tokio::time::timeout(self.settings.timeout, self.send(&request)).await {
            Ok(Ok(())) => self.exported.increment(count),
            Ok(Err(reason)) => {
                self.failed.increment(count);
                tracing::warn!(spans = count, reason = %reason, "a trace export failed; its spans are dropped");
            }
            Err(_) => {
                self.failed.increment(count);
                tracing::warn!(
                    spans = count,
                    "a trace export timed out; its spans are dropped"
                );
            }
        }
    }

    async fn send(&self, message: &ExportTraceServiceRequest) -> Result<(), String> {
        let length = message.encoded_len();
        let (body, content_type) = match self.protocol {
            Protocol::HttpProtobuf => {
                let mut buf = BytesMut::with_capacity(length);
                message.encode(&mut buf).map_err(|e| e.to_string())?;
                (buf.freeze(), "application/x-protobuf")
            }
            Protocol::Grpc => {
                // gRPC's frame: not compressed, then the length.
                let mut buf = BytesMut::with_capacity(length + 5);
                buf.put_u8(0);
                buf.put_u32(u32::try_from(length).map_err(|_| "a batch over 4 GiB")?);
                message.encode(&mut buf).map_err(|e| e.to_string())?;
                (buf.freeze(), "application/grpc")
            }
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        for (name, value) in &self.settings.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.protocol == Protocol::Grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("the collector could not be reached: {e}"))?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, ANSWER_CAP)
            .collect()
            .await
            .map_err(|e| format!("the collector's answer broke: {e}"))?;
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        if self.protocol == Protocol::Grpc {
            // In the trailers, or in the head of a trailers-only answer.
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match grpc_status.as_deref() {
                Some("0") => {}
                Some(code) => return Err(format!("the collector answered gRPC status {code}")),
                None => return Err("the collector's answer has no gRPC status".to_owned()),
            }
        }
        Ok(())
    }
}
