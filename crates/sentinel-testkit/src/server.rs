//! The accept loop shared by the HTTP mocks.
//!
//! `axum::serve` leaves connection tasks running after its own task is
//! aborted, so a keep-alive client could still reach a "stopped" mock. Here
//! every connection task lives in a `JoinSet` owned by the server task:
//! shutting the server down closes the listener and every open connection.
//!
//! A stopped mock keeps its port: before its listener closes, a second
//! socket is bound to the same address (both have `SO_REUSEPORT`), and it
//! stays bound without listening until the mock resumes, when it starts
//! listening itself. Connections meanwhile are refused, as by a server that
//! is down, and no other socket can take the port (one without
//! `SO_REUSEPORT` cannot bind it, and the kernel never hands it out for
//! port 0 or an outgoing connection), so the mock always comes back on its
//! address and a client never reaches someone else's server there.

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
use tokio::net::{TcpListener, TcpSocket};
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
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Serving(Server),
    /// Stopped, holding the port with a socket bound to it that does not
    /// listen (`None` only if that socket could not be bound).
    Stopped(Option<TcpSocket>),
}

impl Restartable {
    /// Serves `router` on `listener` (from [`bind_any`]) now.
    pub(crate) fn spawn(listener: TcpListener, addr: SocketAddr, router: Router) -> Self {
        Restartable {
            addr,
            state: Mutex::new(State::Serving(Server::spawn(listener, router))),
        }
    }

    /// Closes the listener and every open connection, and returns once
    /// they are closed; the port stays held (connections are refused).
    /// Does nothing if already stopped.
    pub(crate) async fn stop(&self) {
        let server = {
            let mut state = lock(&self.state);
            if matches!(*state, State::Stopped(_)) {
                return;
            }
            // Hold the port before the listener lets it go.
            let hold = bound(self.addr).ok();
            match std::mem::replace(&mut *state, State::Stopped(hold)) {
                State::Serving(server) => server,
                State::Stopped(_) => return,
            }
        };
        server.shutdown().await;
    }

    /// Serves `router()` again on the same address. Does nothing if it is
    /// running.
    pub(crate) async fn resume(&self, router: impl FnOnce() -> Router) -> io::Result<()> {
        let held = match &mut *lock(&self.state) {
            State::Serving(_) => return Ok(()),
            State::Stopped(held) => held.take(),
        };
        let listener = match held {
            Some(socket) => socket.listen(BACKLOG)?,
            None => rebind(self.addr).await?,
        };
        *lock(&self.state) = State::Serving(Server::spawn(listener, router()));
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

/// The listen backlog of a mock (the one `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// A listener on a free loopback port, with `SO_REUSEPORT` so that a
/// [`Restartable`] can hold its port while stopped.
pub(crate) async fn bind_any() -> io::Result<TcpListener> {
    bound(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))?.listen(BACKLOG)
}

/// A socket bound to `addr` that does not listen yet, with `SO_REUSEPORT`
/// and without `SO_REUSEADDR`: it may share the address only with the
/// mock's own listener (and that listener's connections in `TIME_WAIT`).
fn bound(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Binds `addr` again, retrying for a few seconds while the port is held:
/// only when the port could not be held while stopped.
async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match bound(addr).and_then(|socket| socket.listen(BACKLOG)) {
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
