//! The driver: starts every process, offers the same load to each target,
//! and prints one table.
//!
//! Targets: the mock upstream directly (`direct`), through the bare hyper
//! pass-through (`passthrough`), through `sentinel-proxy` with memory
//! backends (`sentinel-memory`), and through `sentinel-proxy` with Redis
//! (`sentinel-redis`: config cache, sessions and breakers in Redis; every
//! request carries `x-sentinel-session`). For each: non-streaming and
//! streaming bodies, a closed loop at 1 and 16 connections, and an open
//! loop at a fixed rate. Each point is a warm-up run, then a measured run;
//! the gateway's CPU seconds and Redis's command count are read just before
//! and just after the measured run.
//!
//! With `--baseline`, an older `sentinel-proxy` binary runs as one more
//! target, `sentinel-before`, set up as `sentinel-memory` is, and measured
//! next to it at every point (the two take turns going first). The report
//! then ends with a "Before and after" table.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::oha::{self, Load};
use crate::procfs;
use crate::upstream::{CHUNK_DELAY_MEMBER, CONTENT_CHUNKS};

/// `sentinel-bench run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The `sentinel-proxy` binary [next to this one].
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// The `session-memory` binary [next to this one].
    #[arg(long)]
    session_memory: Option<PathBuf>,
    /// The `oha` binary.
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// The `redis-server` binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Measured seconds per point.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds before each point (not measured; 0: none).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// The open loop's rates, requests per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
    rates: Vec<u32>,
    /// Sessions for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Also write the report, as Markdown, to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// An older `sentinel-proxy` binary to compare with: it runs as the
    /// target `sentinel-before` (memory backends, the same settings and mock
    /// upstream as `sentinel-memory`) at every point, and the report gains a
    /// "Before and after" table.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// What the report calls the baseline, e.g. its commit [its path].
    #[arg(long, requires = "baseline")]
    baseline_label: Option<String>,
}

/// A child process, killed when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Self, String> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", command.get_program()))?;
        Ok(Process { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections, or fails after 20 s or when
    /// the process exits.
    fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited early: {status}", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {addr} within 20 s",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (bound together, then released).
pub(crate) fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Passthrough,
    SentinelMemory,
    /// The `--baseline` build, set up as `SentinelMemory` is.
    SentinelBefore,
    /// Sentinel with Redis; `true`: with a session header.
    SentinelRedis(bool),
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Passthrough => "passthrough",
            Target::SentinelMemory => "sentinel-memory",
            Target::SentinelBefore => "sentinel-before",
            Target::SentinelRedis(true) => "sentinel-redis",
            Target::SentinelRedis(false) => "sentinel-redis, no session",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Sse,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Sse => "sse",
        }
    }
}

/// A chat body of about 1 KiB, the same for every target.
fn body(kind: Kind) -> String {
    let question = "Summarise the plot of Hamlet in one paragraph for a reader who has never seen the play, naming the main characters, where it takes place, and how it ends. ".repeat(5);
    serde_json::json!({
        "tier": "simple",
        "messages": [
            { "role": "system", "content": "You are a concise literary assistant." },
            { "role": "user", "content": question },
        ],
        "temperature": 0.2,
        "stream": kind == Kind::Sse,
    })
    .to_string()
}

const SESSION: (&str, &str) = ("x-sentinel-session", "bench-session-0001");

/// One measured point.
struct Point {
    target: Target,
    kind: Kind,
    load: Load,
    outcome: oha::Outcome,
    /// Gateway CPU microseconds per completed request.
    cpu_us: Option<f64>,
    /// Redis commands per completed request.
    redis_per_request: Option<f64>,
}

/// The processes under test.
struct Lab {
    upstream_addr: SocketAddr,
    passthrough: (Process, SocketAddr),
    memory: (Process, SocketAddr),
    /// The `--baseline` build, when there is one.
    before: Option<(Process, SocketAddr)>,
    redis_proxy: (Process, SocketAddr),
    redis_addr: SocketAddr,
    _upstream: Process,
    _redis: Process,
}

impl Lab {
    fn start(options: &Options, proxy: &Path) -> Result<Lab, String> {
        let me = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let addrs = free_addrs(6)?;
        let (up, pass, mem, red, redis, old) =
            (addrs[0], addrs[1], addrs[2], addrs[3], addrs[4], addrs[5]);

        let mut upstream = Process::spawn(
            "mock upstream",
            Command::new(&me).args(["upstream", "--listen", &up.to_string()]),
        )?;
        upstream.wait_listening(up)?;
        let mut passthrough = Process::spawn(
            "pass-through proxy",
            Command::new(&me).args([
                "passthrough",
                "--listen",
                &pass.to_string(),
                "--upstream",
                &format!("http://{up}"),
            ]),
        )?;
        passthrough.wait_listening(pass)?;
        let mut redis_server = Process::spawn(
            "redis-server",
            Command::new(&options.redis_server).args([
                "--bind",
                "127.0.0.1",
                "--port",
                &redis.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        )?;
        redis_server.wait_listening(redis)?;

        let sentinel = |proxy: &Path, listen: SocketAddr, redis: Option<SocketAddr>| {
            let mut command = Command::new(proxy);
            command
                .env_clear()
                .env("SENTINEL_LISTEN", listen.to_string())
                .env("OPENAI_BASE_URL", format!("http://{up}/v1"))
                .env("OPENAI_API_KEY", "bench-key");
            if let Some(redis) = redis {
                command.env("REDIS_URL", format!("redis://{redis}"));
            }
            command
        };
        let mut memory =
            Process::spawn("sentinel-proxy (memory)", &mut sentinel(proxy, mem, None))?;
        memory.wait_listening(mem)?;
        let before = match &options.baseline {
            Some(baseline) => {
                let mut before = Process::spawn(
                    "sentinel-proxy (baseline, memory)",
                    &mut sentinel(baseline, old, None),
                )?;
                before.wait_listening(old)?;
                Some((before, old))
            }
            None => None,
        };
        let mut redis_proxy = Process::spawn(
            "sentinel-proxy (redis)",
            &mut sentinel(proxy, red, Some(redis)),
        )?;
        redis_proxy.wait_listening(red)?;
        Ok(Lab {
            upstream_addr: up,
            passthrough: (passthrough, pass),
            memory: (memory, mem),
            before,
            redis_proxy: (redis_proxy, red),
            redis_addr: redis,
            _upstream: upstream,
            _redis: redis_server,
        })
    }

    fn addr(&self, target: Target) -> Result<SocketAddr, String> {
        Ok(match target {
            Target::Direct => self.upstream_addr,
            Target::Passthrough => self.passthrough.1,
            Target::SentinelMemory => self.memory.1,
            Target::SentinelBefore => {
                self.before
                    .as_ref()
                    .ok_or("sentinel-before runs only with --baseline")?
                    .1
            }
            Target::SentinelRedis(_) => self.redis_proxy.1,
        })
    }

    /// The gateway's pid (none for the direct path).
    fn pid(&self, target: Target) -> Option<u32> {
        match target {
            Target::Direct => None,
            Target::Passthrough => Some(self.passthrough.0.pid()),
            Target::SentinelMemory => Some(self.memory.0.pid()),
            Target::SentinelBefore => self.before.as_ref().map(|b| b.0.pid()),
            Target::SentinelRedis(_) => Some(self.redis_proxy.0.pid()),
        }
    }
}

fn measure(
    lab: &Lab,
    options: &Options,
    ticks: f64,
    target: Target,
    kind: Kind,
    load: Load,
) -> Result<Point, String> {
    let url = format!("http://{}/v1/chat/completions", lab.addr(target)?);
    let body = body(kind);
    let headers: &[(&str, &str)] = match target {
        Target::SentinelRedis(true) => &[SESSION],
        _ => &[],
    };
    let mut request = oha::Request {
        url: &url,
        body: &body,
        headers,
        load,
        duration: Duration::from_secs(options.warmup_seconds),
    };
    // oha gives no percentiles for a run of no requests.
    if options.warmup_seconds > 0 {
        oha::run(&options.oha, &request)?;
    }
    request.duration = Duration::from_secs(options.seconds);

    let pid = lab.pid(target);
    let redis = matches!(target, Target::SentinelRedis(_));
    let cpu_before = pid.map(|p| procfs::cpu_seconds(p, ticks)).transpose()?;
    let redis_before = redis
        .then(|| procfs::redis_commands(lab.redis_addr))
        .transpose()?;
    let outcome = oha::run(&options.oha, &request)?;
    let cpu_after = pid.map(|p| procfs::cpu_seconds(p, ticks)).transpose()?;
    let redis_after = redis
        .then(|| procfs::redis_commands(lab.redis_addr))
        .transpose()?;
    if outcome.completed == 0 || outcome.not_ok > 0 {
        return Err(format!(
            "{} {} {}: {} responses, {} not 200",
            target.label(),
            kind.label(),
            load.label(),
            outcome.completed,
            outcome.not_ok
        ));
    }
    let per_request = |v: f64| v / outcome.completed as f64;
    Ok(Point {
        target,
        kind,
        load,
        outcome,
        cpu_us: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| per_request((a - b) * 1e6)),
        redis_per_request: redis_before
            .zip(redis_after)
            .map(|(b, a)| per_request(a.saturating_sub(b) as f64)),
    })
}

/// Time to first byte, measured on one keep-alive connection, request after
/// request.
#[derive(Debug, Clone, Copy)]
struct FirstByte {
    /// Median time to the first body byte.
    first_p50: f64,
    /// Median time to the end of the body.
    total_p50: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One keep-alive connection that times the first body byte and the end
/// of each answer.
struct Probe {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Probe {
    async fn connect(addr: SocketAddr) -> Result<Probe, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(connection);
        Ok(Probe { addr, sender })
    }

    /// Sends one request; returns the seconds to the first body byte and to
    /// the end of the body.
    async fn once(&mut self, body: &Bytes, extra: &[(&str, &str)]) -> Result<(f64, f64), String> {
        let addr = self.addr;
        let mut request = http::Request::post("/v1/chat/completions")
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let started = Instant::now();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{addr}: status {}", response.status()));
        }
        let mut body = response.into_body();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("{addr}: {e}"))?;
            if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                first = Some(started.elapsed().as_secs_f64());
            }
        }
        let total = started.elapsed().as_secs_f64();
        Ok((first.unwrap_or(total), total))
    }
}

/// Times `n` requests per address, taking the addresses in turn request by
/// request so that a change in the machine's speed affects them alike.
async fn first_byte(
    addrs: &[SocketAddr],
    body: &str,
    extra: &[(&str, &str)],
    n: usize,
) -> Result<Vec<FirstByte>, String> {
    let body = Bytes::copy_from_slice(body.as_bytes());
    let mut probes = Vec::new();
    for addr in addrs {
        probes.push(Probe::connect(*addr).await?);
    }
    let mut firsts = vec![Vec::with_capacity(n); addrs.len()];
    let mut totals = vec![Vec::with_capacity(n); addrs.len()];
    for _ in 0..n {
        for (i, probe) in probes.iter_mut().enumerate() {
            let (first, total) = probe.once(&body, extra).await?;
            firsts[i].push(first);
            totals[i].push(total);
        }
    }
    Ok(firsts
        .iter_mut()
        .zip(totals.iter_mut())
        .map(|(firsts, totals)| {
            firsts.sort_by(f64::total_cmp);
            totals.sort_by(f64::total_cmp);
            FirstByte {
                first_p50: percentile(firsts, 0.5),
                total_p50: percentile(totals, 0.5),
            }
        })
        .collect())
}

/// The targets measured at every load point, in the order the table lists
/// them; with a baseline, `sentinel-before` comes right after
/// `sentinel-memory`.
fn targets(baseline: bool) -> Vec<Target> {
    let mut targets = vec![Target::Direct, Target::Passthrough, Target::SentinelMemory];
    if baseline {
        targets.push(Target::SentinelBefore);
    }
    targets.push(Target::SentinelRedis(true));
    targets
}

/// The order in which a point runs `targets`: as listed when `turn` is even;
/// when it is odd, `sentinel-memory` and `sentinel-before` swap places, so
/// that neither always runs first.
fn run_order(targets: &[Target], turn: usize) -> Vec<Target> {
    let mut order = targets.to_vec();
    let memory = order.iter().position(|t| *t == Target::SentinelMemory);
    let before = order.iter().position(|t| *t == Target::SentinelBefore);
    if let (Some(m), Some(b)) = (memory, before)
        && turn % 2 == 1
    {
        order.swap(m, b);
    }
    order
}

/// One row of the "Before and after" table, in µs.
#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    figure: String,
    /// Decimals to print the figures with.
    decimals: usize,
    before: Option<f64>,
    after: Option<f64>,
    passthrough: Option<f64>,
}

/// The rows of the "Before and after" table: CPU per request at 16 and
/// 1 connection; p50 and p99 at 1 and 16 connections; p99 at each fixed
/// rate; each for JSON and SSE.
fn before_after_rows(points: &[Point], rates: &[u32]) -> Vec<Comparison> {
    let find = |target: Target, kind: Kind, load: Load| {
        points
            .iter()
            .find(|p| p.target == target && p.kind == kind && p.load == load)
    };
    let row = |figure: &str, kind: Kind, load: Load, value: fn(&Point) -> Option<f64>| {
        let value = |target| find(target, kind, load).and_then(value);
        Comparison {
            figure: format!("{figure}, {}, {}", kind.label(), load.label()),
            decimals: if figure.starts_with("CPU") { 1 } else { 0 },
            before: value(Target::SentinelBefore),
            after: value(Target::SentinelMemory),
            passthrough: value(Target::Passthrough),
        }
    };
    let cpu: fn(&Point) -> Option<f64> = |p| p.cpu_us;
    let p50: fn(&Point) -> Option<f64> = |p| Some(p.outcome.p50 * 1e6);
    let p99: fn(&Point) -> Option<f64> = |p| Some(p.outcome.p99 * 1e6);
    let kinds = [Kind::Json, Kind::Sse];
    let mut rows = Vec::new();
    for kind in kinds {
        for connections in [16, 1] {
            rows.push(row("CPU µs/request", kind, Load::Closed(connections), cpu));
        }
    }
    for kind in kinds {
        for connections in [1, 16] {
            rows.push(row("p50 µs", kind, Load::Closed(connections), p50));
            rows.push(row("p99 µs", kind, Load::Closed(connections), p99));
        }
    }
    for &rate in rates {
        for kind in kinds {
            rows.push(row("p99 µs", kind, Load::Rate(rate), p99));
        }
    }
    rows
}

/// `a / b`, when both are known and `b` is above zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// The "Before and after" table, as Markdown lines.
fn before_after_table(rows: &[Comparison]) -> Vec<String> {
    let mut lines = vec![
        "| figure | before | after | after/before | before / pass-through | after / pass-through |"
            .to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let times = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    for row in rows {
        let value = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.*}", row.decimals));
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            row.figure,
            value(row.before),
            value(row.after),
            times(ratio(row.after, row.before)),
            times(ratio(row.before, row.passthrough)),
            times(ratio(row.after, row.passthrough)),
        ));
    }
    lines
}

struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }
}

fn us(seconds: f64) -> String {
    format!("{:.0}", seconds * 1e6)
}

fn signed_us(seconds: f64) -> String {
    format!("{:+.0}", seconds * 1e6)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

/// `key=value` pairs printed by `session-memory`.
fn session_memory(binary: &Path, sessions: u64) -> Result<Vec<(String, String)>, String> {
    let output = Command::new(binary)
        .args(["--sessions", &sessions.to_string()])
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "session-memory failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Runs the whole benchmark.
pub(crate) fn run(options: &Options) -> Result<(), String> {
    let proxy = options
        .proxy
        .clone()
        .or_else(|| crate::sibling("sentinel-proxy"))
        .ok_or("cannot find sentinel-proxy: pass --proxy")?;
    let session_binary = options
        .session_memory
        .clone()
        .or_else(|| crate::sibling("session-memory"))
        .ok_or("cannot find session-memory: pass --session-memory")?;
    let ticks = procfs::clock_ticks();
    let started = Instant::now();
    let mut report = Report {
        text: String::new(),
    };
    report.line(format!("machine: {}", machine()));
    report.line(format!("load generator: {}", version(&options.oha)));
    report.line(format!(
        "each point: {} s warm-up, then {} s measured; the same ~1 KiB chat body everywhere",
        options.warmup_seconds, options.seconds
    ));

    let lab = Lab::start(options, &proxy)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = procfs::rss_bytes(lab.memory.0.pid())?;
    let idle_rss_redis = procfs::rss_bytes(lab.redis_proxy.0.pid())?;
    let passthrough_rss = procfs::rss_bytes(lab.passthrough.0.pid())?;

    // Time to first byte, before the load runs heat anything up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut ttfb = Vec::new();
    let mut probed = vec![Target::Direct, Target::Passthrough, Target::SentinelMemory];
    if lab.before.is_some() {
        probed.push(Target::SentinelBefore);
    }
    let probed_addrs = probed
        .iter()
        .map(|t| lab.addr(*t))
        .collect::<Result<Vec<_>, _>>()?;
    for kind in [Kind::Json, Kind::Sse] {
        let body = body(kind);
        runtime.block_on(first_byte(&probed_addrs, &body, &[], 200))?;
        let measured = runtime.block_on(first_byte(&probed_addrs, &body, &[], 2000))?;
        for (target, m) in probed.iter().zip(measured) {
            ttfb.push((*target, kind, m));
        }
    }
    // A slow stream: the first chunk must arrive long before the last.
    let slow_delay_ms = 20;
    let slow_body = {
        let mut body: serde_json::Value =
            serde_json::from_str(&body(Kind::Sse)).map_err(|e| e.to_string())?;
        body[CHUNK_DELAY_MEMBER] = serde_json::json!(slow_delay_ms);
        body.to_string()
    };
    let slow = runtime
        .block_on(first_byte(
            &[lab.addr(Target::SentinelMemory)?],
            &slow_body,
            &[],
            3,
        ))?
        .pop()
        .ok_or("no slow-stream measurement")?;

    let mut loads = vec![Load::Closed(1), Load::Closed(16)];
    loads.extend(options.rates.iter().map(|r| Load::Rate(*r)));
    let targets = targets(lab.before.is_some());
    let mut points = Vec::new();
    for (k, kind) in [Kind::Json, Kind::Sse].into_iter().enumerate() {
        for (l, &load) in loads.iter().enumerate() {
            let mut group = Vec::new();
            // A checkerboard: from one load to the next, and from JSON to
            // SSE at the same load, the other of the two goes first.
            for target in run_order(&targets, k + l) {
                eprintln!(
                    "[{:>3} s] {} {} {}",
                    started.elapsed().as_secs(),
                    target.label(),
                    kind.label(),
                    load.label()
                );
                group.push(measure(&lab, options, ticks, target, kind, load)?);
            }
            // The table lists the targets in one order whatever order they
            // ran in.
            group.sort_by_key(|p| targets.iter().position(|t| *t == p.target));
            points.extend(group);
        }
    }
    eprintln!(
        "[{:>3} s] sentinel-redis without a session header",
        started.elapsed().as_secs()
    );
    points.push(measure(
        &lab,
        options,
        ticks,
        Target::SentinelRedis(false),
        Kind::Json,
        Load::Closed(16),
    )?);
    // Redis round trips, apart from the commands inside scripts.
    let mut round_trips = Vec::new();
    for session in [true, false] {
        eprintln!(
            "[{:>3} s] Redis round trips through MONITOR, session header: {session}",
            started.elapsed().as_secs()
        );
        let url = format!("http://{}/v1/chat/completions", lab.redis_proxy.1);
        let body = body(Kind::Json);
        let headers: &[(&str, &str)] = if session { &[SESSION] } else { &[] };
        let request = oha::Request {
            url: &url,
            body: &body,
            headers,
            load: Load::Closed(16),
            duration: Duration::from_secs(2),
        };
        let (client, script, outcome) =
            procfs::redis_round_trips(lab.redis_addr, || oha::run(&options.oha, &request))?;
        round_trips.push((session, client, script, outcome.completed));
    }
    let loaded_rss = procfs::rss_bytes(lab.memory.0.pid())?;
    drop(lab);

    eprintln!(
        "[{:>3} s] session store memory",
        started.elapsed().as_secs()
    );
    let sessions = session_memory(&session_binary, options.sessions)?;

    // The table.
    report.line("");
    report.line("| target | body | load | req/s | p50 µs | p90 µs | p99 µs | p50 added vs direct µs | p99 added vs direct µs | gateway CPU µs/req | Redis cmds/req |");
    report.line("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let find = |target: Target, kind: Kind, load: Load| {
        points
            .iter()
            .find(|p| p.target == target && p.kind == kind && p.load == load)
    };
    for p in &points {
        let direct = find(Target::Direct, p.kind, p.load).map(|d| d.outcome);
        let added = |f: fn(&oha::Outcome) -> f64| {
            direct.map_or("-".into(), |d| {
                if p.target == Target::Direct {
                    "-".into()
                } else {
                    signed_us(f(&p.outcome) - f(&d))
                }
            })
        };
        report.line(format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            p.target.label(),
            p.kind.label(),
            p.load.label(),
            p.outcome.requests_per_sec,
            us(p.outcome.p50),
            us(p.outcome.p90),
            us(p.outcome.p99),
            added(|o| o.p50),
            added(|o| o.p99),
            p.cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            p.redis_per_request
                .map_or("-".into(), |r| format!("{r:.3}")),
        ));
    }

    report.line("");
    report.line("| target | body | first byte p50 µs | whole answer p50 µs | first byte added vs direct µs |");
    report.line("| --- | --- | ---: | ---: | ---: |");
    let direct_ttfb = |kind: Kind| {
        ttfb.iter()
            .find(|(t, k, _)| *t == Target::Direct && *k == kind)
            .map(|(_, _, m)| *m)
    };
    for (target, kind, m) in &ttfb {
        let added = match (target, direct_ttfb(*kind)) {
            (Target::Direct, _) | (_, None) => "-".into(),
            (_, Some(d)) => signed_us(m.first_p50 - d.first_p50),
        };
        report.line(format!(
            "| {} | {} | {} | {} | {} |",
            target.label(),
            kind.label(),
            us(m.first_p50),
            us(m.total_p50),
            added
        ));
    }

    // The targets.
    let mut targets_text = String::new();
    let mut verdict = |name: &str, measured: String, goal: &str, met: Option<bool>| {
        let met = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let _ = writeln!(targets_text, "| {name} | {measured} | {goal} | {met} |");
    };
    for kind in [Kind::Json, Kind::Sse] {
        for &load in &loads {
            let ratio = find(Target::SentinelMemory, kind, load)
                .and_then(|s| s.cpu_us)
                .zip(find(Target::Passthrough, kind, load).and_then(|p| p.cpu_us))
                .map(|(s, p)| (s, p, s / p));
            if let Some((s, p, r)) = ratio {
                verdict(
                    &format!(
                        "CPU/request vs pass-through, {}, {}",
                        kind.label(),
                        load.label()
                    ),
                    format!("{s:.1} µs vs {p:.1} µs = {r:.2}x"),
                    "≤ 1.5x",
                    Some(r <= 1.5),
                );
            }
        }
    }
    for kind in [Kind::Json, Kind::Sse] {
        let added = find(Target::SentinelMemory, kind, Load::Closed(1))
            .zip(find(Target::Passthrough, kind, Load::Closed(1)))
            .map(|(s, p)| s.outcome.p50 - p.outcome.p50);
        if let Some(a) = added {
            verdict(
                &format!("p50 added over pass-through, 1 conn, {}", kind.label()),
                format!("{} µs", signed_us(a)),
                "≤ 50 µs",
                Some(a <= 50e-6),
            );
        }
    }
    for &rate in &options.rates {
        for kind in [Kind::Json, Kind::Sse] {
            let added = find(Target::SentinelMemory, kind, Load::Rate(rate))
                .zip(find(Target::Direct, kind, Load::Rate(rate)))
                .map(|(s, d)| s.outcome.p99 - d.outcome.p99);
            if let Some(a) = added {
                verdict(
                    &format!("p99 added over direct, {rate} req/s, {}", kind.label()),
                    format!("{} µs", signed_us(a)),
                    "< 1000 µs",
                    Some(a < 1e-3),
                );
            }
        }
    }
    let redis_rates: Vec<f64> = points
        .iter()
        .filter(|p| p.target == Target::SentinelRedis(true))
        .filter_map(|p| p.redis_per_request)
        .collect();
    if let (Some(min), Some(max)) = (
        redis_rates.iter().copied().reduce(f64::min),
        redis_rates.iter().copied().reduce(f64::max),
    ) {
        verdict(
            "Redis commands per request with a session header (INFO commandstats: the script's call and the commands inside it)",
            format!("{min:.3} to {max:.3}"),
            "(see round trips)",
            None,
        );
    }
    for (session, client, script, completed) in &round_trips {
        let per = |n: &u64| *n as f64 / (*completed).max(1) as f64;
        let (goal, met) = if *session {
            ("1", (0.99..=1.01).contains(&per(client)))
        } else {
            ("0", per(client) < 0.01)
        };
        verdict(
            &format!(
                "Redis round trips per request, {} session header (MONITOR, closed 16 conn, 2 s)",
                if *session { "with a" } else { "without a" }
            ),
            format!(
                "{:.3} ({client} sent by Sentinel for {completed} requests; {:.3} more run inside its Lua scripts)",
                per(client),
                per(script)
            ),
            goal,
            Some(met),
        );
    }
    if let Some(r) = find(Target::SentinelRedis(false), Kind::Json, Load::Closed(16))
        .and_then(|p| p.redis_per_request)
    {
        verdict(
            "Redis commands per request without a session header (INFO commandstats)",
            format!("{r:.4}"),
            "0 (background breaker sync only)",
            Some(r < 0.01),
        );
    }
    let ttfb_added = |target: Target, kind: Kind| {
        ttfb.iter()
            .find(|(t, k, _)| *t == target && *k == kind)
            .zip(direct_ttfb(kind))
            .map(|((_, _, m), d)| (m.first_p50 - d.first_p50, m.total_p50 - d.total_p50))
    };
    if let (Some((sse_first, _)), Some((_, json_total))) = (
        ttfb_added(Target::SentinelMemory, Kind::Sse),
        ttfb_added(Target::SentinelMemory, Kind::Json),
    ) {
        verdict(
            "streaming first byte added vs non-streaming answer added",
            format!(
                "{} µs vs {} µs",
                signed_us(sse_first),
                signed_us(json_total)
            ),
            "streaming ≤ non-streaming",
            Some(sse_first <= json_total),
        );
    }
    let slow_last = (CONTENT_CHUNKS + 2) as f64 * slow_delay_ms as f64 / 1000.0;
    verdict(
        &format!("slow stream ({slow_delay_ms} ms between chunks): first chunk at"),
        format!(
            "{:.1} ms, whole answer at {:.1} ms",
            slow.first_p50 * 1e3,
            slow.total_p50 * 1e3
        ),
        &format!(
            "before the upstream's last chunk (≥ {:.0} ms)",
            slow_last * 1e3
        ),
        Some(slow.first_p50 < slow_last && slow.total_p50 >= slow_last),
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    verdict(
        "idle RSS, sentinel-proxy (memory backends)",
        format!(
            "{:.1} MiB (Redis backends {:.1} MiB; pass-through {:.1} MiB; memory backends after the load {:.1} MiB)",
            mib(idle_rss),
            mib(idle_rss_redis),
            mib(passthrough_rss),
            mib(loaded_rss)
        ),
        "< 50 MiB",
        Some(mib(idle_rss) < 50.0),
    );
    let get = |key: &str| {
        sessions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let per_session = get("heap_bytes_per_session").and_then(|v| v.parse::<f64>().ok());
    verdict(
        &format!(
            "memory session store, {} sessions: heap bytes per session",
            options.sessions
        ),
        format!(
            "{} (RSS growth per session {})",
            per_session.map_or("?".into(), |b| format!("{b:.1}")),
            get("rss_bytes_per_session").unwrap_or_else(|| "?".into())
        ),
        "< 200",
        per_session.map(|b| b < 200.0),
    );
    let bounded = get("bounded").map(|b| b == "true");
    verdict(
        "memory session store: bounded by its capacity",
        format!(
            "{} sessions held after {} inserted; heap after the overflow {} bytes per capacity slot",
            get("held_after_overflow").unwrap_or_else(|| "?".into()),
            get("inserted").unwrap_or_else(|| "?".into()),
            get("heap_bytes_per_slot_after_overflow").unwrap_or_else(|| "?".into())
        ),
        "never more than the capacity",
        bounded,
    );

    report.line("");
    report.line("| target | measured | goal | verdict |");
    report.line("| --- | --- | --- | --- |");
    for line in targets_text.lines() {
        report.line(line);
    }
    if let Some(baseline) = &options.baseline {
        let label = options
            .baseline_label
            .clone()
            .unwrap_or_else(|| baseline.display().to_string());
        report.line("");
        report.line(format!(
            "Before and after: before is sentinel-before ({label}), after is sentinel-memory (this build); both with memory backends in front of the same mock upstream, measured one after the other at each point. Below 1.00x in after/before, this build is the cheaper or faster."
        ));
        report.line("");
        for line in before_after_table(&before_after_rows(&points, &options.rates)) {
            report.line(line);
        }
    }
    report.line("");
    report.line(format!(
        "whole run: {} s (without the release build)",
        started.elapsed().as_secs()
    ));
    if let Some(out) = &options.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(out, &report.text).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(
        target: Target,
        kind: Kind,
        load: Load,
        cpu_us: f64,
        p50_us: f64,
        p99_us: f64,
    ) -> Point {
        Point {
            target,
            kind,
            load,
            outcome: oha::Outcome {
                completed: 100,
                p50: p50_us / 1e6,
                p99: p99_us / 1e6,
                ..oha::Outcome::default()
            },
            cpu_us: Some(cpu_us),
            redis_per_request: None,
        }
    }

    #[test]
    fn without_a_baseline_the_targets_are_todays() {
        let targets = targets(false);
        assert_eq!(
            targets,
            [
                Target::Direct,
                Target::Passthrough,
                Target::SentinelMemory,
                Target::SentinelRedis(true)
            ]
        );
        for index in 0..4 {
            assert_eq!(run_order(&targets, index), targets);
        }
    }

    #[test]
    fn the_baseline_runs_next_to_sentinel_memory_taking_turns_first() {
        let targets = targets(true);
        assert_eq!(
            targets,
            [
                Target::Direct,
                Target::Passthrough,
                Target::SentinelMemory,
                Target::SentinelBefore,
                Target::SentinelRedis(true)
            ]
        );
        assert_eq!(run_order(&targets, 0), targets);
        assert_eq!(run_order(&targets, 2), targets);
        assert_eq!(
            run_order(&targets, 1),
            [
                Target::Direct,
                Target::Passthrough,
                Target::SentinelBefore,
                Target::SentinelMemory,
                Target::SentinelRedis(true)
            ]
        );
    }

    #[test]
    fn ratios_need_both_figures_and_a_positive_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(2.0)), None);
    }

    #[test]
    fn the_rows_take_before_after_and_pass_through_from_the_same_point() {
        let mut points = Vec::new();
        for kind in [Kind::Json, Kind::Sse] {
            for load in [Load::Closed(1), Load::Closed(16), Load::Rate(500)] {
                // Distinct figures per target: pass-through 1x, after 2x,
                // before 4x; SSE ten times JSON; 16 connections +1.
                let base = match kind {
                    Kind::Json => 10.0,
                    Kind::Sse => 100.0,
                } + if load == Load::Closed(16) { 1.0 } else { 0.0 };
                for (target, k) in [
                    (Target::Direct, 0.5),
                    (Target::Passthrough, 1.0),
                    (Target::SentinelMemory, 2.0),
                    (Target::SentinelBefore, 4.0),
                ] {
                    let v = base * k;
                    points.push(point(target, kind, load, v, v * 10.0, v * 100.0));
                }
            }
        }
        let rows = before_after_rows(&points, &[500]);
        let figures: Vec<&str> = rows.iter().map(|r| r.figure.as_str()).collect();
        assert_eq!(
            figures,
            [
                "CPU µs/request, json, closed, 16 conn",
                "CPU µs/request, json, closed, 1 conn",
                "CPU µs/request, sse, closed, 16 conn",
                "CPU µs/request, sse, closed, 1 conn",
                "p50 µs, json, closed, 1 conn",
                "p99 µs, json, closed, 1 conn",
                "p50 µs, json, closed, 16 conn",
                "p99 µs, json, closed, 16 conn",
                "p50 µs, sse, closed, 1 conn",
                "p99 µs, sse, closed, 1 conn",
                "p50 µs, sse, closed, 16 conn",
                "p99 µs, sse, closed, 16 conn",
                "p99 µs, json, open, 500 req/s",
                "p99 µs, sse, open, 500 req/s",
            ]
        );
        let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-6);
        let cpu_json_16 = &rows[0];
        assert_eq!(cpu_json_16.decimals, 1);
        assert!(near(cpu_json_16.passthrough, 11.0));
        assert!(near(cpu_json_16.after, 22.0));
        assert!(near(cpu_json_16.before, 44.0));
        let p99_sse_rate = &rows[13];
        assert_eq!(p99_sse_rate.decimals, 0);
        assert!(near(p99_sse_rate.passthrough, 10_000.0));
        assert!(near(p99_sse_rate.after, 20_000.0));
        assert!(near(p99_sse_rate.before, 40_000.0));
    }

    #[test]
    fn a_missing_target_leaves_a_dash() {
        let points = [point(
            Target::SentinelMemory,
            Kind::Json,
            Load::Closed(16),
            50.0,
            100.0,
            900.0,
        )];
        let rows = before_after_rows(&points, &[]);
        assert_eq!(rows.len(), 12);
        assert_eq!(rows[0].before, None);
        assert_eq!(rows[0].passthrough, None);
        let table = before_after_table(&rows[..1]);
        assert_eq!(
            table[2],
            "| CPU µs/request, json, closed, 16 conn | - | 50.0 | - | - | - |"
        );
    }

    #[test]
    fn the_table_prints_figures_and_ratios() {
        let rows = [
            Comparison {
                figure: "CPU µs/request, json, closed, 16 conn".into(),
                decimals: 1,
                before: Some(160.04),
                after: Some(80.0),
                passthrough: Some(40.0),
            },
            Comparison {
                figure: "p99 µs, sse, open, 1000 req/s".into(),
                decimals: 0,
                before: Some(1500.4),
                after: Some(3000.6),
                passthrough: Some(0.0),
            },
        ];
        assert_eq!(
            before_after_table(&rows),
            [
                "| figure | before | after | after/before | before / pass-through | after / pass-through |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
                "| CPU µs/request, json, closed, 16 conn | 160.0 | 80.0 | 0.50x | 4.00x | 2.00x |",
                "| p99 µs, sse, open, 1000 req/s | 1500 | 3001 | 2.00x | - | - |",
            ]
        );
    }
}
