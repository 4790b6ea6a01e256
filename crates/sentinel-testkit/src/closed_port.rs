//! A loopback address where nothing listens, held so that nothing will.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpSocket;

/// A loopback address that refuses connections, like a server that is
/// down: a socket bound to a free port that never listens.
///
/// While it lives no other socket can bind the port, so a client pointed at
/// [`addr`](Self::addr) is never answered by someone else's server, as it
/// could be with a port found by binding and releasing it. It needs no
/// runtime.
///
/// ```
/// use sentinel_testkit::ClosedPort;
///
/// let closed = ClosedPort::new()?;
/// assert!(std::net::TcpStream::connect(closed.addr()).is_err());
/// assert!(std::net::TcpListener::bind(closed.addr()).is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ClosedPort {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Holds a free loopback port.
    pub fn new() -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = socket.local_addr()?;
        Ok(ClosedPort {
            _socket: socket,
            addr,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
