//! The fleet as one, measured (issue 15, item 4): N = 4 proxy replicas in
//! this process, on one mock Zion and one mock upstream, sharing one Redis
//! (`RedisServer`), a Redis Cluster (`RedisCluster`, three masters with a
//! replica each) or a Sentinel-managed Redis (`RedisSentinels`: a primary,
//! its replica, three sentinels). For each backend the test checks, and
//! prints in one report block:
//!
//! - **cold fleet**: the four start at once on an empty Redis, all become
//!   ready and serve, and Zion saw exactly one config fetch (the fetch lock
//!   `tier_config:lock`, and the store read again under it, make this hold
//!   by design, not by timing);
//! - **sessions**: each session pinned on one replica keeps its model on
//!   every replica, round robin;
//! - **Redis round trips per request**: counted with `MONITOR` on every
//!   master while requests go round robin to the four: exactly one (the
//!   session script, `EVAL` on the session's key) per request with a
//!   session header, none without. Background traffic is told apart by
//!   command and key (the breaker sync's `TIME` + `PTTL {prefix}breaker:*`
//!   pipeline every 250 ms per replica, connection upkeep, the sentinels'
//!   own `PING`, `INFO` and hello messages), and the window
//!   is closed by a marker (`ECHO`) sent after the last answer, so nothing
//!   is left in flight;
//! - **breaker propagation**: a model opened on replica 0 (threshold 1, a
//!   per-model upstream fault) reaches the three others (threshold 1000:
//!   they can only learn it through Redis) within 5 s; the samples (time
//!   from the failing upstream request to `/admin/state` showing the model
//!   `open` on that replica) are printed as p50 / p99 / max. The < 1 s
//!   target is a benchmark figure (`scripts/fleet`), not asserted here.
//!
//! `SENTINEL_FLEET_TRIALS` sets the number of breaker trials (default 5;
//! `scripts/fleet` runs 50 in release mode).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::join_all;
use sentinel_testkit::{
    MockUpstream, MockZion, RedisCluster, RedisSentinels, RedisServer, UpstreamFault,
};
use serde_json::Value;
use support::{Env, Proxy, chat_body, unique, zion_config};
use tokio::time::Instant;

/// Replicas in the fleet.
const REPLICAS: usize = 4;
/// Sessions in the consistency check.
const SESSIONS: usize = 20;
/// Rounds over the whole fleet after a session's first request.
const SESSION_ROUNDS: usize = 3;
/// Sessions, and requests per session, in the round-trip count.
const COUNTED_SESSIONS: usize = 12;
const COUNTED_ROUNDS: usize = 4;
/// A pause in the middle of each counting window, over two sync periods.
const BACKGROUND_PAUSE: Duration = Duration::from_millis(600);
/// Breaker trials unless `SENTINEL_FLEET_TRIALS` says otherwise.
const DEFAULT_TRIALS: usize = 5;
/// Models of the `simple` tier (the sessions' tier).
const SIMPLE_MODELS: usize = 4;
/// The generous bound of every wait (a replica ready, a breaker learnt).
const BOUND: Duration = Duration::from_secs(5);
/// The Redis key prefix the proxy uses by default.
const PREFIX: &str = "sentinel:";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_four_on_one_redis_acts_as_one() {
    let redis = support::started("redis-server", RedisServer::start).await;
    fleet(Backend::Single(redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_four_on_a_redis_cluster_acts_as_one() {
    let cluster = support::started("a Redis cluster", || RedisCluster::start(3, 1)).await;
    fleet(Backend::Cluster(cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_four_on_a_sentinel_managed_redis_acts_as_one() {
    let group = support::started("a Sentinel-managed Redis", RedisSentinels::start).await;
    fleet(Backend::Sentinel(group)).await;
}

/// Where the fleet keeps its shared state.
enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinels),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Single(_) => "one Redis",
            Backend::Cluster(_) => "Redis Cluster (3 masters, 1 replica each)",
            Backend::Sentinel(_) => "Sentinel-managed Redis (primary, replica, 3 sentinels)",
        }
    }

    fn url(&self) -> String {
        match self {
            Backend::Single(redis) => redis.url(),
            Backend::Cluster(cluster) => cluster.url(),
            Backend::Sentinel(group) => group.url(),
        }
    }

    /// The servers that execute the fleet's commands: the one server, the
    /// cluster's masters, or the sentinels' primary (replicas only apply
    /// what their primary sends them).
    fn masters(&self) -> Vec<&RedisServer> {
        match self {
            Backend::Single(redis) => vec![redis],
            Backend::Cluster(cluster) => {
                let masters = tokio::task::block_in_place(|| cluster.masters())
                    .expect("the cluster names its masters");
                assert_eq!(masters.len(), 3, "{masters:?}");
                masters.into_iter().map(|i| &cluster.nodes()[i]).collect()
            }
            Backend::Sentinel(group) => {
                let primary = tokio::task::block_in_place(|| group.primary())
                    .expect("the sentinels name the primary");
                vec![&group.data_nodes()[primary]]
            }
        }
    }
}

/// What one backend's run measured.
#[derive(Default)]
struct Report {
    zion_fetches: usize,
    sources: BTreeMap<String, usize>,
    session_requests: usize,
    session_mismatches: usize,
    session_models: usize,
    with_session: Option<Tally>,
    without_session: Option<Tally>,
    trials: usize,
    propagation: Vec<Duration>,
}

async fn fleet(backend: Backend) {
    let trials = trials();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    // Model names of this run only (the metrics recorder is process-wide).
    let tag = unique("fleet");
    let simple: Vec<String> = (0..SIMPLE_MODELS)
        .map(|i| format!("{tag}-simple-{i}"))
        .collect();
    // One fresh model per breaker trial, and one left over for the retry.
    let complex: Vec<String> = (0..=trials).map(|i| format!("{tag}-complex-{i}")).collect();
    let simple_names: Vec<&str> = simple.iter().map(String::as_str).collect();
    let complex_names: Vec<&str> = complex.iter().map(String::as_str).collect();
    zion.set_config(zion_config(&[
        ("simple", &simple_names),
        ("complex", &complex_names),
    ]));

    let env = Env::new(&upstream)
        .zion(&zion)
        .set("REDIS_URL", &backend.url())
        // An opened model stays open for the whole run, and nothing probes
        // it: each trial's model is opened once, by one request.
        .set("SENTINEL_BACKOFF_INITIAL_SECS", "300")
        .set("SENTINEL_BACKOFF_MAX_SECS", "300")
        .set("SENTINEL_MODEL_PROBES", "false")
        // Every session call gets its answer even with both cores loaded
        // (the default 50 ms is for production; a late answer would read
        // as a lost pin).
        .set("SENTINEL_SESSION_WAIT_MS", "2000");
    // Replica 0 opens a model at its first failure; the others would need
    // 1000 of their own, so they can only learn it through Redis.
    let envs: Vec<Env> = (0..REPLICAS)
        .map(|i| {
            let threshold = if i == 0 { "1" } else { "1000" };
            env.clone().set("SENTINEL_FAILURE_THRESHOLD", threshold)
        })
        .collect();

    let mut report = Report {
        trials,
        ..Report::default()
    };

    // Cold fleet: all four at once on an empty Redis.
    let fleet: Vec<Proxy> = join_all(envs.iter().map(Proxy::start)).await;
    for (i, replica) in fleet.iter().enumerate() {
        assert!(
            replica.wait_ready(2 * BOUND).await,
            "replica {i} never became ready"
        );
        let reply = replica.chat(&chat_body(Some("simple"))).await;
        assert_eq!(reply.status, 200, "replica {i}: {}", reply.text());
        assert!(simple.iter().any(|m| Some(m.as_str()) == reply.model()));
    }
    for replica in &fleet {
        let state = admin_state(replica).await;
        let source = state["tier_config"]["source"].as_str().unwrap().to_owned();
        *report.sources.entry(source).or_default() += 1;
    }
    report.zion_fetches = zion.calls();
    assert_eq!(
        report.zion_fetches, 1,
        "a cold fleet of {REPLICAS} made more than one Zion fetch"
    );
    assert_eq!(report.sources.get("zion"), Some(&1), "{:?}", report.sources);
    assert_eq!(
        report.sources.get("redis"),
        Some(&(REPLICAS - 1)),
        "{:?}",
        report.sources
    );

    sessions(&fleet, &mut report).await;

    // Round trips: with a session header first, then without.
    let masters = backend.masters();
    report.with_session = Some(count_round_trips(&masters, &fleet, true).await);
    report.without_session = Some(count_round_trips(&masters, &fleet, false).await);

    breakers(&fleet, &upstream, &complex, &mut report).await;
    assert_eq!(zion.calls(), 1, "the fleet fetched again");

    print_report(&backend, &report);
    join_all(fleet.into_iter().map(Proxy::stop)).await;
}

/// The number of breaker trials: `SENTINEL_FLEET_TRIALS`, or the default.
fn trials() -> usize {
    match std::env::var("SENTINEL_FLEET_TRIALS") {
        Ok(value) => {
            let trials: usize = value
                .trim()
                .parse()
                .expect("SENTINEL_FLEET_TRIALS is a whole number");
            assert!(
                (1..=200).contains(&trials),
                "SENTINEL_FLEET_TRIALS is from 1 to 200"
            );
            trials
        }
        Err(_) => DEFAULT_TRIALS,
    }
}

/// Each session starts on one replica, then goes round robin over all of
/// them: the model never changes.
async fn sessions(fleet: &[Proxy], report: &mut Report) {
    let mut pinned = BTreeSet::new();
    for s in 0..SESSIONS {
        let session = unique("fleet-session");
        let first = fleet[s % REPLICAS]
            .chat_in_session(&session, &chat_body(Some("simple")))
            .await;
        assert_eq!(first.status, 200, "{}", first.text());
        let model = first.model().unwrap().to_owned();
        pinned.insert(model.clone());
        report.session_requests += 1;
        for round in 0..SESSION_ROUNDS {
            for r in 0..REPLICAS {
                let replica = (s + round + r) % REPLICAS;
                let reply = fleet[replica]
                    .chat_in_session(&session, &chat_body(Some("simple")))
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                report.session_requests += 1;
                if reply.model() != Some(model.as_str()) {
                    report.session_mismatches += 1;
                    eprintln!(
                        "session {session}: pinned to {model}, replica {replica} answered with {:?}",
                        reply.model()
                    );
                }
            }
        }
    }
    report.session_models = pinned.len();
    assert_eq!(
        report.session_mismatches, 0,
        "a session changed model across replicas (a session store fallback, \
         sentinel_redis_fallbacks_total{{component=\"sessions\"}}, would explain it)"
    );
    // Sessions were spread over the tier's models, so keeping one is not
    // a tier with a single choice (all 20 on one of 4 models: p < 1e-11).
    assert!(report.session_models > 1, "{pinned:?}");
}

/// Sends `COUNTED_SESSIONS × COUNTED_ROUNDS` requests round robin over the
/// fleet, with a session header or without, under `MONITOR` on every
/// master, and tallies what reached Redis.
async fn count_round_trips(masters: &[&RedisServer], fleet: &[Proxy], with_session: bool) -> Tally {
    let monitors: Vec<Monitor> =
        tokio::task::block_in_place(|| masters.iter().map(|m| Monitor::start(m.addr())).collect());
    let sessions: Vec<String> = (0..COUNTED_SESSIONS)
        .map(|_| unique("fleet-counted"))
        .collect();
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut requests = 0;
    for round in 0..COUNTED_ROUNDS {
        if round == COUNTED_ROUNDS / 2 {
            // Long enough for every replica's breaker sync to run in the
            // window: the background is there to be left out.
            tokio::time::sleep(BACKGROUND_PAUSE).await;
        }
        for (k, session) in sessions.iter().enumerate() {
            let replica = &fleet[(k + round) % REPLICAS];
            let reply = if with_session {
                *sent.entry(session_key(session)).or_default() += 1;
                replica
                    .chat_in_session(session, &chat_body(Some("simple")))
                    .await
            } else {
                replica.chat(&chat_body(Some("simple"))).await
            };
            assert_eq!(reply.status, 200, "{}", reply.text());
            requests += 1;
        }
    }
    // Every answer is in: what the requests sent to Redis has run. The
    // marker closes each window after it.
    let mut tally = Tally {
        requests,
        ..Tally::default()
    };
    for (monitor, master) in monitors.into_iter().zip(masters) {
        for command in monitor.finish(master) {
            tally.add(&command);
        }
    }

    assert!(
        tally.unexplained.is_empty(),
        "commands neither the request path nor the background sends: {:?}",
        tally.unexplained
    );
    assert_eq!(tally.config, 0, "tier-config traffic in the window");
    assert_eq!(tally.breaker_writes, 0, "breaker writes in the window");
    let per_request = tally.per_request();
    if with_session {
        assert_eq!(
            tally.session_scripts, sent,
            "each request with a session header makes exactly one round trip (its session script)"
        );
        assert!((per_request - 1.0).abs() < f64::EPSILON, "{per_request}");
    } else {
        assert!(
            tally.session_scripts.is_empty(),
            "requests without a session header touched sessions: {:?}",
            tally.session_scripts
        );
        assert!(per_request.abs() < f64::EPSILON, "{per_request}");
    }
    tally
}

/// A session's Redis key.
fn session_key(session: &str) -> String {
    format!("{PREFIX}session:{session}")
}

/// Opens a fresh model on replica 0 per trial and times its arrival on
/// each other replica.
async fn breakers(
    fleet: &[Proxy],
    upstream: &MockUpstream,
    complex: &[String],
    report: &mut Report,
) {
    let opener = &fleet[0];
    for trial in 0..report.trials {
        // A fresh session lands on a model still closed on the opener (the
        // earlier trials' models are open there and left out).
        let session = unique("fleet-breaker");
        let first = opener
            .chat_in_session(&session, &chat_body(Some("complex")))
            .await;
        assert_eq!(first.status, 200, "{}", first.text());
        let model = first.model().unwrap().to_owned();
        assert!(complex.contains(&model), "{model}");
        // Including an earlier trial's retry, which may have landed here.
        let before = upstream.calls_for(&model);
        for (i, replica) in fleet.iter().enumerate() {
            assert_eq!(
                breaker_of(replica, &model).await,
                "closed",
                "trial {trial}: {model} on replica {i} before the fault"
            );
        }

        // The replicas' syncs tick together (they started together), and
        // the previous trial ended just after a tick: without a random
        // pause every failure would come at the same phase of the 250 ms
        // sync, and every sample would be about 250 ms.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..250))).await;
        // The session sends the next request to that model, which fails:
        // the opener opens it and the retry serves from another one.
        upstream.set_fault(
            &model,
            UpstreamFault::Status {
                status: 500,
                retry_after: None,
            },
        );
        let reply = opener
            .chat_in_session(&session, &chat_body(Some("complex")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_ne!(reply.model(), Some(model.as_str()), "served by the retry");
        // The failing request reached the upstream just before the breaker
        // opened: time is measured from there (an upper bound).
        let times = upstream.request_times(&model);
        assert_eq!(times.len(), before + 1, "{model}: {times:?}");
        let failed_at = times[before];
        assert_eq!(breaker_of(opener, &model).await, "open");

        let seen = join_all(fleet[1..].iter().map(|replica| {
            let model = model.as_str();
            async move {
                let deadline = Instant::now() + BOUND;
                loop {
                    if breaker_of(replica, model).await == "open" {
                        return Some(Instant::now());
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }))
        .await;
        for (i, seen) in seen.into_iter().enumerate() {
            let seen = seen.unwrap_or_else(|| {
                panic!(
                    "trial {trial}: replica {} did not learn within {BOUND:?} that {model} is open",
                    i + 1
                )
            });
            report.propagation.push(seen - failed_at);
        }
        // Nobody else sent to it: the others learnt it through Redis.
        assert_eq!(upstream.calls_for(&model), before + 1, "{model}");
    }
}

/// `GET /admin/state` as JSON.
async fn admin_state(proxy: &Proxy) -> Value {
    let reply = proxy.get("/admin/state").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json
}

/// The breaker state `/admin/state` shows for `model` of the complex tier.
async fn breaker_of(proxy: &Proxy, model: &str) -> String {
    let state = admin_state(proxy).await;
    state["tiers"]["complex"]["models"]
        .as_array()
        .expect("the complex tier's models")
        .iter()
        .find(|m| m["model"] == model)
        .and_then(|m| m["breaker"].as_str())
        .unwrap_or_else(|| panic!("{model} not in {state}"))
        .to_owned()
}

/// What reached Redis in a counting window, by who sends it.
#[derive(Debug, Default)]
struct Tally {
    /// Requests sent in the window.
    requests: usize,
    /// Request path: session scripts (`EVAL` on a session key), per key.
    session_scripts: BTreeMap<String, usize>,
    /// Background: the breaker sync (`TIME`, `PTTL` of breaker keys).
    sync: usize,
    /// Of which `TIME`: one per sync round (and per clock calibration).
    sync_rounds: usize,
    /// Background: connection upkeep (`PING`, `CLUSTER ...`, `INFO`, ...).
    upkeep: usize,
    /// Background, not expected in the window: tier-config reads, writes
    /// and lock.
    config: usize,
    /// Not expected in the window: breaker openings and closings.
    breaker_writes: usize,
    /// Run inside scripts (`[db lua]`): part of their script's round trip.
    in_scripts: usize,
    /// Anything else.
    unexplained: Vec<String>,
}

impl Tally {
    fn add(&mut self, command: &Monitored) {
        if command.in_script {
            self.in_scripts += 1;
            return;
        }
        let name = command.args[0].to_ascii_uppercase();
        let arg = |i: usize| command.args.get(i).map_or("", String::as_str);
        let breaker_key = |key: &str| key.starts_with(&format!("{PREFIX}breaker:"));
        let config_key = |key: &str| key.starts_with(&format!("{PREFIX}tier_config"));
        match name.as_str() {
            "EVAL" | "EVALSHA" if arg(3).starts_with(&format!("{PREFIX}session:")) => {
                *self.session_scripts.entry(arg(3).to_owned()).or_default() += 1;
            }
            "EVAL" | "EVALSHA" if breaker_key(arg(3)) => self.breaker_writes += 1,
            "EVAL" | "EVALSHA" if config_key(arg(3)) => self.config += 1,
            "TIME" => {
                self.sync += 1;
                self.sync_rounds += 1;
            }
            "PTTL" if breaker_key(arg(1)) => self.sync += 1,
            "GET" | "SET" | "PTTL" if config_key(arg(1)) => self.config += 1,
            "PING" | "CLUSTER" | "INFO" | "CLIENT" | "HELLO" | "SELECT" | "READONLY"
            | "COMMAND" | "ROLE" | "REPLCONF" => self.upkeep += 1,
            // The sentinels' own hello messages on the primary.
            "PUBLISH" if arg(1) == "__sentinel__:hello" => self.upkeep += 1,
            _ => self.unexplained.push(
                command
                    .args
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
    }

    /// Request-path round trips per request.
    fn per_request(&self) -> f64 {
        let trips: usize = self.session_scripts.values().sum();
        trips as f64 / self.requests.max(1) as f64
    }

    fn round_trips(&self) -> usize {
        self.session_scripts.values().sum()
    }
}

/// One command seen by `MONITOR`.
#[derive(Debug)]
struct Monitored {
    /// Run by a Lua script (`[0 lua]`), not sent by a client.
    in_script: bool,
    /// The command and its arguments.
    args: Vec<String>,
}

/// A `MONITOR` connection to one server, read on a thread of its own until
/// the marker that [`finish`](Self::finish) sends.
struct Monitor {
    marker: String,
    reader: JoinHandle<Result<Vec<Monitored>, String>>,
}

impl Monitor {
    fn start(addr: SocketAddr) -> Monitor {
        let marker = unique("fleet-marker");
        let mut stream = TcpStream::connect_timeout(&addr, BOUND).expect("connects to Redis");
        // Generous: the reader waits at most this long for a line.
        stream.set_read_timeout(Some(4 * BOUND)).unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim_end(), "+OK", "MONITOR answered {ok:?}");
        let end = marker.clone();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => return Err("MONITOR connection closed".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("MONITOR read: {e}")),
                }
                let Some(command) = parse_monitor_line(&line) else {
                    continue;
                };
                if !command.in_script
                    && command.args.len() == 2
                    && command.args[0].eq_ignore_ascii_case("ECHO")
                    && command.args[1] == end
                {
                    return Ok(seen);
                }
                seen.push(command);
            }
        });
        Monitor { marker, reader }
    }

    /// Sends the marker to `server` and returns what ran before it.
    fn finish(self, server: &RedisServer) -> Vec<Monitored> {
        tokio::task::block_in_place(|| {
            server
                .query(&["ECHO", &self.marker])
                .expect("the marker is sent");
            self.reader
                .join()
                .expect("the MONITOR reader")
                .expect("MONITOR saw the marker")
        })
    }
}

/// Parses `+1700000000.123456 [0 127.0.0.1:51234] "EVAL" "..." ...` (or
/// `[0 lua]` for a command run by a script); `None` for anything else.
fn parse_monitor_line(line: &str) -> Option<Monitored> {
    let (_, rest) = line.split_once('[')?;
    let (source, rest) = rest.split_once(']')?;
    let mut args = Vec::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => arg.push('\n'),
                    'r' => arg.push('\r'),
                    't' => arg.push('\t'),
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        arg.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    if args.is_empty() {
        return None;
    }
    Some(Monitored {
        in_script: source.ends_with(" lua"),
        args,
    })
}

/// The `q` quantile of sorted `samples`, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Prints the report block on stdout (shown with `--nocapture`, as
/// `scripts/fleet` runs it).
#[allow(clippy::print_stdout)] // the report is this function's purpose
fn print_report(backend: &Backend, report: &Report) {
    let mut samples = report.propagation.clone();
    samples.sort();
    let with = report.with_session.as_ref().unwrap();
    let without = report.without_session.as_ref().unwrap();
    let sources: Vec<String> = report
        .sources
        .iter()
        .map(|(source, n)| format!("{n} from {source}"))
        .collect();
    let background = |t: &Tally| {
        format!(
            "{} breaker-sync commands in {} rounds, {} upkeep, {} run inside scripts",
            t.sync, t.sync_rounds, t.upkeep, t.in_scripts
        )
    };
    // A line of its own, after the harness's `test ... ` under --nocapture.
    let mut out = String::from("\n");
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("=== fleet report: {} ===", backend.name()));
    line(format!("replicas (N): {REPLICAS}"));
    line(format!(
        "cold fleet, Zion fetches: {} (configs: {})",
        report.zion_fetches,
        sources.join(", ")
    ));
    line(format!(
        "breaker propagation, replica 0 to each other (failing upstream request to `open` in /admin/state): {} samples ({} trials x {} replicas), p50 {}, p99 {}, max {}",
        samples.len(),
        report.trials,
        REPLICAS - 1,
        ms(quantile(&samples, 0.50)),
        ms(quantile(&samples, 0.99)),
        ms(quantile(&samples, 1.0)),
    ));
    line(format!(
        "sessions: {SESSIONS} sessions x {} requests = {} requests over {REPLICAS} replicas, {} mismatches ({} models pinned)",
        1 + SESSION_ROUNDS * REPLICAS,
        report.session_requests,
        report.session_mismatches,
        report.session_models,
    ));
    line(format!(
        "Redis round trips per request, with a session: {:.3} ({} for {} requests; background left out: {})",
        with.per_request(),
        with.round_trips(),
        with.requests,
        background(with),
    ));
    line(format!(
        "Redis round trips per request, without a session: {:.3} ({} for {} requests; background left out: {})",
        without.per_request(),
        without.round_trips(),
        without.requests,
        background(without),
    ));
    print!("{out}");
}

#[test]
fn monitor_lines_are_parsed_with_their_escapes() {
    let client = "+1700000000.123456 [0 127.0.0.1:51234] \"EVAL\" \"local t = redis.call('TIME')\\nreturn {\\\"a\\\"}\" \"1\" \"sentinel:session:s-1\" \"17\"\r\n";
    let parsed = parse_monitor_line(client).unwrap();
    assert!(!parsed.in_script);
    assert_eq!(parsed.args.len(), 5);
    assert_eq!(
        parsed.args[1],
        "local t = redis.call('TIME')\nreturn {\"a\"}"
    );
    assert_eq!(parsed.args[3], "sentinel:session:s-1");
    let script = "+1700000000.123500 [0 lua] \"GET\" \"sentinel:session:\\xff\"\r\n";
    let parsed = parse_monitor_line(script).unwrap();
    assert!(parsed.in_script);
    assert_eq!(parsed.args, ["GET", "sentinel:session:\u{ff}"]);
    assert!(parse_monitor_line("+OK\r\n").is_none());

    let mut tally = Tally {
        requests: 2,
        ..Tally::default()
    };
    for line in [
        client,
        script,
        "+1 [0 127.0.0.1:1] \"TIME\"\r\n",
        "+1 [0 127.0.0.1:1] \"PTTL\" \"sentinel:breaker:openai/m\"\r\n",
        "+1 [0 127.0.0.1:1] \"DEL\" \"x\"\r\n",
    ] {
        tally.add(&parse_monitor_line(line).unwrap());
    }
    assert_eq!(tally.round_trips(), 1);
    assert!((tally.per_request() - 0.5).abs() < f64::EPSILON);
    assert_eq!((tally.sync, tally.sync_rounds, tally.in_scripts), (2, 1, 1));
    assert_eq!(tally.unexplained, ["DEL x"]);
}
