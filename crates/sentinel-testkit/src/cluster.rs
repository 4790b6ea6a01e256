//! A real Redis Cluster of `redis-server` child processes on loopback.
//!
//! [`RedisCluster::start`] starts `masters × (1 + replicas)` nodes, each a
//! [`RedisServer`] with `--cluster-enabled yes`, its cluster bus on a port
//! claimed like the data ports (`--cluster-port`, never `port + 10000`,
//! which could fall in the kernel's ephemeral range), then joins them with
//! `redis-cli --cluster create ... --cluster-yes` and waits until every
//! node reports `cluster_state:ok`. Node timeout is 1 s, so a killed
//! master's replica takes over within a few seconds
//! ([`RedisCluster::wait_for_failover`]). Dropping the cluster kills every
//! node and removes their directories.
//!
//! ```no_run
//! use sentinel_testkit::RedisCluster;
//!
//! let mut cluster = RedisCluster::start(3, 1)?;
//! // fred's cluster URL: a seed node and the others as `node=` parameters.
//! assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"));
//! let master = cluster.masters()?[0];
//! cluster.stop_node(master);
//! cluster.wait_for_failover(master)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::redis::{RedisServer, RespValue, Spec, claim_port, release_port};
use crate::tls::TestCerts;

/// How long the cluster has to form, or to fail over.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Redis Cluster on `127.0.0.1`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    bus_ports: Vec<u16>,
    /// How many masters the cluster was made with.
    masters: usize,
}

impl RedisCluster {
    /// Starts a cluster of `masters` masters with `replicas` replicas each
    /// (at least 3 masters, as `redis-cli --cluster create` asks), and
    /// waits until it serves every slot.
    pub fn start(masters: usize, replicas: usize) -> io::Result<Self> {
        Self::start_as(masters, replicas, None)
    }

    /// [`start`](Self::start) with nodes that also take TLS connections
    /// (the server certificate of `certs`, no client certificates asked),
    /// and talk TLS among themselves (`tls-cluster`, `tls-replication`).
    /// A client connected over TLS is given the nodes' TLS ports
    /// ([`tls_url`](Self::tls_url)); plain ports stay open for
    /// [`RedisServer::query`].
    pub fn start_tls(masters: usize, replicas: usize, certs: &TestCerts) -> io::Result<Self> {
        Self::start_as(masters, replicas, Some(certs))
    }

    fn start_as(masters: usize, replicas: usize, certs: Option<&TestCerts>) -> io::Result<Self> {
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            bus_ports: Vec::new(),
            masters,
        };
        for _ in 0..masters * (1 + replicas) {
            let bus = claim_port()?;
            cluster.bus_ports.push(bus);
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus.to_string(),
                // Replicas sync at once (no 5 s wait for more replicas),
                // and may always take over: a test kills masters early.
                "--repl-diskless-sync-delay",
                "0",
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(str::to_owned)
            .to_vec();
            let mut args = args;
            if certs.is_some() {
                args.extend(
                    ["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned),
                );
            }
            cluster.nodes.push(
                Spec {
                    extra: args,
                    tls: certs.map(|certs| (certs, false)),
                    ..Spec::default()
                }
                .start()?,
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        // Its output goes to a file, read back when it fails (a pipe
        // nobody reads could fill up and stall it).
        let log_dir = crate::redis::fresh_temp_dir()?;
        let log_path = log_dir.join("create.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let output = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&log_dir);
            let tail: String = text
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            tail
        };
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            match child.try_wait()? {
                Some(status) if status.success() => {
                    let _ = std::fs::remove_dir_all(&log_dir);
                    break;
                }
                Some(status) => {
                    return Err(io::Error::other(format!(
                        "redis-cli --cluster create failed ({status}): {}",
                        output()
                    )));
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("redis-cli --cluster create did not finish: {}", output()),
                    ));
                }
                None => thread::sleep(Duration::from_millis(50)),
            }
        }
        cluster.wait_until(|c| c.all_running_ok() && c.replicas_in_sync())?;
        Ok(cluster)
    }

    /// fred's cluster URL: `redis-cluster://127.0.0.1:P0?node=127.0.0.1:P1&...`.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port()));
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// fred's cluster URL over TLS, for a cluster started with
    /// [`start_tls`](Self::start_tls):
    /// `rediss-cluster://127.0.0.1:T0?node=127.0.0.1:T1&...`.
    pub fn tls_url(&self) -> Option<String> {
        let ports: Option<Vec<u16>> = self.nodes.iter().map(RedisServer::tls_port).collect();
        let ports = ports?;
        let (first, rest) = ports.split_first()?;
        let rest: Vec<String> = rest.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        Some(format!(
            "rediss-cluster://127.0.0.1:{first}?{}",
            rest.join("&")
        ))
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The indices of the running nodes that are masters now.
    pub fn masters(&self) -> io::Result<Vec<usize>> {
        let mut masters = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            if let RespValue::Array(Some(role)) = node.query(&["ROLE"])?
                && role.first().and_then(RespValue::as_str) == Some("master")
            {
                masters.push(i);
            }
        }
        Ok(masters)
    }

    /// Kills node `i` (a master's replica then takes over, if it has one).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.stop();
        }
    }

    /// Waits until the cluster serves every slot again without node
    /// `stopped`: as many running masters as it was made with (a replica
    /// promoted in its place), every running node `cluster_state:ok`.
    pub fn wait_for_failover(&self, stopped: usize) -> io::Result<()> {
        self.wait_until(|c| {
            c.masters()
                .is_ok_and(|m| m.len() == c.masters && !m.contains(&stopped))
                && c.all_running_ok()
                && c.nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| *i != stopped && n.is_running())
                    .all(|(_, n)| {
                        // The other nodes no longer count the stopped one
                        // as serving slots.
                        n.query(&["CLUSTER", "INFO"])
                            .ok()
                            .and_then(|v| v.as_str().map(|s| s.contains("cluster_slots_ok:16384")))
                            .unwrap_or(false)
                    })
        })
    }

    /// Every running replica has its link to its master up.
    fn replicas_in_sync(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|n| {
            n.query(&["INFO", "replication"])
                .ok()
                .and_then(|v| {
                    v.as_str()
                        .map(|s| !s.contains("role:slave") || s.contains("master_link_status:up"))
                })
                .unwrap_or(false)
        })
    }

    /// Every running node says `cluster_state:ok`.
    fn all_running_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|n| {
            n.query(&["CLUSTER", "INFO"])
                .ok()
                .and_then(|v| v.as_str().map(|s| s.contains("cluster_state:ok")))
                .unwrap_or(false)
        })
    }

    fn wait_until(&self, ready: impl Fn(&Self) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while !ready(self) {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the Redis cluster did not reach cluster_state:ok",
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // The nodes go first (their own drop), then their bus ports.
        self.nodes.clear();
        for port in &self.bus_ports {
            release_port(*port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_with_replicas_form_a_cluster_that_fails_over() {
        let mut cluster = RedisCluster::start(3, 1).unwrap();
        assert_eq!(cluster.nodes().len(), 6);
        let masters = cluster.masters().unwrap();
        assert_eq!(masters.len(), 3, "{masters:?}");
        let url = cluster.url();
        assert!(url.starts_with("redis-cluster://127.0.0.1:"), "{url}");
        assert_eq!(url.matches("node=").count(), 5, "{url}");

        // A key lands on its slot's master; asked elsewhere, a node
        // redirects (the cluster is real, not six standalone servers).
        let answers: Vec<RespValue> = cluster
            .nodes()
            .iter()
            .map(|n| n.query(&["SET", "sentinel:probe", "1"]).unwrap())
            .collect();
        assert!(answers.iter().any(|a| *a == RespValue::Simple("OK".into())));
        assert!(
            answers
                .iter()
                .any(|a| matches!(a, RespValue::Error(e) if e.starts_with("MOVED"))),
            "{answers:?}"
        );

        // A master killed: its replica takes over and every slot is served.
        let victim = masters[0];
        cluster.stop_node(victim);
        cluster.wait_for_failover(victim).unwrap();
        let after = cluster.masters().unwrap();
        assert_eq!(after.len(), 3, "a replica was promoted: {after:?}");
        assert!(!after.contains(&victim));
    }
}
