//! A tonic gRPC service behind the tier-routing layer.
//!
//! Run with: cargo run --example tonic_app
//!
//! and, in another terminal, call it with: cargo run --example tonic_app -- --call
//!
//! (`PORT=50052` changes the port for both.)
//!
//! The server adds [`TierRoutingLayer`] to a tonic `Server`
//! (`Server::builder().layer(...)`). For `application/grpc` requests the
//! layer reads the tier from the `x-sentinel-tier` metadata (default
//! `simple`), picks a model of the tier, leaves the body untouched and puts
//! a [`RoutingDecision`] in the request extensions, where the method finds
//! it through `tonic::Request::extensions`. The response carries
//! `x-sentinel-model` / `x-sentinel-tier` metadata; a bad tier is answered
//! by the layer with `INVALID_ARGUMENT`. The method here answers with the
//! chosen model; a real service would call `decision.provider` with it.
//!
//! No `protoc` or `tonic-build`: the messages are prost derives and the
//! server and client are written by hand the way tonic 0.14's generated
//! code is, for this service:
//!
//! ```proto
//! package sentinel.example;
//! service Completer { rpc Complete(CompleteRequest) returns (CompleteReply); }
//! message CompleteRequest { string prompt = 1; }
//! message CompleteReply { string model = 1; string tier = 2; string text = 3; }
//! ```

#![allow(clippy::print_stdout)] // an example: it prints where it listens and the reply

use std::convert::Infallible;
use std::error::Error;
use std::task::{Context, Poll};

use sentinel::core::RawTierConfig;
use sentinel::{RoutingDecision, StaticConfig, TierConfig, TierRoutingLayer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::{Body, BoxFuture, GrpcMethod, Service, StdError, http};
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic::{IntoRequest, Status};

/// The tier config: the document Zion would serve, built in for the example.
pub(crate) const TIER_CONFIG: &str = r#"{
  "tiers": {
    "simple": { "models": [
      { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 }
    ] },
    "moderate": { "models": [
      { "provider": "openai", "model": "gpt-4o", "relative_cost": 4 }
    ] },
    "complex": { "models": [
      { "provider": "anthropic", "model": "claude-opus-4-1", "relative_cost": 9 }
    ] }
  }
}"#;

/// The full gRPC name of the service.
pub(crate) const SERVICE_NAME: &str = "sentinel.example.Completer";
/// The path of the `Complete` method.
const COMPLETE_PATH: &str = "/sentinel.example.Completer/Complete";

/// `CompleteRequest`: the prompt.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CompleteRequest {
    /// The prompt to complete.
    #[prost(string, tag = "1")]
    pub(crate) prompt: String,
}

/// `CompleteReply`: the model the layer chose, its tier, and the text.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CompleteReply {
    /// The upstream model that served the call.
    #[prost(string, tag = "1")]
    pub(crate) model: String,
    /// The tier the call ran in.
    #[prost(string, tag = "2")]
    pub(crate) tier: String,
    /// The completion.
    #[prost(string, tag = "3")]
    pub(crate) text: String,
}

/// The method's logic: what a generated service trait's implementation
/// would hold. The decision is in the request extensions.
async fn complete(
    request: tonic::Request<CompleteRequest>,
) -> Result<tonic::Response<CompleteReply>, Status> {
    let Some(decision) = request.extensions().get::<RoutingDecision>().cloned() else {
        return Err(Status::failed_precondition(
            "no routing decision: is the TierRoutingLayer in front of this service?",
        ));
    };
    let prompt = request.into_inner().prompt;
    // A real service would call `decision.provider` with `decision.model` here.
    let text = format!(
        "[{}/{}, {}] You said: {prompt}",
        decision.provider,
        decision.model,
        decision.reason.as_str()
    );
    Ok(tonic::Response::new(CompleteReply {
        model: decision.model.to_string(),
        tier: decision.tier.as_str().to_owned(),
        text,
    }))
}

/// The server, as `tonic-build` would generate it (without the compression
/// and message-size settings).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CompleterServer;

impl NamedService for CompleterServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for CompleterServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            COMPLETE_PATH => {
                struct CompleteSvc;
                impl UnaryService<CompleteRequest> for CompleteSvc {
                    type Response = CompleteReply;
                    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

                    fn call(&mut self, request: tonic::Request<CompleteRequest>) -> Self::Future {
                        Box::pin(complete(request))
                    }
                }
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(CompleteSvc, req).await)
                })
            }
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}

/// The client, as `tonic-build` would generate it (for a `Channel` only).
#[derive(Debug, Clone)]
pub(crate) struct CompleterClient {
    inner: tonic::client::Grpc<Channel>,
}

impl CompleterClient {
    /// Connects to `dst` (`http://host:port`).
    pub(crate) async fn connect(dst: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::new(dst)?.connect().await?;
        Ok(CompleterClient {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls `Complete`.
    pub(crate) async fn complete(
        &mut self,
        request: impl IntoRequest<CompleteRequest>,
    ) -> Result<tonic::Response<CompleteReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static(COMPLETE_PATH);
        let mut req = request.into_request();
        req.extensions_mut()
            .insert(GrpcMethod::new(SERVICE_NAME, "Complete"));
        self.inner.unary(req, path, codec).await
    }
}

/// The tier-routing layer over the built-in config.
pub(crate) fn layer() -> Result<TierRoutingLayer, Box<dyn Error>> {
    let raw: RawTierConfig = serde_json::from_str(TIER_CONFIG)?;
    // gRPC routing is opt-in, per path: here every method of the service.
    Ok(
        TierRoutingLayer::builder(StaticConfig::new(TierConfig::validate(raw)?))
            .grpc_paths([format!("/{SERVICE_NAME}/")])
            .build()?,
    )
}

/// Serves [`CompleterServer`] behind `layer` on `listener`.
pub(crate) async fn serve(
    listener: TcpListener,
    layer: TierRoutingLayer,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(layer)
        .add_service(CompleterServer)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

/// A `Complete` request for `tier`, sent as `x-sentinel-tier` metadata.
pub(crate) fn request(prompt: &str, tier: &str) -> Result<tonic::Request<CompleteRequest>, Status> {
    let mut request = tonic::Request::new(CompleteRequest {
        prompt: prompt.to_owned(),
    });
    let tier: MetadataValue<_> = tier
        .parse()
        .map_err(|_| Status::invalid_argument("the tier is not valid metadata"))?;
    request.metadata_mut().insert("x-sentinel-tier", tier);
    Ok(request)
}

/// The port to listen on or call: `PORT`, or `default`.
fn port(default: u16) -> Result<u16, Box<dyn Error>> {
    match std::env::var("PORT") {
        Ok(port) => Ok(port.parse()?),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port = port(50051)?;
    if std::env::args().skip(1).any(|arg| arg == "--call") {
        let mut client = CompleterClient::connect(format!("http://127.0.0.1:{port}")).await?;
        let response = client
            .complete(request(
                "Prove that there are infinitely many primes.",
                "complex",
            )?)
            .await?;
        let header = response
            .metadata()
            .get("x-sentinel-model")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let reply = response.into_inner();
        println!("model: {} (tier {})", reply.model, reply.tier);
        println!("x-sentinel-model: {header}");
        println!("text: {}", reply.text);
        return Ok(());
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("Sentinel tonic example: {SERVICE_NAME} listening on {addr}");
    println!("Call it with: cargo run --example tonic_app -- --call");
    serve(listener, layer()?).await?;
    Ok(())
}
