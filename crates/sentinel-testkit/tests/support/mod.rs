//! A minimal HTTP/1.1 client for the tests: one new connection per request,
//! so no pooled connection hides what a mock did to its listener.

#![allow(dead_code)] // each test file uses a different part

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// A whole response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Opens a connection to the host of `url`.
pub(crate) async fn connect(url: &str) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let uri: Uri = url.parse()?;
    let authority = uri.authority().ok_or("no authority")?.as_str().to_owned();
    let stream = TcpStream::connect(authority).await?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Builds a request for `url` (absolute) in origin form, with a `Host`.
pub(crate) fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let uri: Uri = url.parse().unwrap();
    let mut builder = Request::builder()
        .method(method)
        .uri(uri.path_and_query().unwrap().as_str())
        .header("host", uri.authority().unwrap().as_str());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).unwrap()
}

/// Sends one request on a new connection and returns the response head,
/// with the body still to read.
pub(crate) async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response<Incoming>, BoxError> {
    let mut sender = connect(url).await?;
    Ok(sender
        .send_request(request(method, url, headers, body))
        .await?)
}

/// Sends one request and reads the whole response.
pub(crate) async fn fetch(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, BoxError> {
    let response = send(method, url, headers, body).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, BoxError> {
    fetch(Method::GET, url, headers, Bytes::new()).await
}

pub(crate) async fn post_json(url: &str, body: &serde_json::Value) -> Result<Reply, BoxError> {
    post_json_with(url, &[], body).await
}

pub(crate) async fn post_json_with(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Result<Reply, BoxError> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    fetch(Method::POST, url, &all, Bytes::from(body.to_string())).await
}

/// Reads the next data frame of a streamed body, failing after `limit`.
pub(crate) async fn next_data(
    body: &mut Incoming,
    limit: Duration,
) -> Option<Result<Bytes, hyper::Error>> {
    let frame = tokio::time::timeout(limit, body.frame())
        .await
        .expect("no frame in time")?;
    Some(frame.map(|frame| frame.into_data().unwrap_or_default()))
}

/// Splits an SSE body into its `data:` payloads.
pub(crate) fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}
