//! Shared helpers of the end-to-end tests: the proxy started in-process from
//! a map of environment variables (never the process environment), a plain
//! HTTP client over real sockets, replies with their headers and JSON, the
//! error-envelope check, polling with a deadline, a raw HTTP/1.1 client for
//! bodies reqwest would not send, and a Prometheus text reader.

#![allow(dead_code)] // each test file uses a different part of the helpers

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sentinel_proxy::Running;
use sentinel_proxy::settings::{Cli, Settings};
use sentinel_testkit::{MockUpstream, MockZion, RedisServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `openai` provider's key the proxy sends upstream.
pub(crate) const UPSTREAM_KEY: &str = "sk-e2e-upstream-key";
/// The key the proxy sends to Zion.
pub(crate) const ZION_KEY: &str = "zion-e2e-key";

/// The environment a proxy is started with.
#[derive(Debug, Clone)]
pub(crate) struct Env(HashMap<String, String>);

impl Env {
    /// Loopback on a free port, `upstream` as the `openai` provider with
    /// [`UPSTREAM_KEY`], no health checks, built-in tiers (no Zion).
    pub(crate) fn new(upstream: &MockUpstream) -> Self {
        Env(HashMap::new())
            .set("SENTINEL_LISTEN", "127.0.0.1:0")
            .set("OPENAI_BASE_URL", &upstream.url())
            .set("OPENAI_API_KEY", UPSTREAM_KEY)
            .set("SENTINEL_HEALTH_CHECKS", "false")
            .set("SENTINEL_DRAIN_TIMEOUT_SECS", "1")
            .set("SENTINEL_LOG", "warn")
    }

    /// Sets one variable.
    pub(crate) fn set(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Takes the tier config from `zion`, with [`ZION_KEY`].
    pub(crate) fn zion(self, zion: &MockZion) -> Self {
        self.set("ZION_URL", &zion.url())
            .set("ZION_API_KEY", ZION_KEY)
    }

    /// Shares config, sessions and breakers through `redis`.
    pub(crate) fn redis(self, redis: &RedisServer) -> Self {
        self.set("REDIS_URL", &redis.url())
    }

    /// Short breaker and timeout settings for failure tests.
    pub(crate) fn fast_failures(self) -> Self {
        self.set("SENTINEL_FAILURE_THRESHOLD", "1")
            .set("SENTINEL_BACKOFF_INITIAL_SECS", "1")
            .set("SENTINEL_BACKOFF_MAX_SECS", "2")
            .set("SENTINEL_FIRST_BYTE_TIMEOUT_MS", "300")
            .set("SENTINEL_FIRST_TOKEN_TIMEOUT_MS", "300")
            .set("SENTINEL_STREAM_IDLE_TIMEOUT_MS", "300")
    }

    /// The settings, loaded the way the binary loads them.
    pub(crate) fn settings(&self, cli: &Cli) -> Settings {
        let map = self.0.clone();
        Settings::load(cli, &move |name| map.get(name).cloned()).expect("valid test settings")
    }
}

/// A plain HTTP client for loopback (ring passed explicitly).
pub(crate) fn http_client() -> reqwest::Client {
    sentinel_zion::http_client(Duration::from_secs(5)).expect("an HTTP client")
}

/// A proxy running in-process on a free loopback port.
pub(crate) struct Proxy {
    running: Option<Running>,
    addr: SocketAddr,
    client: reqwest::Client,
}

impl Proxy {
    /// Starts a proxy with `env` and no command-line flags.
    pub(crate) async fn start(env: &Env) -> Proxy {
        Proxy::start_with(&Cli::default(), env).await
    }

    /// Starts a proxy with `cli` and `env`.
    pub(crate) async fn start_with(cli: &Cli, env: &Env) -> Proxy {
        let running = sentinel_proxy::start(env.settings(cli))
            .await
            .expect("the proxy starts");
        let addr = running.addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        Proxy {
            running: Some(running),
            addr,
            client: http_client(),
        }
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request builder for `method path`.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .timeout(Duration::from_secs(15))
    }

    /// `POST path` with a JSON body.
    pub(crate) fn post_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// `POST /v1/chat/completions` with `body`, read in full.
    pub(crate) async fn chat(&self, body: &Value) -> Reply {
        Reply::read(
            self.post_json("/v1/chat/completions", body)
                .send()
                .await
                .expect("the proxy answers"),
        )
        .await
    }

    /// `POST /v1/chat/completions` with `body` within `session`
    /// (`x-sentinel-session`), read in full.
    pub(crate) async fn chat_in_session(&self, session: &str, body: &Value) -> Reply {
        Reply::read(
            self.post_json("/v1/chat/completions", body)
                .header("x-sentinel-session", session)
                .send()
                .await
                .expect("the proxy answers"),
        )
        .await
    }

    /// A streamed chat completion for `tier` (the body of [`chat_body`]
    /// with `"stream": true`), read in full.
    pub(crate) async fn chat_stream(&self, tier: &str) -> Reply {
        let mut body = chat_body(Some(tier));
        body["stream"] = serde_json::json!(true);
        self.chat(&body).await
    }

    /// `GET path`, read in full.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        Reply::read(
            self.request(reqwest::Method::GET, path)
                .send()
                .await
                .expect("the proxy answers"),
        )
        .await
    }

    /// Polls `GET /readyz` until it answers 200, for at most `within`.
    pub(crate) async fn wait_ready(&self, within: Duration) -> bool {
        eventually(within, || async { self.get("/readyz").await.status == 200 }).await
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200);
        reply.text()
    }

    /// Asks it to stop: no new connections; in-flight requests and streams
    /// finish within the drain timeout.
    pub(crate) fn shutdown(&self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }

    /// Stops it and waits until it has stopped.
    pub(crate) async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("the proxy stops within the drain timeout")
                .expect("the proxy stops cleanly");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}

/// A response read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub(crate) json: Value,
}

impl Reply {
    /// Reads `response` to its end.
    pub(crate) async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the body reads").to_vec();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            json,
        }
    }

    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Sentinel-Model`.
    pub(crate) fn model(&self) -> Option<&str> {
        self.header("x-sentinel-model")
    }

    /// `X-Sentinel-Tier`.
    pub(crate) fn tier(&self) -> Option<&str> {
        self.header("x-sentinel-tier")
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a 200 answered by `model` for effective tier `tier`, with the
    /// upstream's body (the mock names the model it answered as).
    pub(crate) fn assert_served(&self, tier: &str, model: &str) {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.model(), Some(model), "X-Sentinel-Model");
        assert_eq!(self.tier(), Some(tier), "X-Sentinel-Tier");
        assert_eq!(self.json["model"], model, "{}", self.text());
        assert_request_id(self);
    }

    /// Asserts Sentinel's own error: `status`, JSON content type, and the
    /// envelope `{"error":{"message","type","code"}}` with `code`.
    pub(crate) fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "content-type {:?}",
            self.header("content-type")
        );
        let error = &self.json["error"];
        assert!(error.is_object(), "not an error envelope: {}", self.text());
        assert_eq!(error["code"], code, "{}", self.text());
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.text()
        );
        let expected_type = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        assert_eq!(error["type"], expected_type, "{}", self.text());
        assert_request_id(self);
    }

    /// `Retry-After` in whole seconds; panics when absent or not a number.
    pub(crate) fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {:?}", self.headers))
            .parse()
            .expect("Retry-After in whole seconds")
    }
}

/// Asserts a generated or echoed request id is present and sane.
fn assert_request_id(reply: &Reply) {
    let id = reply.header("x-request-id").expect("X-Request-Id");
    assert!(
        (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)),
        "{id}"
    );
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `b` honours `session` (a new one) pinned through `a`: the
/// session is pinned on `a` to the complex tier, then `b`, asked for the
/// simple tier in it, must answer with the pinned model and tier (never a
/// downgrade), which it can only know from the shared store.
pub(crate) async fn session_shared(a: &Proxy, b: &Proxy, session: &str) -> bool {
    let first = a
        .chat_in_session(session, &chat_body(Some("complex")))
        .await;
    if first.status != 200 || first.tier() != Some("complex") {
        return false;
    }
    let next = b.chat_in_session(session, &chat_body(Some("simple"))).await;
    next.status == 200 && next.tier() == Some("complex") && next.model() == first.model()
}

/// Runs `start` (a test kit's set-up of processes, which waits on them)
/// off the runtime's threads; panics with `what` when it fails.
pub(crate) async fn started<T: Send + 'static>(
    what: &str,
    start: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> T {
    match tokio::task::spawn_blocking(start).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what} did not start: {e}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Two replicas sharing a Redis: `a` (started on `env_a`) loads the tier
/// config from `zion` and stores it; Zion then stops, and `b` (started
/// on `env_b`) must become ready with the config read from Redis.
pub(crate) async fn config_through_redis(
    env_a: &Env,
    env_b: &Env,
    zion: &MockZion,
) -> (Proxy, Proxy) {
    let a = Proxy::start(env_a).await;
    assert!(
        a.wait_ready(Duration::from_secs(10)).await,
        "A is not ready"
    );
    a.chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
    zion.stop().await;
    let b = Proxy::start(env_b).await;
    assert!(
        b.wait_ready(Duration::from_secs(10)).await,
        "B found no config in Redis"
    );
    let state: Value = serde_json::from_str(&b.get("/admin/state").await.text()).unwrap();
    assert_eq!(state["tier_config"]["source"], "redis");
    (a, b)
}

/// A chat request body for `tier` (no tier when `None`).
pub(crate) fn chat_body(tier: Option<&str>) -> Value {
    let mut body = serde_json::json!({
        "messages": [{ "role": "user", "content": "Hello, Sentinel." }],
        "temperature": 0.25
    });
    if let Some(tier) = tier {
        body["tier"] = Value::from(tier);
    }
    body
}

/// A name unique in this process, for labels, sessions and files.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary file with `contents`, removed on drop.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file under the temporary directory.
    pub(crate) fn new(extension: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}.{extension}", unique("sentinel-e2e")));
        std::fs::write(&path, contents).expect("the temporary file is written");
        TempFile(path)
    }

    /// Its path.
    pub(crate) fn path(&self) -> PathBuf {
        self.0.clone()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A tier config in Zion's format: `tiers` maps a tier name to its model
/// names, each on the `openai` provider with relative cost 1 and a price.
pub(crate) fn zion_config(tiers: &[(&str, &[&str])]) -> Value {
    let mut map = serde_json::Map::new();
    for (tier, models) in tiers {
        let models: Vec<Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "provider": "openai",
                    "model": m,
                    "relative_cost": 1,
                    "pricing": { "input_per_mtok_usd": 1.0, "output_per_mtok_usd": 2.0 }
                })
            })
            .collect();
        map.insert((*tier).to_owned(), serde_json::json!({ "models": models }));
    }
    serde_json::json!({ "version": unique("e2e"), "tiers": map })
}

/// A raw HTTP/1.1 exchange: writes `head` (request line and headers, without
/// the blank line), the blank line and `body`, then reads the answer
/// (`Connection: close` is added, so it ends with the connection).
/// Returns the status, the header block and the body.
pub(crate) async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writes the head");
    // The server may answer and close before reading it all.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if complete(&answer) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete answer within 5 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, head.to_owned(), body.to_owned())
}

/// Whether `answer` holds a head and a body of its `Content-Length`.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

/// The sum of the samples of `name` whose labels include every pair of
/// `labels`, in Prometheus text; `None` when no sample matches.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            (labels, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let all = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if !all {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A stock OpenAI SDK (async-openai) client for the proxy: only its base
/// URL points at the proxy. The SDK's own `reqwest::Client::new()` needs a
/// process-wide rustls provider (the build has only ring, with no default
/// chosen), as any application using it would install.
pub(crate) fn openai_sdk(
    proxy: &Proxy,
    key: &str,
) -> async_openai::Client<async_openai::config::OpenAIConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    async_openai::Client::with_config(
        async_openai::config::OpenAIConfig::new()
            .with_api_base(format!("http://{}/v1", proxy.addr()))
            .with_api_key(key),
    )
}

/// A chat request for the SDK: `model` (a tier name) and one user message.
pub(crate) fn sdk_request(model: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello.")
            .build()
            .expect("a user message")
            .into()])
        .build()
        .expect("a chat request")
}
