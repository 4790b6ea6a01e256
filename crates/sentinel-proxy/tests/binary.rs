//! Black-box tests of the `sentinel-proxy` binary: the command line, the
//! environment, start-up refusals, `--demo` end to end, request ids, secret
//! hygiene and graceful shutdown on SIGTERM.
//!
//! Each test starts the built binary as a child process with a cleared
//! environment, on a free loopback port, and talks to it with a minimal
//! HTTP/1.1 client over `std::net::TcpStream`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-proxy");

/// How long a child may take to answer `/healthz`.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a refused configuration may take to exit.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
/// Socket read timeout of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- processes

/// The binary with a cleared environment (only `PATH` kept), `args` and
/// `envs`, its output piped.
fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Output of a child, collected by a background thread so the pipe never
/// fills up.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn collect(mut from: impl Read + Send + 'static) -> Self {
        let captured = Captured::default();
        let sink = captured.0.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A running child, killed on drop.
struct Proc {
    child: Child,
    stdout: Captured,
    stderr: Captured,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn sentinel-proxy");
        let stdout = Captured::collect(child.stdout.take().unwrap());
        let stderr = Captured::collect(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the exit until `deadline`; `None` if still running.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                // Let the reader threads see the end of the pipes.
                thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy that answers `/healthz`.
struct Proxy {
    proc: Proc,
    /// Where the test client connects (loopback even when listening on
    /// `0.0.0.0`).
    addr: SocketAddr,
}

/// Starts the binary with `SENTINEL_LISTEN=<host>:0`, reads the port it
/// got from its "sentinel-proxy listening" log line (so it needs the log at
/// `info` or finer, the default), and waits for `/healthz` there. The
/// kernel picks the port as the proxy binds it: no other process can take
/// it first, and no other proxy can answer in its place.
fn start_on(host: &str, args: &[&str], envs: &[(&str, &str)]) -> Proxy {
    let listen = format!("{host}:0");
    let mut all = envs.to_vec();
    all.push(("SENTINEL_LISTEN", &listen));
    let mut proc = Proc::spawn(command(args, &all));
    let deadline = Instant::now() + START_DEADLINE;
    let port = loop {
        if let Some(port) = listening_port(&proc.stderr.text()) {
            break port;
        }
        if let Some(status) = proc.exited() {
            thread::sleep(Duration::from_millis(50));
            panic!(
                "sentinel-proxy did not start: exited with {status}\n{}",
                proc.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no \"sentinel-proxy listening\" line within {START_DEADLINE:?}\n{}",
            proc.output()
        );
        thread::sleep(Duration::from_millis(25));
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(r) = try_request(addr, "GET", "/healthz", &[], None)
            && r.status == 200
        {
            return Proxy { proc, addr };
        }
        assert!(
            proc.exited().is_none() && Instant::now() < deadline,
            "no /healthz within {START_DEADLINE:?}\n{}",
            proc.output()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// The port in the proxy's "sentinel-proxy listening addr=IP:PORT" log line.
fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .find(|line| line.contains("sentinel-proxy listening"))?
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))?
        .parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.port())
}

fn start(args: &[&str], envs: &[(&str, &str)]) -> Proxy {
    start_on("127.0.0.1", args, envs)
}

/// Runs a configuration that must be refused; returns its exit status and
/// output. Fails if it is still running after [`REFUSAL_DEADLINE`].
fn run_refused(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let started = Instant::now();
    let mut proc = Proc::spawn(command(args, envs));
    let status = proc
        .wait_until(started + REFUSAL_DEADLINE)
        .unwrap_or_else(|| {
            panic!(
                "{envs:?} {args:?}: still running after {REFUSAL_DEADLINE:?}\n{}",
                proc.output()
            )
        });
    (status, proc.stdout.text(), proc.stderr.text())
}

// ---------------------------------------------------------------- HTTP client

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 exchange on its own connection (`Connection: close`).
struct Exchange {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
}

/// How the rest of a response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Chunked,
    Length(usize),
    ToEof,
    Done,
}

impl Exchange {
    /// Sends the request and reads the response head.
    fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> io::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if method != "GET" {
            head.push_str("content-type: application/json\r\n");
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        stream.flush()?;

        let mut reader = BufReader::new(stream);
        let status_line = read_line(&mut reader)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header {line:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let framing = if header_of(&headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(len) = header_of(&headers, "content-length") {
            match len.parse() {
                Ok(0) => Framing::Done,
                Ok(n) => Framing::Length(n),
                Err(_) => return Err(io::Error::other(format!("bad content-length {len:?}"))),
            }
        } else {
            Framing::ToEof
        };
        Ok(Exchange {
            reader,
            status,
            headers,
            framing,
        })
    }

    /// The next piece of the body; `None` at its end.
    fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.framing {
            Framing::Done => Ok(None),
            Framing::Chunked => {
                let size_line = read_line(&mut self.reader)?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                        .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while !read_line(&mut self.reader)?.is_empty() {}
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                let mut data = vec![0u8; size];
                self.reader.read_exact(&mut data)?;
                if !read_line(&mut self.reader)?.is_empty() {
                    return Err(io::Error::other("chunk not followed by CRLF"));
                }
                Ok(Some(data))
            }
            Framing::Length(len) => {
                let mut data = vec![0u8; len];
                self.reader.read_exact(&mut data)?;
                self.framing = Framing::Done;
                Ok(Some(data))
            }
            Framing::ToEof => {
                let mut data = Vec::new();
                self.reader.read_to_end(&mut data)?;
                self.framing = Framing::Done;
                Ok(Some(data))
            }
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    fn finish(mut self) -> io::Result<Response> {
        let mut body = Vec::new();
        while let Some(piece) = self.next_piece()? {
            body.extend_from_slice(&piece);
        }
        Ok(Response {
            status: self.status,
            headers: self.headers,
            body,
        })
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<Response> {
    Exchange::open(addr, method, path, headers, body)?.finish()
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], None)
}

fn chat(addr: SocketAddr, body: &str) -> Response {
    request(addr, "POST", "/v1/chat/completions", &[], Some(body))
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.trim().to_owned())
        .collect()
}

/// A request id the proxy made up: 32 lowercase hex digits.
fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------- tests

/// The environment variables `REFERENCE` names: each line's first word when
/// it looks like `SOME_NAME`.
fn reference_variables() -> BTreeSet<String> {
    sentinel_proxy::settings::REFERENCE
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| {
            word.contains('_')
                && word
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_names_every_variable_and_flag() {
    let vars = reference_variables();
    for name in [
        "SENTINEL_LISTEN",
        "ZION_URL",
        "ZION_API_KEY",
        "REDIS_URL",
        "TIER_CONFIG_TTL_SECONDS",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "SENTINEL_API_KEYS",
        "SENTINEL_DRAIN_TIMEOUT_SECS",
    ] {
        assert!(vars.contains(name), "REFERENCE lacks {name}: {vars:?}");
    }

    let out = command(&["--help"], &[]).output().expect("run --help");
    assert!(out.status.success(), "--help: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in &vars {
        assert!(text.contains(name.as_str()), "--help lacks {name}:\n{text}");
    }
    for flag in ["--config", "--demo", "--allow-unauthenticated"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }

    // `-h` is the short form: it at least lists the flags.
    let out = command(&["-h"], &[]).output().expect("run -h");
    assert!(out.status.success(), "-h: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--demo", "--allow-unauthenticated"] {
        assert!(text.contains(flag), "-h lacks {flag}:\n{text}");
    }
}

#[test]
fn bad_settings_exit_nonzero_naming_the_setting_without_leaking_secrets() {
    // Settings are refused before anything binds: port 0 is as good as any.
    let listen = "127.0.0.1:0".to_owned();
    let secrets = [
        ("OPENAI_API_KEY", "sk-should-not-leak"),
        ("ZION_API_KEY", "zion-should-not-leak"),
        ("SENTINEL_API_KEYS", "inbound-should-not-leak"),
    ];
    let cases: [(&str, &str); 7] = [
        ("SENTINEL_LISTEN", "nope"),
        ("TIER_CONFIG_TTL_SECONDS", "0"),
        ("TIER_CONFIG_TTL_SECONDS", "soon"),
        ("ZION_URL", "ftp://zion.example"),
        ("SENTINEL_CONNECT_TIMEOUT_MS", "-1"),
        ("SENTINEL_LOG", "loud"),
        // A Redis URL may carry a password: it must not be echoed.
        ("REDIS_URL", "http://:redis-should-not-leak@127.0.0.1:1"),
    ];
    for (name, value) in cases {
        let mut envs = secrets.to_vec();
        if name != "SENTINEL_LISTEN" {
            envs.push(("SENTINEL_LISTEN", &listen));
        }
        envs.push((name, value));
        let started = Instant::now();
        let (status, stdout, stderr) = run_refused(&[], &envs);
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}={value}: took {:?} to refuse",
            started.elapsed()
        );
        assert!(
            stderr.contains(name),
            "{name}={value}: stderr does not name it:\n{stderr}"
        );
        for secret in [
            "sk-should-not-leak",
            "zion-should-not-leak",
            "inbound-should-not-leak",
            "redis-should-not-leak",
        ] {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{name}={value}: {secret} leaked:\n{stdout}\n{stderr}"
            );
        }
    }

    // A missing --config file is named too.
    let missing = std::env::temp_dir().join(format!(
        "sentinel-binary-test-missing-{}.toml",
        std::process::id()
    ));
    let missing = missing.to_str().unwrap();
    let (status, _, stderr) = run_refused(
        &["--config", missing],
        &[("SENTINEL_LISTEN", listen.as_str())],
    );
    assert!(!status.success(), "a missing --config file was accepted");
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn beyond_loopback_needs_keys_or_the_flag() {
    let (status, _, stderr) = run_refused(&[], &[("SENTINEL_LISTEN", "0.0.0.0:0")]);
    assert!(!status.success(), "0.0.0.0 without keys was accepted");
    assert!(
        stderr.contains("--allow-unauthenticated") && stderr.contains("SENTINEL_LISTEN"),
        "{stderr}"
    );

    // With the flag it starts, and /v1/ is open.
    let quiet = [("SENTINEL_HEALTH_CHECKS", "false")];
    let proxy = start_on("0.0.0.0", &["--allow-unauthenticated"], &quiet);
    assert_eq!(get(proxy.addr, "/v1/models").status, 200);
    assert!(proxy.proc.stderr.text().contains("listening"));
    drop(proxy);

    // With inbound keys it starts too, and /v1/ is guarded.
    let keyed = [
        ("SENTINEL_HEALTH_CHECKS", "false"),
        ("SENTINEL_API_KEYS", "k1, k2"),
    ];
    let proxy = start_on("0.0.0.0", &[], &keyed);
    let denied = get(proxy.addr, "/v1/models");
    assert_eq!(denied.status, 401, "{}", denied.text());
    assert_eq!(denied.json()["error"]["code"], "invalid_api_key");
    assert!(denied.header("x-request-id").is_some());
    let wrong = request(
        proxy.addr,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer k3")],
        None,
    );
    assert_eq!(wrong.status, 401);
    let ok = request(
        proxy.addr,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer k2")],
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    // /healthz, /readyz and /metrics need no key.
    assert_eq!(get(proxy.addr, "/healthz").status, 200);
    assert_eq!(get(proxy.addr, "/metrics").status, 200);
}

#[test]
fn demo_runs_the_whole_path_with_nothing_else() {
    let proxy = start(&["--demo"], &[]);
    let addr = proxy.addr;

    // The banner names the address in curl lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = format!("http://{addr}/v1/chat/completions");
    while !proxy.proc.stdout.text().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no curl line naming {addr} on stdout\n{}",
            proxy.proc.output()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let banner = proxy.proc.stdout.text();
    let curls: Vec<&str> = banner
        .lines()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert!(curls.len() >= 3, "{banner}");
    assert!(
        curls.iter().all(|l| l.contains(&format!("http://{addr}/"))),
        "{banner}"
    );

    // A non-streaming request by the body's tier.
    let r = chat(
        addr,
        r#"{"tier":"moderate","messages":[{"role":"user","content":"Hello"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sentinel-model"), Some("gpt-4o"));
    assert_eq!(r.header("x-sentinel-tier"), Some("moderate"));
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let body = r.json();
    assert_eq!(body["model"], "gpt-4o", "{body}");
    assert_eq!(body["object"], "chat.completion", "{body}");

    // A stream by model alias.
    let r = chat(
        addr,
        r#"{"model":"complex","stream":true,"messages":[{"role":"user","content":"Stream please"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{:?}",
        r.header("content-type")
    );
    assert_eq!(r.header("x-sentinel-model"), Some("gpt-4.1"));
    assert_eq!(r.header("x-sentinel-tier"), Some("complex"));
    assert!(r.header("x-request-id").is_some());
    let text = r.text();
    let data = sse_data(&text);
    assert!(data.len() >= 3, "{text}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(chunk["model"], "gpt-4.1", "{d}");
        assert_eq!(chunk["object"], "chat.completion.chunk", "{d}");
    }

    // The tiers as models.
    let r = get(addr, "/v1/models");
    assert_eq!(r.status, 200);
    let ids: BTreeSet<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = ["simple", "moderate", "complex"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, want);

    // Metrics after routed requests.
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    let metrics = r.text();
    assert!(metrics.contains("sentinel_requests_total"), "{metrics}");
    assert!(
        metrics.contains("sentinel_http_requests_total"),
        "{metrics}"
    );

    // Ready (the built-in config loads at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(addr, "/readyz");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz {}: {}",
            r.status,
            r.text()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Errors in the OpenAI envelope.
    let r = chat(addr, r#"{"model":"gpt-5","messages":[]}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
    let r = get(addr, "/v1/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");

    assert!(proxy.proc.stderr.text().contains("listening"));
}

#[test]
fn every_response_carries_a_request_id() {
    let proxy = start(&["--demo"], &[]);
    let addr = proxy.addr;
    let simple = r#"{"messages":[{"role":"user","content":"Hi"}]}"#;
    let bad = "not json";

    let mut seen = BTreeSet::new();
    let responses = [
        ("GET /healthz", get(addr, "/healthz")),
        ("GET /readyz", get(addr, "/readyz")),
        ("GET /metrics", get(addr, "/metrics")),
        ("GET /v1/models", get(addr, "/v1/models")),
        ("GET /nowhere", get(addr, "/nowhere")),
        ("POST chat", chat(addr, simple)),
        ("POST chat (invalid)", chat(addr, bad)),
    ];
    for (what, r) in &responses {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no x-request-id"));
        assert!(is_generated_id(id), "{what}: {id:?}");
        assert!(seen.insert(id.to_owned()), "{what}: id {id} reused");
    }
    assert_eq!(responses[5].1.status, 200);
    assert_eq!(responses[6].1.status, 400);

    // A sane client id is echoed, on success and on error.
    let sane = [("x-request-id", "abc-123")];
    for (path, method, body) in [
        ("/healthz", "GET", None),
        ("/v1/chat/completions", "POST", Some(simple)),
        ("/v1/chat/completions", "POST", Some(bad)),
    ] {
        let r = request(addr, method, path, &sane, body);
        assert_eq!(r.header("x-request-id"), Some("abc-123"), "{method} {path}");
    }

    // An unusable one is replaced.
    let long = "a".repeat(129);
    for bad_id in ["has space", "semi;colon", long.as_str()] {
        let r = request(addr, "GET", "/healthz", &[("x-request-id", bad_id)], None);
        let id = r.header("x-request-id").unwrap();
        assert!(is_generated_id(id), "{bad_id:?} -> {id:?}");
    }
}

#[test]
fn secrets_never_reach_the_output() {
    // Nothing listens there, and nothing can while it is held.
    let held = sentinel_testkit::ClosedPort::new().unwrap();
    let closed = held.port();
    let openai = format!("http://127.0.0.1:{closed}/v1");
    let zion = format!("http://127.0.0.1:{closed}");
    let redis = format!("redis://:redis-pass-should-not-leak@127.0.0.1:{closed}");
    let secrets = [
        "sk-openai-should-not-leak",
        "zion-should-not-leak",
        "inbound-should-not-leak",
        "redis-pass-should-not-leak",
    ];
    let envs = [
        ("SENTINEL_LOG", "trace"),
        ("OPENAI_BASE_URL", openai.as_str()),
        ("OPENAI_API_KEY", secrets[0]),
        ("ZION_URL", zion.as_str()),
        ("ZION_API_KEY", secrets[1]),
        ("SENTINEL_API_KEYS", secrets[2]),
        ("REDIS_URL", redis.as_str()),
        ("SENTINEL_HEALTH_INTERVAL_SECS", "1"),
        ("SENTINEL_DRAIN_TIMEOUT_SECS", "1"),
    ];
    let mut proxy = start(&[], &envs);
    let addr = proxy.addr;

    // Alive, though no tier config can be had.
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/readyz").status, 503);
    let auth = format!("Bearer {}", secrets[2]);
    let body = r#"{"tier":"simple","messages":[{"role":"user","content":"Hi"}]}"#;
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong")],
        Some(body),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", auth.as_str())],
        Some(body),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "tier_config_unavailable");
    assert!(r.header("retry-after").is_some());
    let shown = r.text();
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} in a response: {shown}");
    }

    // Let the health probes and config retries run and log.
    thread::sleep(Duration::from_millis(1200));
    proxy.proc.sigterm();
    let status = proxy
        .proc
        .wait_until(Instant::now() + Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", proxy.proc.output()));
    assert!(status.success(), "{status}\n{}", proxy.proc.output());
    let output = proxy.proc.output();
    assert!(output.contains("sentinel-proxy listening"), "{output}");
    for secret in secrets {
        assert!(!output.contains(secret), "{secret} leaked:\n{output}");
    }
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    const DRAIN_SECS: u64 = 5;
    let drain = DRAIN_SECS.to_string();
    let mut proxy = start(&["--demo"], &[("SENTINEL_DRAIN_TIMEOUT_SECS", &drain)]);
    let addr = proxy.addr;

    let mut stream = Exchange::open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(
            r#"{"model":"complex","stream":true,"messages":[{"role":"user","content":"Stream"}]}"#,
        ),
    )
    .unwrap();
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream"))
    );

    // Wait for the first chunk.
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains("data:") {
        let piece = stream
            .next_piece()
            .unwrap()
            .expect("the stream ended before its first chunk");
        body.extend_from_slice(&piece);
    }

    proxy.proc.sigterm();
    let signalled = Instant::now();

    // New connections are refused (or fail) once the signal is handled.
    let refused_by = signalled + Duration::from_secs(2);
    loop {
        match try_request(addr, "GET", "/healthz", &[], None) {
            Err(_) => break,
            Ok(r) if r.status != 200 => break,
            Ok(_) => {}
        }
        assert!(
            Instant::now() < refused_by,
            "still accepting new connections 2 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }

    // The in-flight stream completes.
    while let Some(piece) = stream
        .next_piece()
        .unwrap_or_else(|e| panic!("stream cut after SIGTERM: {e}\n{}", proxy.proc.output()))
    {
        body.extend_from_slice(&piece);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(data.len() >= 5, "{text}");

    // And the process exits 0 within the drain time.
    let status = proxy
        .proc
        .wait_until(signalled + Duration::from_secs(DRAIN_SECS))
        .unwrap_or_else(|| {
            panic!(
                "still running {DRAIN_SECS} s after SIGTERM\n{}",
                proxy.proc.output()
            )
        });
    assert!(status.success(), "{status}\n{}", proxy.proc.output());
    assert!(
        signalled.elapsed() < Duration::from_secs(DRAIN_SECS),
        "exit took the whole drain: {:?}",
        signalled.elapsed()
    );
    let log = proxy.proc.stderr.text();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("drain timeout passed"), "{log}");
}
