//! `sentinel-bench soak`: a bounded reliability run of the release
//! `sentinel-proxy` under faults.
//!
//! Everything is on `127.0.0.1`, on ports the OS picks:
//!
//! - a fault-injecting mock OpenAI upstream (`soak_upstream`), in this
//!   process;
//! - a mock Zion (sentinel-testkit's `MockZion`) serving tiers of two or
//!   three `openai` models each, flapping: healthy, `500`, healthy,
//!   unreachable, one phase every `--zion-period-secs`, with a short
//!   `TIER_CONFIG_TTL_SECONDS` so the proxy refetches;
//! - a private `redis-server` (sentinel-testkit's `RedisServer`) for the
//!   config cache, sessions and breakers, stopped and restarted empty at a
//!   third and at two thirds of the run;
//! - `sentinel-proxy` as a child process, stdout and stderr to a file.
//!
//! The load is an in-process client at a paced rate with bounded
//! concurrency, mixed JSON and SSE chat completions over the three tiers,
//! some with a session header; it stops at `--requests` or
//! `--duration-secs`, whichever comes first, and every request has a bound
//! after which it counts as hung. At the end the client's counts are
//! compared with the proxy's `/metrics`, the proxy's log is searched for
//! panics, and the proxy's RSS series is printed. The run fails (non-zero
//! exit) on a panic, a hung request, an undocumented answer or a count that
//! disagrees.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sentinel_testkit::{MockZion, RedisServer, ZionFault};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::procfs;
use crate::soak_client::{self, HttpClient, Spec, Stats, status_class};
use crate::soak_upstream::{Delays, Fault, SoakUpstream};

/// `sentinel-bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The `sentinel-proxy` binary [next to this one].
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// Longest time the load runs, in seconds.
    #[arg(long, default_value_t = 180)]
    duration_secs: u64,
    /// Most requests sent.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Requests started per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 250)]
    rate: u32,
    /// Most requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A request with no complete answer after this many seconds is hung.
    #[arg(long, default_value_t = 30)]
    request_bound_secs: u64,
    /// Seconds of warm-up before the RSS baseline.
    #[arg(long, default_value_t = 30)]
    warmup_secs: u64,
    /// Seconds between two RSS samples (and progress lines).
    #[arg(long, default_value_t = 5)]
    rss_every_secs: u64,
    /// The proxy's `SENTINEL_FIRST_BYTE_TIMEOUT_MS`.
    #[arg(long, default_value_t = 1500)]
    first_byte_timeout_ms: u64,
    /// The proxy's `SENTINEL_STREAM_IDLE_TIMEOUT_MS`.
    #[arg(long, default_value_t = 1500)]
    stream_idle_timeout_ms: u64,
    /// The proxy's `TIER_CONFIG_TTL_SECONDS`.
    #[arg(long, default_value_t = 5)]
    tier_config_ttl_secs: u64,
    /// Seconds per Zion phase (healthy, 500, healthy, unreachable, ...).
    #[arg(long, default_value_t = 6)]
    zion_period_secs: u64,
    /// Seconds Redis stays down at each restart.
    #[arg(long, default_value_t = 3)]
    redis_down_secs: u64,
    /// Distinct session ids (30 % of the requests carry one).
    #[arg(long, default_value_t = 500)]
    sessions: u32,
    /// The proxy's stdout and stderr go here [target/soak/proxy.log].
    #[arg(long)]
    proxy_log: Option<PathBuf>,
    /// Also write the report to this file [target/soak/latest.txt].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Locks, ignoring poisoning (a panic elsewhere must not hide the report).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the soak; `Err` when it fails or cannot run.
pub(crate) fn run(options: &Options) -> Result<(), String> {
    if options.concurrency == 0
        || options.duration_secs == 0
        || options.rss_every_secs == 0
        || options.zion_period_secs == 0
        || options.request_bound_secs == 0
    {
        return Err("--concurrency, --duration-secs, --rss-every-secs, --zion-period-secs and --request-bound-secs must be at least 1".into());
    }
    let proxy = options
        .proxy
        .clone()
        .or_else(|| crate::sibling("sentinel-proxy"))
        .ok_or("cannot find sentinel-proxy: pass --proxy")?;
    let log = options
        .proxy_log
        .clone()
        .or_else(|| soak_dir().map(|d| d.join("proxy.log")))
        .ok_or("cannot place the proxy log: pass --proxy-log")?;
    let out = options
        .out
        .clone()
        .or_else(|| soak_dir().map(|d| d.join("latest.txt")))
        .ok_or("cannot place the report: pass --out")?;
    for file in [&log, &out] {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    // Every child (the proxy, redis-server) is owned inside `soak` and
    // killed when dropped, on every path out of it.
    runtime.block_on(soak(options, &proxy, &log, &out))
}

/// `target/soak` when this binary is `target/release/sentinel-bench`.
fn soak_dir() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    Some(me.parent()?.parent()?.join("soak"))
}

/// The tier config the mock Zion serves: every tier has two or three
/// models on `openai`, so retries and breakers have somewhere to go.
fn tier_config() -> serde_json::Value {
    fn model(name: &str, relative_cost: u8) -> serde_json::Value {
        serde_json::json!({
            "provider": "openai",
            "model": name,
            "relative_cost": relative_cost,
            "pricing": { "input_per_mtok_usd": 0.5, "output_per_mtok_usd": 1.5 },
        })
    }
    serde_json::json!({
        "version": "soak-1",
        "tiers": {
            "simple": { "models": [model("gpt-4o-mini", 1), model("gpt-4.1-mini", 2)] },
            "moderate": { "models": [model("gpt-4o", 3), model("gpt-4.1", 4)] },
            "complex": { "models": [model("o3", 8), model("o4-mini", 5), model("gpt-5", 10)] },
        }
    })
}

/// The proxy child process; killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts the proxy on a free port (found as `driver.rs` does, so a
    /// race for it is possible: a few tries).
    async fn start(binary: &Path, env: &[(&str, String)], log: &Path) -> Result<Proxy, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let addr = crate::driver::free_addrs(1)?.pop().ok_or("no free port")?;
            let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
            let stdout = file
                .try_clone()
                .map_err(|e| format!("{}: {e}", log.display()))?;
            let child = Command::new(binary)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("SENTINEL_LISTEN", addr.to_string())
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(file)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", binary.display()))?;
            let mut proxy = Proxy { child, addr };
            match proxy.wait_listening().await {
                Ok(()) => return Ok(proxy),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("sentinel-proxy exited early: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sentinel-proxy did not listen on {} within 20 s",
                    self.addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `GET path` on the proxy, with a 5 s bound; the answer's status and body.
async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, Bytes), String> {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within 5 s"))?
}

/// One step of the chaos schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Zion500,
    ZionDown,
    ZionHealthy,
    RedisStop,
    RedisStart,
}

/// The chaos schedule over `duration`: Zion cycles through 500, healthy,
/// unreachable, healthy, one phase every `period`; Redis goes down at a
/// third and at two thirds of the run for `down`.
fn schedule(duration: Duration, period: Duration, down: Duration) -> Vec<(Duration, Action)> {
    let mut steps = Vec::new();
    let cycle = [
        Action::Zion500,
        Action::ZionHealthy,
        Action::ZionDown,
        Action::ZionHealthy,
    ];
    let mut at = period;
    let mut i = 0;
    while at < duration {
        steps.push((at, cycle[i % cycle.len()]));
        at += period;
        i += 1;
    }
    for third in [duration / 3, duration * 2 / 3] {
        steps.push((third, Action::RedisStop));
        steps.push((third + down, Action::RedisStart));
    }
    steps.sort_by_key(|(at, _)| *at);
    steps
}

/// What the chaos task did.
#[derive(Debug, Default)]
struct ChaosLog {
    zion_500: u32,
    zion_down: u32,
    redis_restarts: u32,
    errors: Vec<String>,
}

async fn chaos(
    steps: Vec<(Duration, Action)>,
    started: Instant,
    zion: Arc<MockZion>,
    redis: Arc<Mutex<RedisServer>>,
    mut stop: watch::Receiver<bool>,
) -> ChaosLog {
    let mut log = ChaosLog::default();
    for (at, action) in steps {
        tokio::select! {
            _ = tokio::time::sleep_until(started + at) => {}
            _ = stop.changed() => break,
        }
        eprintln!("[{:>4} s] chaos: {action:?}", at.as_secs());
        match action {
            Action::Zion500 => {
                zion.set_fault(ZionFault::Status(500));
                log.zion_500 += 1;
            }
            Action::ZionDown => {
                zion.stop().await;
                log.zion_down += 1;
            }
            Action::ZionHealthy => {
                zion.clear_fault();
                if let Err(e) = zion.resume().await {
                    log.errors.push(format!("zion resume: {e}"));
                }
            }
            Action::RedisStop => {
                let redis = Arc::clone(&redis);
                let _ = tokio::task::spawn_blocking(move || lock(&redis).stop()).await;
            }
            Action::RedisStart => {
                let redis = Arc::clone(&redis);
                match tokio::task::spawn_blocking(move || lock(&redis).restart()).await {
                    Ok(Ok(())) => log.redis_restarts += 1,
                    Ok(Err(e)) => log.errors.push(format!("redis restart: {e}")),
                    Err(e) => log.errors.push(format!("redis restart task: {e}")),
                }
            }
        }
    }
    log
}

/// Samples the proxy's RSS every `every` and prints a progress line, until
/// told to stop. Returns `(seconds since start, bytes)`.
async fn monitor(
    pid: u32,
    every: Duration,
    started: Instant,
    stats: Arc<Mutex<Stats>>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(started, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t = started.elapsed().as_secs_f64();
        let rss = procfs::rss_bytes(pid).ok();
        if let Some(rss) = rss {
            samples.push((t, rss));
        }
        let (sent, answered, undocumented, hung) = {
            let s = lock(&stats);
            (s.sent, s.answered(), s.undocumented, s.hung)
        };
        eprintln!(
            "[{t:>4.0} s] sent {sent}, answered {answered}, undocumented {undocumented}, hung {hung}, proxy RSS {}",
            rss.map_or("?".into(), |b| format!("{:.1} MiB", mib(b)))
        );
    }
    samples
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The load: paced, bounded in concurrency, count and time.
async fn load(
    options: &Options,
    client: &HttpClient,
    addr: SocketAddr,
    started: Instant,
    stats: &Arc<Mutex<Stats>>,
) {
    let deadline = started + Duration::from_secs(options.duration_secs);
    let bound = Duration::from_secs(options.request_bound_secs);
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut pace = (options.rate > 0).then(|| {
        let mut pace =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        pace
    });
    let mut tasks = JoinSet::new();
    let record = |result: Result<soak_client::Outcome, tokio::task::JoinError>| {
        let mut s = lock(stats);
        match result {
            Ok(outcome) => s.record(outcome),
            Err(_) => s.client_panics += 1,
        }
    };
    for _ in 0..options.requests {
        if let Some(pace) = pace.as_mut() {
            tokio::select! {
                _ = pace.tick() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        };
        if Instant::now() >= deadline {
            break;
        }
        let spec = Spec::random(options.sessions);
        {
            let mut s = lock(stats);
            s.sent += 1;
            s.sent_stream += u64::from(spec.stream);
            s.sent_session += u64::from(spec.session.is_some());
        }
        let client = client.clone();
        tasks.spawn(async move {
            let outcome = soak_client::send(&client, addr, spec, bound).await;
            drop(permit);
            outcome
        });
        while let Some(result) = tasks.try_join_next() {
            record(result);
        }
    }
    // Every request in flight ends within its bound.
    while let Some(result) = tasks.join_next().await {
        record(result);
    }
}

async fn soak(
    options: &Options,
    proxy_binary: &Path,
    log: &Path,
    out: &Path,
) -> Result<(), String> {
    let ttl = options.tier_config_ttl_secs;
    let first_byte = Duration::from_millis(options.first_byte_timeout_ms);
    let idle = Duration::from_millis(options.stream_idle_timeout_ms);

    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .map_err(|e| format!("redis-server: {e}"))?
        .map_err(|e| format!("redis-server: {e}"))?;
    let redis_url = redis.url();
    let redis = Arc::new(Mutex::new(redis));
    let zion = Arc::new(
        MockZion::start()
            .await
            .map_err(|e| format!("mock zion: {e}"))?,
    );
    zion.set_config(tier_config());
    let upstream = SoakUpstream::start(Delays {
        head: first_byte + Duration::from_secs(2),
        stall: idle + Duration::from_secs(2),
    })
    .await
    .map_err(|e| format!("soak upstream: {e}"))?;

    let env: Vec<(&str, String)> = vec![
        ("ZION_URL", zion.url()),
        ("ZION_API_KEY", "soak-zion-key".into()),
        ("REDIS_URL", redis_url),
        ("TIER_CONFIG_TTL_SECONDS", ttl.to_string()),
        ("OPENAI_BASE_URL", upstream.url()),
        ("OPENAI_API_KEY", "soak-openai-key".into()),
        (
            "SENTINEL_FIRST_BYTE_TIMEOUT_MS",
            options.first_byte_timeout_ms.to_string(),
        ),
        (
            "SENTINEL_FIRST_TOKEN_TIMEOUT_MS",
            options.first_byte_timeout_ms.to_string(),
        ),
        (
            "SENTINEL_STREAM_IDLE_TIMEOUT_MS",
            options.stream_idle_timeout_ms.to_string(),
        ),
        // Breakers that open and close within the run.
        ("SENTINEL_BACKOFF_INITIAL_SECS", "1".into()),
        ("SENTINEL_BACKOFF_MAX_SECS", "8".into()),
        ("SENTINEL_HEALTH_INTERVAL_SECS", "2".into()),
        ("SENTINEL_LOG", "warn".into()),
    ];
    let mut proxy = Proxy::start(proxy_binary, &env, log).await?;
    let addr = proxy.addr;
    let client = soak_client::client();

    // Calls other than the load, by the status class of their answer, so
    // the proxy's request counter can be matched exactly.
    let mut extra: BTreeMap<&'static str, u64> = BTreeMap::new();
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&client, addr, "/readyz").await {
            Ok((status, _)) => {
                *extra.entry(status_class(status)).or_default() += 1;
                if status == StatusCode::OK {
                    break;
                }
            }
            Err(e) if Instant::now() > ready_deadline => return Err(format!("/readyz: {e}")),
            Err(_) => {}
        }
        if Instant::now() > ready_deadline {
            return Err("sentinel-proxy was not ready within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let zion_calls_at_start = zion.calls();

    eprintln!(
        "soak: proxy pid {} on {addr}, log {}; up to {} s or {} requests at {} req/s, {} in flight",
        proxy.pid(),
        log.display(),
        options.duration_secs,
        options.requests,
        options.rate,
        options.concurrency
    );
    let started = Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let steps = schedule(
        Duration::from_secs(options.duration_secs),
        Duration::from_secs(options.zion_period_secs),
        Duration::from_secs(options.redis_down_secs),
    );
    let chaos_task = tokio::spawn(chaos(
        steps,
        started,
        Arc::clone(&zion),
        Arc::clone(&redis),
        stop_rx.clone(),
    ));
    let monitor_task = tokio::spawn(monitor(
        proxy.pid(),
        Duration::from_secs(options.rss_every_secs),
        started,
        Arc::clone(&stats),
        stop_rx,
    ));

    load(options, &client, addr, started, &stats).await;
    let ran = started.elapsed();

    let _ = stop_tx.send(true);
    let chaos_log = chaos_task.await.unwrap_or_else(|e| ChaosLog {
        errors: vec![format!("chaos task: {e}")],
        ..ChaosLog::default()
    });
    let mut rss = monitor_task.await.unwrap_or_default();
    if let Ok(end) = procfs::rss_bytes(proxy.pid()) {
        rss.push((started.elapsed().as_secs_f64(), end));
    }

    let metrics = get(&client, addr, "/metrics").await;
    let exited = proxy.child.try_wait().ok().flatten();
    drop(proxy);
    let (panics, panic_example, log_lines) = scan_log(log);

    let stats = std::mem::take(&mut *lock(&stats));
    let report = Report::build(&ReportInput {
        options,
        ran,
        stats: &stats,
        extra: &extra,
        metrics: metrics.map(|(_, body)| String::from_utf8_lossy(&body).into_owned()),
        exited: exited.map(|s| s.to_string()),
        panics,
        panic_example,
        log_lines,
        log,
        rss: &rss,
        chaos: &chaos_log,
        upstream: &upstream,
        zion_calls: zion.calls().saturating_sub(zion_calls_at_start),
    });
    print!("{}", report.text);
    std::fs::write(out, &report.text).map_err(|e| format!("{}: {e}", out.display()))?;
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!("soak FAILED: {}", report.failures.join("; ")))
    }
}

/// `(lines with "panicked at", the first of them, all lines)` of the log.
fn scan_log(log: &Path) -> (u64, Option<String>, u64) {
    let Ok(bytes) = std::fs::read(log) else {
        return (0, None, 0);
    };
    let mut panics = 0;
    let mut first = None;
    let mut lines = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        lines += 1;
        if line.windows(11).any(|w| w == b"panicked at") {
            panics += 1;
            if first.is_none() {
                first = Some(String::from_utf8_lossy(line).chars().take(300).collect());
            }
        }
    }
    (panics, first, lines)
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if in_value {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(if escaped == 'n' { '\n' } else { escaped });
                        }
                    }
                    '"' => {
                        labels.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                        in_value = false;
                    }
                    _ => value.push(c),
                }
            } else {
                match c {
                    '}' => {
                        end = Some(i);
                        break;
                    }
                    '"' => in_value = true,
                    '=' | ',' | ' ' => {}
                    _ => key.push(c),
                }
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The samples of `name` summed by the value of `label` (`None`: all in
/// one, under the key `""`).
fn sum_by(samples: &[Sample], name: &str, label: Option<&str>) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = label
            .and_then(|l| s.labels.iter().find(|(k, _)| k == l))
            .map_or(String::new(), |(_, v)| v.clone());
        *sums.entry(key).or_default() += s.value;
    }
    sums
}

/// Least-squares slope of `(seconds, bytes)`, in MiB per minute.
fn slope_mib_per_min(points: &[(f64, u64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_m = points.iter().map(|(_, b)| mib(*b)).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, b) in points {
        num += (t - mean_t) * (mib(*b) - mean_m);
        den += (t - mean_t) * (t - mean_t);
    }
    (den > 0.0).then(|| num / den * 60.0)
}

fn percentile(sorted: &[f32], p: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

struct ReportInput<'a> {
    options: &'a Options,
    ran: Duration,
    stats: &'a Stats,
    extra: &'a BTreeMap<&'static str, u64>,
    metrics: Result<String, String>,
    exited: Option<String>,
    panics: u64,
    panic_example: Option<String>,
    log_lines: u64,
    log: &'a Path,
    rss: &'a [(f64, u64)],
    chaos: &'a ChaosLog,
    upstream: &'a SoakUpstream,
    zion_calls: usize,
}

struct Report {
    text: String,
    failures: Vec<String>,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", line.as_ref());
    }

    fn build(input: &ReportInput<'_>) -> Report {
        let mut r = Report {
            text: String::new(),
            failures: Vec::new(),
        };
        let o = input.options;
        let s = input.stats;
        r.line(format!(
            "sentinel soak, {} (commit {})",
            command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into()),
            command_output("git", &["describe", "--always", "--dirty"])
                .unwrap_or_else(|| "?".into())
        ));
        r.line(format!("machine: {}", crate::driver::machine()));
        r.line(format!(
            "load: {:.0} s (limit {} s, {} requests), {} req/s, at most {} in flight, {} s bound per request",
            input.ran.as_secs_f64(),
            o.duration_secs,
            o.requests,
            o.rate,
            o.concurrency,
            o.request_bound_secs
        ));
        r.line(format!(
            "proxy: first-byte timeout {} ms, stream idle timeout {} ms, TIER_CONFIG_TTL_SECONDS={}, backoff 1..8 s, Redis config cache + sessions + breakers",
            o.first_byte_timeout_ms, o.stream_idle_timeout_ms, o.tier_config_ttl_secs
        ));
        let c = input.chaos;
        r.line(format!(
            "chaos: Zion 500 x{}, Zion unreachable x{} ({} s phases; {} config fetches reached it), Redis restarted x{} ({} s down each){}",
            c.zion_500,
            c.zion_down,
            o.zion_period_secs,
            input.zion_calls,
            c.redis_restarts,
            o.redis_down_secs,
            if c.errors.is_empty() {
                String::new()
            } else {
                format!("; chaos errors: {}", c.errors.join(", "))
            }
        ));
        let counters = input.upstream.counters();
        let faults = counters.by_fault();
        let upstream_total: u64 = faults.iter().map(|(_, j, s)| j + s).sum();
        let mut line = format!("upstream: {upstream_total} completion requests (");
        for (i, (fault, json, sse)) in faults.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            let _ = write!(line, "{} {}", fault.label(), json + sse);
        }
        let _ = write!(line, "), {} health probes", counters.health());
        r.line(line);
        r.line("");

        let error_events: u64 = s.stream_error_events.values().sum();
        let documented: u64 = s.documented.values().sum();
        r.line(format!(
            "requests sent        {:>8}  (json {}, sse {}; with a session {})",
            s.sent,
            s.sent - s.sent_stream,
            s.sent_stream,
            s.sent_session
        ));
        r.line(format!(
            "answered             {:>8}  (2xx json {}, 2xx sse to [DONE] {}, 2xx sse ended by an error event {}, documented errors {})",
            s.answered(),
            s.json_ok,
            s.stream_done,
            error_events,
            documented
        ));
        for ((status, code), n) in &s.documented {
            r.line(format!("  {status} {code:<24} {n:>8}"));
        }
        for (code, n) in &s.stream_error_events {
            r.line(format!("  2xx + SSE error {code:<15} {n:>8}"));
        }
        r.line(format!("undocumented answers {:>8}", s.undocumented));
        for (kind, n) in &s.undocumented_kinds {
            r.line(format!("  {n:>6}  {kind}"));
        }
        for example in &s.undocumented_examples {
            r.line(format!("  e.g. {example}"));
        }
        r.line(format!(
            "hung requests        {:>8}  ({} after the response head)",
            s.hung, s.hung_after_head
        ));
        r.line(format!(
            "panics               {:>8}  ({} lines in {})",
            input.panics,
            input.log_lines,
            input.log.display()
        ));
        if let Some(example) = &input.panic_example {
            r.line(format!("  e.g. {example}"));
        }
        if s.client_panics > 0 {
            r.line(format!("client task panics   {:>8}", s.client_panics));
        }
        let accounted = s.answered() + s.undocumented + s.hung + s.client_panics;
        if accounted != s.sent {
            r.line(format!(
                "(!) {} requests sent but {accounted} accounted for",
                s.sent
            ));
        }
        // Two documented behaviours the faults should show, for reading
        // (not part of the verdict).
        let upstream_of = |wanted: &[Fault]| -> u64 {
            faults
                .iter()
                .filter(|(f, _, _)| wanted.contains(f))
                .map(|(_, j, s)| j + s)
                .sum()
        };
        r.line(format!(
            "note: the upstream answered 429 {} times; answers 429 rate_limited: {}",
            upstream_of(&[Fault::RateLimited]),
            s.documented
                .get(&(429, "rate_limited".to_owned()))
                .copied()
                .unwrap_or(0)
        ));
        let mid_stream = upstream_of(&[Fault::ResetMidStream, Fault::StallMidStream]);
        r.line(format!(
            "note: upstream streams broken or stalled after their first events: {mid_stream}; client streams ended by an error event: {error_events}; the rest ({}) were continued on another model (sentinel_stream_continuations_total below)",
            mid_stream.saturating_sub(error_events)
        ));
        let mut latencies = s.latencies_ms.clone();
        latencies.sort_by(f32::total_cmp);
        r.line(format!(
            "latency of complete answers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f32::NAN)
        ));
        r.line("");

        // Client vs /metrics.
        let mut agree = true;
        match &input.metrics {
            Ok(text) => {
                let samples = parse_metrics(text);
                let served = sum_by(&samples, "sentinel_http_requests_total", Some("status"));
                let routed = sum_by(&samples, "sentinel_requests_total", Some("status"));
                let extra_total: u64 = input.extra.values().sum();
                r.line(format!(
                    "status class | client heads | + other calls ({extra_total} /readyz polls) | sentinel_http_requests_total | verdict | sentinel_requests_total (routed, for information)"
                ));
                let mut classes: Vec<String> = served.keys().cloned().collect();
                for class in s.heads.keys().chain(input.extra.keys()) {
                    if !classes.iter().any(|c| c == class) {
                        classes.push((*class).to_owned());
                    }
                }
                classes.sort();
                for class in classes {
                    let heads = s.heads.get(class.as_str()).copied().unwrap_or(0);
                    let other = input.extra.get(class.as_str()).copied().unwrap_or(0);
                    let metric = served.get(&class).copied().unwrap_or(0.0);
                    let ok = (heads + other) as f64 == metric;
                    agree &= ok;
                    r.line(format!(
                        "{class:<12} | {heads:>12} | {:>12} | {metric:>12} | {} | {}",
                        heads + other,
                        if ok { "agree" } else { "DISAGREE" },
                        routed.get(&class).copied().unwrap_or(0.0)
                    ));
                }
                r.line(format!(
                    "counts: {}",
                    if agree { "agree" } else { "DISAGREE" }
                ));
                r.line("");
                r.line("proxy side (from /metrics):");
                let shown: [(&str, Option<&str>); 11] = [
                    ("sentinel_retries_total", None),
                    ("sentinel_breaker_transitions_total", Some("to")),
                    ("sentinel_errors_total", Some("code")),
                    ("sentinel_stream_errors_total", Some("reason")),
                    ("sentinel_stream_continuations_total", Some("outcome")),
                    ("sentinel_zion_fetches_total", Some("outcome")),
                    ("sentinel_tier_config_lookups_total", Some("result")),
                    ("sentinel_redis_fallbacks_total", Some("component")),
                    ("sentinel_redis_errors_total", Some("op")),
                    ("sentinel_health_checks_total", Some("result")),
                    ("sentinel_session_upgrades_total", None),
                ];
                for (name, label) in shown {
                    let sums = sum_by(&samples, name, label);
                    let text = if sums.is_empty() {
                        "none".to_owned()
                    } else {
                        sums.iter()
                            .map(|(k, v)| {
                                if k.is_empty() {
                                    format!("{v}")
                                } else {
                                    format!("{k} {v}")
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    r.line(format!("  {name}: {text}"));
                }
            }
            Err(e) => {
                agree = false;
                r.line(format!("/metrics: {e}"));
            }
        }
        r.line("");

        // RSS.
        let warmup = o.warmup_secs as f64;
        r.line("proxy RSS, MiB (seconds since the load began: RSS):");
        for row in input.rss.chunks(10) {
            let cells: Vec<String> = row
                .iter()
                .map(|(t, b)| format!("{t:>4.0}s {:>5.1}", mib(*b)))
                .collect();
            r.line(format!("  {}", cells.join(" |")));
        }
        let after: Vec<(f64, u64)> = input
            .rss
            .iter()
            .copied()
            .filter(|(t, _)| *t >= warmup)
            .collect();
        match (after.first(), after.last()) {
            (Some(&(t0, base)), Some(&(_, end))) => {
                let peak = after.iter().map(|(_, b)| *b).max().unwrap_or(end);
                r.line(format!(
                    "RSS: {:.1} MiB after warm-up ({t0:.0} s), {:.1} MiB at the end ({:+.1} MiB), peak after warm-up {:.1} MiB, trend {} MiB/min",
                    mib(base),
                    mib(end),
                    mib(end) - mib(base),
                    mib(peak),
                    slope_mib_per_min(&after).map_or("?".into(), |v| format!("{v:+.2}"))
                ));
            }
            _ => r.line(format!(
                "RSS: no sample after the {warmup:.0} s warm-up (run longer)"
            )),
        }
        r.line("");

        if input.panics > 0 {
            r.failures.push(format!("{} panics", input.panics));
        }
        if s.hung > 0 {
            r.failures.push(format!("{} hung requests", s.hung));
        }
        if s.undocumented > 0 {
            r.failures
                .push(format!("{} undocumented answers", s.undocumented));
        }
        if !agree {
            r.failures
                .push("client and /metrics counts disagree".into());
        }
        if let Some(status) = &input.exited {
            r.failures
                .push(format!("sentinel-proxy exited during the run: {status}"));
        }
        if s.client_panics > 0 {
            r.failures
                .push(format!("{} client task panics", s.client_panics));
        }
        if s.sent == 0 {
            r.failures.push("no request sent".into());
        }
        if r.failures.is_empty() {
            r.line("RESULT: PASS (0 panics, 0 hung, 0 undocumented, counts agree)");
        } else {
            let failures = r.failures.join("; ");
            r.line(format!("RESULT: FAIL ({failures})"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_parsed() {
        let text = "# HELP x y\n# TYPE sentinel_http_requests_total counter\nsentinel_http_requests_total{status=\"2xx\"} 12\nsentinel_http_requests_total{status=\"5xx\"} 3\nsentinel_models_open 0\nsentinel_errors_total{code=\"a\\\"b\",x=\"1\"} 2.5\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 4);
        let by = sum_by(&samples, "sentinel_http_requests_total", Some("status"));
        assert_eq!(by.get("2xx"), Some(&12.0));
        assert_eq!(by.get("5xx"), Some(&3.0));
        assert_eq!(
            sum_by(&samples, "sentinel_models_open", None).get(""),
            Some(&0.0)
        );
        assert_eq!(
            samples[3].labels,
            vec![
                ("code".to_owned(), "a\"b".to_owned()),
                ("x".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn the_schedule_flaps_zion_and_restarts_redis_twice() {
        let steps = schedule(
            Duration::from_secs(60),
            Duration::from_secs(6),
            Duration::from_secs(3),
        );
        let count = |a: Action| steps.iter().filter(|(_, x)| *x == a).count();
        assert_eq!(count(Action::RedisStop), 2);
        assert_eq!(count(Action::RedisStart), 2);
        assert!(count(Action::Zion500) >= 2 && count(Action::ZionDown) >= 2);
        assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(steps.iter().all(|(at, _)| *at < Duration::from_secs(60)));
    }

    #[test]
    fn a_flat_series_has_no_slope() {
        let flat: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 5.0, 20 << 20)).collect();
        assert_eq!(slope_mib_per_min(&flat), Some(0.0));
        let growing: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 60.0, (20 + i) << 20)).collect();
        let slope = slope_mib_per_min(&growing).unwrap();
        assert!((slope - 1.0).abs() < 1e-9);
    }

    #[test]
    fn every_tier_has_two_models_or_more() {
        let config = tier_config();
        for tier in ["simple", "moderate", "complex"] {
            assert!(config["tiers"][tier]["models"].as_array().unwrap().len() >= 2);
        }
    }
}
