//! The accept loop shared by the HTTP mocks.
//!
//! `axum::serve` leaves connection tasks running after its own task is
//! aborted, so a keep-alive client could still reach a "stopped" mock. Here
//! every connection task lives in a `JoinSet` owned by the server task:
//! shutting the server down closes the listener and every open connection.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A running server task; dropping it aborts the task and its connections.
#[derive(Debug)]
pub(crate) struct Server {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `listener` from a task on the current runtime.
    pub(crate) fn spawn(listener: TcpListener, router: Router) -> Self {
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, router, shutdown_rx));
        Self {
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Closes the listener and every open connection, and waits until they
    /// are closed.
    pub(crate) async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that can be stopped and served again on the same address: the
/// mocks' `stop` / `resume`.
#[derive(Debug)]
pub(crate) struct Restartable {
    addr: SocketAddr,
    server: Mutex<Option<Server>>,
}

impl Restartable {
    /// Serves `router` on `listener` now.
    pub(crate) fn spawn(listener: TcpListener, addr: SocketAddr, router: Router) -> Self {
        Restartable {
            addr,
            server: Mutex::new(Some(Server::spawn(listener, router))),
        }
    }

    /// Closes the listener and every open connection, and returns once
    /// they are closed. Does nothing if already stopped.
    pub(crate) async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }

    /// Serves `router()` again on the same address. Does nothing if it is
    /// running; fails if the port cannot be bound again within a few
    /// seconds.
    pub(crate) async fn resume(&self, router: impl FnOnce() -> Router) -> io::Result<()> {
        if lock(&self.server).is_some() {
            return Ok(());
        }
        let listener = rebind(self.addr).await?;
        *lock(&self.server) = Some(Server::spawn(listener, router()));
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, router: Router, mut shutdown: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors or similar: back off briefly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Binds `127.0.0.1:0`.
pub(crate) async fn bind_any() -> io::Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await
}

/// Binds `addr` again, retrying for a couple of seconds while the port is
/// still held (for example by a connection in `TIME_WAIT`).
pub(crate) async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A response that makes the server drop the connection without answering.
///
/// The body fails on its first poll, before hyper has written anything to
/// the socket, so over HTTP/1.1 the connection is closed with no status line
/// and the client sees "connection closed before message completed".
pub(crate) fn reset_response() -> Response {
    let body = futures_util::stream::once(async {
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "mock: connection reset on purpose",
        ))
    });
    Body::from_stream(body).into_response()
}

/// Locks, ignoring poisoning: a test that panicked while holding a mock's
/// lock must not break the mock for the next assertion.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
