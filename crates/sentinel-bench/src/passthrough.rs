//! A bare pass-through proxy written with hyper: the floor for any extra
//! hop. It forwards every request to the upstream over a pooled HTTP/1.1
//! client and streams the response back, touching nothing but the URI and
//! `Host`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = Either<Incoming, Empty<Bytes>>;

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: &str,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{upstream}{path}").parse::<Uri>() else {
        return status(StatusCode::BAD_REQUEST);
    };
    *request.uri_mut() = uri;
    request.headers_mut().remove(header::HOST);
    match client.request(request).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}

/// Serves the pass-through proxy on `listen` until the process is killed.
pub(crate) async fn serve(listen: SocketAddr, upstream: String) -> std::io::Result<()> {
    let upstream: &'static str = Box::leak(upstream.trim_end_matches('/').into());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let client = client.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(forward(client, upstream, request).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
