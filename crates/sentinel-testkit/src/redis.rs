//! A real `redis-server` child process on a free loopback port.
//!
//! The server keeps nothing on disk (`--save "" --appendonly no`) and works in
//! a fresh temporary directory that is removed on drop. [`RedisServer::stop`]
//! kills it (Redis is down: connections are refused) and
//! [`RedisServer::restart`] brings it back, empty, on the same port.
//!
//! [`RedisServer::pause`] freezes it with `SIGSTOP` (Redis hangs: sockets
//! stay open, nothing is answered) and [`RedisServer::resume`] lets it run
//! again, executing whatever clients wrote meanwhile.
//!
//! `redis-server` cannot listen on a port the caller holds, so the port is
//! chosen to be hard to take by anyone else, and a server counts as started
//! only once the process answering on the port is the child itself:
//! - it is drawn at random below the range the kernel hands out for port 0
//!   and for outgoing connections (`ip_local_port_range`), so neither a
//!   mock binding port 0 nor a client's connection can take it while the
//!   server is stopped; no two servers of one process draw the same port
//!   while both live; 6379 is never used;
//! - `INFO server` must name the child's process id: a `PING` answered by
//!   another Redis that took the port first does not count. A child that
//!   cannot bind exits, and [`RedisServer::start`] tries another port;
//!   [`RedisServer::restart`] tries the same port again for a few seconds,
//!   then fails rather than hand out someone else's server.
//!
//! [`RedisServer::query`] is a small synchronous RESP client for checking
//! what the code under test stored:
//!
//! ```no_run
//! use sentinel_testkit::{RedisServer, RespValue};
//!
//! let redis = RedisServer::start()?;
//! redis.query(&["SET", "key", "value", "EX", "60"])?;
//! assert_eq!(redis.query(&["GET", "key"])?, RespValue::Bulk(Some(b"value".to_vec())));
//! assert!(redis.query(&["TTL", "key"])?.as_integer().is_some_and(|ttl| ttl > 0));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::tls::TestCerts;

/// How long a started server has to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports [`RedisServer::start`] tries.
const START_ATTEMPTS: usize = 5;
/// How long [`RedisServer::restart`] keeps trying to get its port back.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ports below the kernel's ephemeral range the servers draw from.
const PORT_SPAN: u16 = 16_384;
/// The port of a Redis someone may be running: never used.
const STANDARD_PORT: u16 = 6379;

/// The ports of this process's servers, running or stopped, so that no
/// other server of the process draws one of them.
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Connect, read and write timeout of [`RedisServer::query`].
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child process listening on `127.0.0.1` on a free port.
///
/// Dropping it kills the process and removes its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    executable: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Further arguments of `redis-server` (a cluster node's, TLS).
    extra: Vec<String>,
    /// The port of TLS connections, when the server takes them.
    tls_port: Option<u16>,
    /// A sentinel's configuration: the server runs as a sentinel with it
    /// (written afresh on each start, since a sentinel rewrites its file).
    sentinel_conf: Option<String>,
    /// The password clients must give (`--requirepass`).
    password: Option<String>,
}

/// A RESP2 reply, as returned by [`RedisServer::query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// A simple string such as `OK` or `PONG`.
    Simple(String),
    /// An error reply such as `ERR unknown command`.
    Error(String),
    /// An integer reply (`TTL`, `DEL`, `EXISTS`, ...).
    Integer(i64),
    /// A bulk string; `None` is the nil reply (`GET` of a missing key).
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the nil array.
    Array(Option<Vec<RespValue>>),
}

impl RespValue {
    /// The integer, for an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Self::Integer(value) => Some(*value),
            _ => None,
        }
    }

    /// The text of a simple string, or of a bulk string that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Simple(text) => Some(text),
            Self::Bulk(Some(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// Whether this is the nil bulk string or the nil array.
    pub fn is_nil(&self) -> bool {
        matches!(self, Self::Bulk(None) | Self::Array(None))
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// answers `PING`.
    ///
    /// Fails if `redis-server` is not on `PATH`, or if it does not come up
    /// within 10 seconds on any of a few fresh ports.
    pub fn start() -> io::Result<Self> {
        Spec::default().start()
    }

    /// Starts a server that also takes TLS connections (on
    /// [`tls_port`](Self::tls_port), with the server certificate of
    /// `certs`), besides plain ones on [`port`](Self::port). With
    /// `client_auth` it asks clients for a certificate signed by the CA
    /// of `certs` (`tls-auth-clients yes`).
    pub fn start_tls(certs: &TestCerts, client_auth: bool) -> io::Result<Self> {
        Spec {
            tls: Some((certs, client_auth)),
            ..Spec::default()
        }
        .start()
    }

    /// The URL to give a Redis client: `redis://127.0.0.1:PORT`.    /// The URL to give a Redis client: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL of TLS connections, `rediss://127.0.0.1:TLS_PORT`, for a
    /// server started with [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}"))
    }

    /// The port of TLS connections, for a server started with
    /// [`start_tls`](Self::start_tls).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the process is running (it has not been stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server and waits for it to exit: Redis is down, new
    /// connections are refused and open ones are closed. Does nothing if it
    /// is already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with `SIGSTOP`: the process stops running but its
    /// sockets stay open, so clients still connect and write (the kernel
    /// buffers what they send) and get no answer, as with a Redis that
    /// hangs. [`resume`](Self::resume) lets it run again; whatever the
    /// clients wrote meanwhile is then read and executed. Does nothing if
    /// the server is stopped.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a server frozen by [`pause`](Self::pause) run again
    /// (`SIGCONT`). Does nothing if the server is stopped.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server with `kill(1)`.
    fn signal(&self, signal: &str) -> io::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "kill {signal} {pid} failed ({status})"
            )))
        }
    }

    /// Starts the server again on the same port, empty, and waits until it
    /// answers `PING`. A running server is stopped first.
    ///
    /// While the port is held by something else this keeps trying for a few
    /// seconds, then fails (it never reports another server as this one).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends one command (each argument as a bulk string) on a new
    /// connection and returns the reply.
    ///
    /// An error reply from Redis is `Ok(RespValue::Error(..))`; `Err` means
    /// the server could not be reached or answered something that is not
    /// RESP.
    pub fn query(&self, args: &[&str]) -> io::Result<RespValue> {
        request(self.addr(), self.password.as_deref(), IO_TIMEOUT, args)
    }

    /// Spawns the process on `self.port` and waits for `PING`; kills it
    /// again on failure.
    fn spawn_and_wait(&self) -> io::Result<Child> {
        let mut command = Command::new(&self.executable);
        if let Some(conf) = &self.sentinel_conf {
            let path = self.dir.join("sentinel.conf");
            std::fs::write(&path, conf)?;
            command.arg(path).arg("--sentinel");
        }
        let mut child = command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        match wait_for_ping(&mut child, self.addr(), self.password.as_deref()) {
            Ok(()) => Ok(child),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(error)
            }
        }
    }
}

/// What a server of the test kit is started with (the cluster's nodes,
/// the sentinels and their data nodes build one).
#[derive(Default)]
pub(crate) struct Spec<'a> {
    /// Further `redis-server` arguments.
    pub(crate) extra: Vec<String>,
    /// TLS on a port of its own with these certificates, and whether
    /// clients must present one (`tls-auth-clients`).
    pub(crate) tls: Option<(&'a TestCerts, bool)>,
    /// Run as a sentinel with this configuration.
    pub(crate) sentinel_conf: Option<String>,
    /// The password clients must give (`--requirepass`, and
    /// `--masterauth` for a replica); [`RedisServer::query`] gives it.
    pub(crate) password: Option<String>,
}

impl Spec<'_> {
    /// Starts the server on a free loopback port and waits until it
    /// answers `PING`, trying a few fresh ports.
    pub(crate) fn start(self) -> io::Result<RedisServer> {
        let Spec {
            mut extra,
            tls,
            sentinel_conf,
            password,
        } = self;
        if let Some(password) = &password {
            extra.extend(["--requirepass", password, "--masterauth", password].map(str::to_owned));
        }
        let executable = find_on_path("redis-server").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "redis-server not found on PATH; the test script installs it",
            )
        })?;
        // From here the server's drop releases its ports and directory.
        let mut server = RedisServer {
            executable,
            port: 0,
            dir: fresh_temp_dir()?,
            child: None,
            extra,
            tls_port: None,
            sentinel_conf,
            password,
        };
        if let Some((certs, client_auth)) = tls {
            let port = claim_port()?;
            server.tls_port = Some(port);
            let path = |p: PathBuf| p.to_string_lossy().into_owned();
            server.extra.extend([
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                path(certs.server_cert()),
                "--tls-key-file".to_owned(),
                path(certs.server_key()),
                "--tls-ca-cert-file".to_owned(),
                path(certs.ca()),
                "--tls-auth-clients".to_owned(),
                if client_auth { "yes" } else { "no" }.to_owned(),
            ]);
        }
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = claim_port()?;
            match server.spawn_and_wait() {
                Ok(child) => {
                    server.child = Some(child);
                    return Ok(server);
                }
                Err(error) => {
                    release_port(server.port);
                    server.port = 0;
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        release_port(self.port);
        if let Some(port) = self.tls_port {
            release_port(port);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls until the server on `addr` is the child (its `INFO server` names
/// the child's process id), the child exits or the deadline passes.
fn wait_for_ping(child: &mut Child, addr: SocketAddr, password: Option<&str>) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut other = None;
    loop {
        if let Some(status) = child.try_wait()? {
            let holder = other.map_or(String::new(), |pid| {
                format!("; redis-server {pid} answers there")
            });
            return Err(io::Error::other(format!(
                "redis-server on port {} exited before answering PING ({status}){holder}",
                addr.port()
            )));
        }
        match server_pid(addr, password) {
            Ok(pid) if pid == child.id() => return Ok(()),
            Ok(pid) => other = Some(pid),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}",
                    addr.port()
                ),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The process id of the Redis answering on `addr` (`INFO server`), with
/// short timeouts.
fn server_pid(addr: SocketAddr, password: Option<&str>) -> io::Result<u32> {
    let info = request(
        addr,
        password,
        Duration::from_millis(500),
        &["INFO", "server"],
    )?;
    info.as_str()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok())
        })
        .ok_or_else(|| invalid("no process_id in INFO server"))
}

/// Sends one command on a new connection to `addr` (after `AUTH` when
/// given a password) and returns its reply; `timeout` bounds the connect,
/// each read and each write.
fn request(
    addr: SocketAddr,
    password: Option<&str>,
    timeout: Duration,
    args: &[&str],
) -> io::Result<RespValue> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = Vec::new();
    if let Some(password) = password {
        out.extend(encode_command(&["AUTH", password]));
    }
    out.extend(encode_command(args));
    stream.write_all(&out)?;
    let mut reader = BufReader::new(stream);
    if password.is_some()
        && let RespValue::Error(e) = read_value(&mut reader)?
    {
        return Err(io::Error::other(format!("AUTH failed: {e}")));
    }
    read_value(&mut reader)
}

/// Draws a port for a new server and marks it in use by this process:
/// random within [`port_range`], not 6379, not in use by another server of
/// this process, and free right now (a listener binds it and lets it go).
pub(crate) fn claim_port() -> io::Result<u16> {
    let range = port_range();
    let span = u64::from(range.end - range.start);
    let random = RandomState::new();
    for attempt in 0_u64..256 {
        let offset = u16::try_from(random.hash_one(attempt) % span).unwrap_or(0);
        let port = range.start + offset;
        if port == STANDARD_PORT || !lock_ports().insert(port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
        release_port(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port for redis-server in {range:?}"),
    ))
}

/// Marks `port` free for the other servers of this process.
pub(crate) fn release_port(port: u16) {
    lock_ports().remove(&port);
}

fn lock_ports() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    PORTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`PORT_SPAN`] ports just below the kernel's ephemeral range (from
/// `/proc/sys/net/ipv4/ip_local_port_range`; 32768 when it cannot be read),
/// never below 1024.
fn port_range() -> Range<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let end = ephemeral_start.max(1024 + 1024);
    end.saturating_sub(PORT_SPAN).max(1024)..end
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Creates a directory under the system temp dir that no other instance
/// (in this or another process) uses.
pub(crate) fn fresh_temp_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    loop {
        let name = format!(
            "sentinel-testkit-redis-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}

fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_value(reader: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(reader)?;
    let (tag, rest) = line
        .split_first()
        .ok_or_else(|| invalid("empty RESP line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match tag {
        b'+' => Ok(RespValue::Simple(text())),
        b'-' => Ok(RespValue::Error(text())),
        b':' => Ok(RespValue::Integer(parse_int(rest)?)),
        b'$' => {
            let Ok(len) = usize::try_from(parse_int(rest)?) else {
                return Ok(RespValue::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("bulk string not terminated by CRLF"));
            }
            data.truncate(len);
            Ok(RespValue::Bulk(Some(data)))
        }
        b'*' => {
            let Ok(len) = usize::try_from(parse_int(rest)?) else {
                return Ok(RespValue::Array(None));
            };
            let items = (0..len)
                .map(|_| read_value(reader))
                .collect::<io::Result<_>>()?;
            Ok(RespValue::Array(Some(items)))
        }
        _ => Err(invalid("unknown RESP type")),
    }
}

/// Reads one CRLF-terminated line, without the CRLF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a RESP reply",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| invalid("bad RESP integer"))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// The directory of a server, for tests of this module.
#[cfg(test)]
impl RedisServer {
    fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// A connected `fred` pool for `url`, built by [`sentinel_net::redis::connect`]
/// as the proxy builds its own (command timeout 500 ms, a command buffer of
/// 1024 per connection, reconnecting on its own), for tests of components
/// that take a pool; returns once it is connected.
pub async fn fred_pool(
    url: &str,
) -> Result<fred::clients::Pool, Box<dyn std::error::Error + Send + Sync>> {
    use fred::interfaces::ClientLike;
    let settings = sentinel_net::RedisSettings::new(url)
        .pool_size(2)
        .command_timeout(Duration::from_millis(500));
    let pool = sentinel_net::redis::connect(&settings)?;
    pool.wait_for_connect().await?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<RespValue> {
        read_value(&mut BufReader::new(bytes))
    }

    #[test]
    fn parses_every_resp2_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), RespValue::Simple("OK".into()));
        assert_eq!(
            parse(b"-ERR nope\r\n").unwrap(),
            RespValue::Error("ERR nope".into())
        );
        assert_eq!(parse(b":-2\r\n").unwrap(), RespValue::Integer(-2));
        assert_eq!(parse(b"$-1\r\n").unwrap(), RespValue::Bulk(None));
        assert_eq!(
            parse(b"$5\r\na\r\nbc\r\n").unwrap(),
            RespValue::Bulk(Some(b"a\r\nbc".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), RespValue::Array(None));
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            RespValue::Array(Some(vec![
                RespValue::Integer(1),
                RespValue::Bulk(Some(b"x".to_vec()))
            ]))
        );
        assert!(parse(b"+trunc").is_err());
        assert!(parse(b"?what\r\n").is_err());
    }

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        assert_eq!(
            encode_command(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn pause_freezes_the_server_and_resume_thaws_it() {
        let server = RedisServer::start().unwrap();
        server.pause().unwrap();
        // Connections are still accepted, but nothing is answered.
        assert!(server_pid(server.addr(), None).is_err());
        server.resume().unwrap();
        assert_eq!(
            server_pid(server.addr(), None).unwrap(),
            server.pid().unwrap()
        );
        assert_eq!(
            server.query(&["PING"]).unwrap(),
            RespValue::Simple("PONG".into())
        );
    }

    #[test]
    fn drop_removes_the_temp_dir() {
        let server = RedisServer::start().unwrap();
        let dir = server.dir().to_path_buf();
        assert!(dir.is_dir());
        drop(server);
        assert!(!dir.exists());
    }
}
