//! A mock of Zion, the control plane serving the global tier config.
//!
//! [`MockZion`] answers `GET /api/v1/tiers/config` with the configured JSON
//! document ([`default_config`] until [`MockZion::set_config`] changes it),
//! counts the calls, remembers the last `Authorization` header, and can be
//! made to fail with a [`ZionFault`] or to become unreachable with
//! [`MockZion::stop`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use crate::server::{self, Restartable, lock};

/// The path Zion serves the tier config on.
pub const TIERS_CONFIG_PATH: &str = "/api/v1/tiers/config";

/// A failure [`MockZion`] injects into its config answers until
/// [`MockZion::clear_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZionFault {
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Answer `200` with a body of exactly this many bytes: the current
    /// config padded with a `"padding"` string field, so it is valid JSON
    /// and a valid config, only too large (below the config's own size it
    /// is that many `x` bytes instead).
    Oversize(usize),
    /// Answer `200 application/json` with a body that is not JSON.
    NotJson,
    /// Answer `200 application/json` with exactly this body.
    RawBody(String),
    /// Close the connection without answering: over HTTP/1.1 the client
    /// gets no status line, only the connection closing ("connection closed
    /// before message completed" in hyper).
    Reset,
}

#[derive(Debug)]
struct ZionState {
    config: Mutex<Value>,
    fault: Mutex<Option<ZionFault>>,
    calls: AtomicUsize,
    last_authorization: Mutex<Option<String>>,
}

/// A mock Zion on `127.0.0.1`, on a port of its own.
///
/// It runs on the tokio runtime that started it; dropping it stops it.
#[derive(Debug)]
pub struct MockZion {
    addr: SocketAddr,
    state: Arc<ZionState>,
    server: Restartable,
}

impl MockZion {
    /// Starts serving [`default_config`] on a free loopback port.
    ///
    /// Must be called within a tokio runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = server::bind_any().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ZionState {
            config: Mutex::new(default_config()),
            fault: Mutex::new(None),
            calls: AtomicUsize::new(0),
            last_authorization: Mutex::new(None),
        });
        let server = Restartable::spawn(listener, addr, router(Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the mock listens on (kept across [`stop`](Self::stop) and
    /// [`resume`](Self::resume)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `config` from now on (any JSON, valid or not).
    pub fn set_config(&self, config: Value) {
        *lock(&self.state.config) = config;
    }

    /// Fails every config request with `fault` until [`clear_fault`](Self::clear_fault).
    pub fn set_fault(&self, fault: ZionFault) {
        *lock(&self.state.fault) = Some(fault);
    }

    /// Answers normally again.
    pub fn clear_fault(&self) {
        *lock(&self.state.fault) = None;
    }

    /// How many requests reached the config path, faulted ones included.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Sets the call count back to zero.
    pub fn reset_calls(&self) {
        self.state.calls.store(0, Ordering::SeqCst);
    }

    /// The `Authorization` header of the last config request, if it had one.
    pub fn last_authorization(&self) -> Option<String> {
        lock(&self.state.last_authorization).clone()
    }

    /// Makes Zion unreachable: closes the listener (connections are refused)
    /// and every open connection, and returns once they are closed. The
    /// port stays held meanwhile (without listening), so that no other
    /// server takes it. Does nothing if already stopped.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Serves again on the same port with the same state (config, fault,
    /// counters). Does nothing if it is running.
    ///
    /// The port was held while stopped, so it is free to listen on again;
    /// this fails only if that hold could not be taken and the port cannot
    /// be bound again within a few seconds.
    pub async fn resume(&self) -> io::Result<()> {
        let state = Arc::clone(&self.state);
        self.server.resume(|| router(state)).await
    }
}

/// The config [`MockZion`] serves until told otherwise: a valid document
/// with every tier populated, all on the `openai` provider.
///
/// | tier | models (relative cost) |
/// | --- | --- |
/// | simple | `gpt-4o-mini` (1), `gpt-4.1-mini` (2) |
/// | moderate | `gpt-4o` (3) |
/// | complex | `o3` (8) |
pub fn default_config() -> Value {
    fn model(name: &str, relative_cost: u8, input: f64, output: f64) -> Value {
        json!({
            "provider": "openai",
            "model": name,
            "relative_cost": relative_cost,
            "pricing": { "input_per_mtok_usd": input, "output_per_mtok_usd": output }
        })
    }
    json!({
        "version": "mock-1",
        "tiers": {
            "simple": { "models": [
                model("gpt-4o-mini", 1, 0.15, 0.60),
                model("gpt-4.1-mini", 2, 0.40, 1.60)
            ] },
            "moderate": { "models": [model("gpt-4o", 3, 2.50, 10.00)] },
            "complex": { "models": [model("o3", 8, 2.00, 8.00)] }
        }
    })
}

fn router(state: Arc<ZionState>) -> Router {
    Router::new()
        .route(TIERS_CONFIG_PATH, get(tiers_config))
        .with_state(state)
}

async fn tiers_config(State(state): State<Arc<ZionState>>, headers: HeaderMap) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    *lock(&state.last_authorization) = headers
        .get(AUTHORIZATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let fault = lock(&state.fault).clone();
    let config = || lock(&state.config).clone();
    match fault {
        None => json_body(StatusCode::OK, config().to_string()),
        Some(ZionFault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({ "error": format!("mock zion: injected status {code}") });
            json_body(status, body.to_string())
        }
        Some(ZionFault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            json_body(StatusCode::OK, config().to_string())
        }
        Some(ZionFault::Oversize(size)) => json_body(StatusCode::OK, oversize_body(config(), size)),
        Some(ZionFault::NotJson) => json_body(
            StatusCode::OK,
            "<html><body>this is not JSON</body></html>".to_owned(),
        ),
        Some(ZionFault::RawBody(body)) => json_body(StatusCode::OK, body),
        Some(ZionFault::Reset) => server::reset_response(),
    }
}

/// `config` with a padding field, exactly `size` bytes long.
fn oversize_body(mut config: Value, size: usize) -> String {
    let Some(object) = config.as_object_mut() else {
        return "x".repeat(size);
    };
    object.insert("padding".to_owned(), Value::String(String::new()));
    let base = config.to_string().len();
    if size < base {
        return "x".repeat(size);
    }
    if let Some(object) = config.as_object_mut() {
        object.insert("padding".to_owned(), Value::String("x".repeat(size - base)));
    }
    config.to_string()
}

fn json_body(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_body_has_the_exact_size_and_stays_a_config() {
        for size in [0, 10, 2_000, 100_000] {
            let body = oversize_body(default_config(), size);
            assert_eq!(body.len(), size);
        }
        let body = oversize_body(default_config(), 100_000);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["tiers"], default_config()["tiers"]);
    }
}
